"""The wire contract: Confluent framing, round trips for every schema, and clear errors."""

from __future__ import annotations

import io
import json
import struct
from datetime import UTC, datetime, timedelta
from typing import Any

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crm_ledger.adapters.avro import Codec, to_json
from crm_ledger.aggregates import CATALOGUE, Touchpoint
from crm_ledger.aggregates.touchpoint import ENVELOPE_FIELDS
from crm_ledger.errors import InvalidEvent, UndecodableMessage
from tests.factories import tp

MILLIS = st.integers(0, 4102444800000)  # 1970 .. 2100


def _timestamps() -> st.SearchStrategy[datetime]:
    return MILLIS.map(lambda ms: datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms))


def _values(avro_type: Any) -> st.SearchStrategy[Any]:
    if isinstance(avro_type, list):
        return st.one_of(*[_values(t) for t in avro_type])
    if isinstance(avro_type, dict):
        if avro_type.get("logicalType") == "timestamp-millis":
            return _timestamps()
        if avro_type.get("logicalType") == "uuid":
            return st.uuids()
        if avro_type["type"] == "enum":
            return st.sampled_from(avro_type["symbols"])
        if avro_type["type"] == "map":
            return st.dictionaries(st.text(max_size=8), _values(avro_type["values"]), max_size=3)
        return _values(avro_type["type"])
    return {
        "null": st.none(),
        "string": st.text(max_size=20),
        "boolean": st.booleans(),
        "int": st.integers(-(2**31), 2**31 - 1),
        "long": st.integers(-(2**63), 2**63 - 1),
    }[avro_type]


def touchpoints(codec: Codec, event_type: str) -> st.SearchStrategy[Touchpoint]:
    """Any touchpoint the schema of ``event_type`` can carry."""
    fields = codec.registry.latest(event_type).schema["fields"]
    own = {f["name"]: _values(f["type"]) for f in fields if f["name"] not in ENVELOPE_FIELDS}
    return st.builds(
        Touchpoint,
        event_type=st.just(event_type),
        event_id=st.uuids(),
        customer_id=st.text(max_size=20),
        occurred_at=_timestamps(),
        source=st.text(max_size=20),
        actor=st.none() | st.text(max_size=10),
        correlation_id=st.none() | st.text(max_size=10),
        data=st.fixed_dictionaries(own),
    )


@pytest.mark.parametrize("event_type", sorted(CATALOGUE))
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_decode_of_encode_is_the_same_event(codec: Codec, event_type: str, data: Any) -> None:
    event = data.draw(touchpoints(codec, event_type))
    assert codec.decode(codec.encode(event)) == event
    assert codec.from_json(json.loads(json.dumps(to_json(event)))) == event


def test_the_wire_format_is_confluent_framing(codec: Codec) -> None:
    event = tp("OrderPlaced")
    message = codec.encode(event)
    magic, schema_id = struct.unpack(">bI", message[:5])
    latest = codec.registry.latest("OrderPlaced")

    assert magic == 0
    assert schema_id == latest.schema_id
    body = fastavro.schemaless_reader(io.BytesIO(message[5:]), fastavro.parse_schema(latest.schema))
    assert body["amount_minor"] == 1299  # type: ignore[index,call-overload]


def test_data_written_with_an_older_schema_is_read_into_the_latest(codec: Codec) -> None:
    v1 = codec.registry.versions("OrderPlaced")[0]
    record = {
        "event_id": "3b0c4a4e-7a2f-4c0e-9c55-5d2b0e8e1f10",
        "customer_id": "C9",
        "occurred_at": datetime(2024, 1, 2, tzinfo=UTC),
        "source": "legacy",
        "actor": None,
        "correlation_id": None,
        "order_id": "X",
        "amount_minor": 10,
        "currency": "EUR",
        "channel": None,
    }
    buffer = io.BytesIO()
    buffer.write(struct.pack(">bI", 0, v1.schema_id))
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(v1.schema), record)

    event = codec.decode(buffer.getvalue())
    assert event.data == {
        "order_id": "X",
        "amount_minor": 10,
        "currency": "EUR",
        "margin_minor": None,
        "items": 1,
        "channel": None,
    }


@pytest.mark.parametrize(
    ("message", "problem"),
    [
        (b"", "at least 5"),
        (b"\x00\x00\x00", "at least 5"),
        (b"\x07\x00\x00\x00\x13abc", "magic byte is 7"),
        (b"\x00\x00\x00\x03\xe7abc", "schema id 999 is not in the registry"),
    ],
)
def test_undecodable_messages_say_why(codec: Codec, message: bytes, problem: str) -> None:
    with pytest.raises(UndecodableMessage, match=problem):
        codec.decode(message)


def test_truncated_trailing_and_oversize_messages_are_refused(codec: Codec) -> None:
    message = codec.encode(tp("OrderPlaced"))
    with pytest.raises(UndecodableMessage, match="cannot be decoded"):
        codec.decode(message[:-3])
    with pytest.raises(UndecodableMessage, match="2 bytes after the record"):
        codec.decode(message + b"\x00\x00")
    small = Codec(codec.registry, max_message_bytes=20)
    with pytest.raises(UndecodableMessage, match="over the 20 limit"):
        small.decode(message)


@pytest.mark.parametrize("writer", ["compiled", "fastavro"])
def test_an_event_over_the_message_limit_is_refused_when_encoded(
    codec: Codec, writer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What the ingest worker's decode would refuse, the Publisher must not send.
    if writer == "fastavro":
        monkeypatch.setattr(codec.registry, "writer", lambda version: None)
    size = len(codec.encode(tp("InteractionRecorded", note="")))
    at_limit = Codec(codec.registry, max_message_bytes=size + 100)
    assert len(at_limit.encode(tp("InteractionRecorded", note="x" * 99))) == size + 100
    with pytest.raises(InvalidEvent, match=f"is {size + 101:,} bytes encoded, over the") as e:
        at_limit.encode(tp("InteractionRecorded", note="x" * 100))
    assert e.value.field == "record"
    with pytest.raises(InvalidEvent, match="over the 524,288-byte limit of a message"):
        codec.encode(tp("InteractionRecorded", note="é" * 300_000))


def test_encoding_an_event_that_breaks_its_schema_names_the_field(codec: Codec) -> None:
    with pytest.raises(InvalidEvent, match=r"OrderPlaced\.amount_minor") as caught:
        codec.encode(tp("OrderPlaced", amount_minor="12.99"))
    assert caught.value.field == "amount_minor"


VALID_JSON = {
    "type": "OrderPlaced",
    "event_id": "3b0c4a4e-7a2f-4c0e-9c55-5d2b0e8e1f10",
    "customer_id": "C1",
    "occurred_at": "2025-03-01T10:00:00Z",
    "source": "shop",
    "order_id": "O1",
    "amount_minor": 1299,
    "currency": "EUR",
}


def test_json_input_fills_defaults_and_keeps_milliseconds(codec: Codec) -> None:
    event = codec.from_json({**VALID_JSON, "occurred_at": "2025-03-01T10:00:00.123456+01:00"})
    assert event.occurred_at == datetime(2025, 3, 1, 9, 0, 0, 123000, tzinfo=UTC)
    assert event.data["items"] == 1
    assert event.data["margin_minor"] is None
    assert event.actor is None


@pytest.mark.parametrize(
    ("change", "field", "problem"),
    [
        ({"type": "OrderShipped"}, "type", "must be one of"),
        ({"amount_minor": 12.5}, "amount_minor", "whole number"),
        ({"amount_minor": "1299"}, "amount_minor", "whole number"),
        ({"amount_minor": None}, "amount_minor", "must not be null"),
        ({"occurred_at": "2025-03-01T10:00:00"}, "occurred_at", "time zone"),
        ({"occurred_at": "yesterday"}, "occurred_at", "not an ISO 8601 time"),
        ({"event_id": "not-a-uuid"}, "event_id", "not a UUID"),
        ({"colour": "red"}, "colour", "not a field"),
        ({"items": 2**40}, "items", "out of range"),
    ],
)
def test_bad_json_names_the_field_and_the_problem(
    codec: Codec, change: dict[str, Any], field: str, problem: str
) -> None:
    with pytest.raises(InvalidEvent, match=problem) as caught:
        codec.from_json({**VALID_JSON, **change})
    assert caught.value.field == field


def test_a_missing_required_field_is_named(codec: Codec) -> None:
    obj = {k: v for k, v in VALID_JSON.items() if k != "customer_id"}
    with pytest.raises(InvalidEvent, match=r"OrderPlaced\.customer_id: is required"):
        codec.from_json(obj)


def test_an_enum_value_outside_the_schema_is_named(codec: Codec) -> None:
    obj = {
        "type": "InteractionRecorded",
        "event_id": VALID_JSON["event_id"],
        "customer_id": "C1",
        "occurred_at": 1740823200000,
        "source": "web",
        "channel": "carrier_pigeon",
        "direction": "inbound",
        "kind": "page_view",
    }
    with pytest.raises(InvalidEvent, match="channel: must be one of web, mobile_app"):
        codec.from_json(obj)
