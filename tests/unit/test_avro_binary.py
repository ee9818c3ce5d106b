"""The compiled Avro writer writes exactly fastavro's bytes, and leaves to fastavro every value
and shape it is not sure of."""

from __future__ import annotations

import dataclasses
import io
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crm_ledger.adapters.avro import Codec, to_record
from crm_ledger.adapters.avro_binary import (
    compile_reader,
    compile_split_reader,
    compile_split_writer,
    compile_writer,
)
from crm_ledger.aggregates import CATALOGUE, Touchpoint
from crm_ledger.aggregates.touchpoint import ENVELOPE_FIELDS
from crm_ledger.errors import InvalidEvent, UndecodableMessage
from tests.factories import tp
from tests.unit.test_avro_codec import touchpoints

ZONES = st.sampled_from(
    [UTC, timezone(timedelta(hours=-11, minutes=-30)), timezone(timedelta(hours=14))]
)
ANY_TIME = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=ZONES
)
ANY_TEXT = st.text(max_size=300)  # lengths on both sides of the one-byte varint (63)


def envelope(event: Touchpoint) -> tuple[Any, ...]:
    """The values of the envelope's fields, in ``ENVELOPE_FIELDS`` order."""
    return tuple(getattr(event, name) for name in ENVELOPE_FIELDS)


def fastavro_bytes(schema: Any, record: Any) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(schema), record, strict=True)
    return buffer.getvalue()


def record_schema(*field_types: Any) -> dict[str, Any]:
    fields = [{"name": f"f{i}", "type": t} for i, t in enumerate(field_types)]
    return {"type": "record", "name": "R", "namespace": "test", "fields": fields}


@pytest.mark.parametrize("event_type", sorted(CATALOGUE))
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_every_schema_writes_fastavros_bytes(codec: Codec, event_type: str, data: Any) -> None:
    event = data.draw(touchpoints(codec, event_type))
    version = codec.registry.latest(event_type)
    record = to_record(event)
    writer = compile_writer(version.schema)

    split = compile_split_writer(version.schema, ENVELOPE_FIELDS)  # the Codec's writer

    assert writer is not None  # every catalogue schema has a shape the writer knows
    assert split is not None
    assert writer(record) == fastavro_bytes(version.schema, record)
    assert split(envelope(event), event.data) == writer(record)


def test_a_split_record_writes_the_whole_records_bytes_or_leaves_it_to_fastavro() -> None:
    schema = record_schema("string", "long", ["null", "string"], "boolean")
    split = compile_split_writer(schema, ("f2", "f0"))  # head fields in any order
    whole = fastavro_bytes(schema, {"f0": "a", "f1": 7, "f2": None, "f3": True})

    assert split is not None
    assert split((None, "a"), {"f1": 7, "f3": True}) == whole
    assert split((None, "a"), {"f1": 7, "f3": True, "f4": 1}) is None  # a field too many
    assert split((None, "a"), {"f1": 7}) is None  # a field missing
    assert split((None, "a"), {"f1": 7, "f9": True}) is None  # as many, one not the schema's
    assert split((None, "a"), {"f1": "7", "f3": True}) is None  # a wrong type
    assert compile_split_writer(schema, ("f9",)) is None  # a head field the schema lacks


@pytest.mark.parametrize("fields", [0, 1, 3000])
def test_records_of_no_one_and_thousands_of_fields_read_and_write(fields: int) -> None:
    schema = record_schema(*["long"] * fields)
    record = {f"f{i}": i * 1000 for i in range(fields)}
    message = fastavro_bytes(schema, record)
    writer, reader = compile_writer(schema), compile_reader(schema)

    assert writer is not None
    assert reader is not None
    assert writer(record) == message
    assert reader(message, 0) == (record, len(message))


def test_field_names_are_data_never_code() -> None:
    # The writer and reader are generated code; a name that reads as Python must stay a name.
    names = ["x']) or __import__('os')._exit(3) or ('", "e0", "rest_names", "head", "\n", "é"]
    fields = [{"name": n, "type": "string"} for n in names]
    schema = {"type": "record", "name": "R", "fields": fields}
    record = {n: f"value of {n}" for n in names}
    same_shape = record_schema(*["string"] * len(names))
    message = fastavro_bytes(same_shape, {f"f{i}": record[n] for i, n in enumerate(names)})
    writer, reader = compile_writer(schema), compile_reader(schema)

    assert writer is not None
    assert reader is not None
    assert writer(record) == message
    assert reader(message, 0) == (record, len(message))


FIELD_TYPES: list[tuple[Any, st.SearchStrategy[Any]]] = [
    ("string", ANY_TEXT),
    ("long", st.integers(-(2**63), 2**63 - 1)),
    ("int", st.integers(-(2**31), 2**31 - 1)),
    ("boolean", st.booleans()),
    ("null", st.none()),
    (["null", "string"], st.none() | ANY_TEXT),
    (["null", "long"], st.none() | st.integers(-(2**63), 2**63 - 1)),
    (["null", "int"], st.none() | st.integers(-(2**31), 2**31 - 1)),
    (["null", "boolean"], st.none() | st.booleans()),
    ({"type": "string", "logicalType": "uuid"}, st.uuids() | st.uuids().map(str)),
    ({"type": "long", "logicalType": "timestamp-millis"}, ANY_TIME),
    ({"type": "long", "logicalType": "timestamp-millis"}, st.integers(-(2**62), 2**62)),
    ({"type": "enum", "name": "E", "symbols": ["a", "b", "c"]}, st.sampled_from("abc")),
    ({"type": "map", "values": "string"}, st.dictionaries(ANY_TEXT, ANY_TEXT, max_size=70)),
    ({"type": "map", "values": "long"}, st.dictionaries(ANY_TEXT, st.integers(-9, 2**40))),
    ({"type": "string"}, ANY_TEXT),
]


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_each_field_type_writes_fastavros_bytes_at_every_size(data: Any) -> None:
    chosen = data.draw(st.lists(st.sampled_from(FIELD_TYPES), min_size=1, max_size=6, unique_by=id))
    schema = record_schema(*[avro_type for avro_type, _ in chosen])
    record = {f"f{i}": data.draw(values) for i, (_, values) in enumerate(chosen)}
    writer = compile_writer(schema)

    assert writer is not None
    assert writer(record) == fastavro_bytes(schema, record)


@pytest.mark.parametrize("size", [0, 1, 63, 64, 65, 127, 128, 8191, 8192, 100_000])
def test_strings_and_maps_of_every_length_class_write_fastavros_bytes(size: int) -> None:
    schema = record_schema("string", {"type": "map", "values": "string"}, ["null", "string"])
    text = ("é" * size)[:size]  # two UTF-8 bytes a character: lengths past each varint byte
    record = {"f0": text, "f1": {f"k{i}": text[:3] for i in range(min(size, 300))}, "f2": text}
    writer = compile_writer(schema)

    assert writer is not None
    assert writer(record) == fastavro_bytes(schema, record)


def test_a_named_enum_used_again_by_name_writes_the_same_bytes() -> None:
    enum = {"type": "enum", "name": "Level", "namespace": "test", "symbols": ["low", "high"]}
    schema = record_schema(enum, "test.Level", "Level")
    record = {"f0": "high", "f1": "low", "f2": "high"}
    writer = compile_writer(schema)

    assert writer is not None
    assert writer(record) == fastavro_bytes(schema, record)


@pytest.mark.parametrize(
    ("avro_type", "value"),
    [
        ("int", True),  # a bool is an int to Python, not to the writer
        ("int", 2**31),
        ("int", 1.0),
        ("long", 2**63),
        ("long", -(2**63) - 1),
        ("long", "12"),
        ("string", b"bytes"),
        ("string", "lone \udc80 surrogate"),
        ("boolean", 1),
        ("null", 0),
        (["null", "string"], 5),
        (["null", "int"], False),
        ({"type": "string", "logicalType": "uuid"}, 7),
        ({"type": "long", "logicalType": "timestamp-millis"}, datetime(2024, 1, 1)),  # naive
        ({"type": "long", "logicalType": "timestamp-millis"}, "2024-01-01"),
        ({"type": "enum", "name": "E", "symbols": ["a"]}, "b"),
        ({"type": "map", "values": "string"}, {1: "x"}),
        ({"type": "map", "values": "string"}, {"k": None}),
        ({"type": "map", "values": "string"}, [("k", "v")]),
    ],
)
def test_values_it_is_not_sure_of_are_left_to_fastavro(avro_type: Any, value: Any) -> None:
    writer = compile_writer(record_schema(avro_type))

    assert writer is not None
    assert writer({"f0": value}) is None


def test_missing_and_extra_fields_are_left_to_fastavro() -> None:
    writer = compile_writer(record_schema("string", ["null", "string"]))

    assert writer is not None
    assert writer({"f0": "a", "f1": None}) == b"\x02a\x00"
    assert writer({"f0": "a"}) is None
    assert writer({"f0": "a", "f1": None, "f2": "extra"}) is None


@pytest.mark.parametrize(
    "avro_type",
    [
        {"type": "array", "items": "string"},
        record_schema("string"),
        ["null", "string", "long"],
        ["string", "null"],
        ["null", {"type": "enum", "name": "E", "symbols": ["a"]}],
        "bytes",
        "double",
        {"type": "fixed", "name": "F", "size": 4},
        {"type": "bytes", "logicalType": "decimal", "precision": 4, "scale": 2},
        {"type": "int", "logicalType": "date"},
        "test.Unknown",
    ],
)
def test_shapes_it_does_not_know_compile_to_nothing(avro_type: Any) -> None:
    assert compile_writer(record_schema("string", avro_type)) is None
    assert compile_writer({"type": "array", "items": "string"}) is None


def test_the_codec_writes_through_the_compiled_writer(
    codec: Codec, monkeypatch: pytest.MonkeyPatch
) -> None:
    event = tp("OrderPlaced")
    expected = codec.encode(event)

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("fastavro was asked to write a record the compiled writer knows")

    monkeypatch.setattr(fastavro, "schemaless_writer", refuse)
    assert codec.encode(event) == expected
    assert codec.decode(expected) == event


def test_the_codec_asks_fastavro_about_what_the_writer_refuses(codec: Codec) -> None:
    # A naive time is one fastavro writes (in the machine's zone) and the compiled writer
    # does not: the codec's bytes are fastavro's.
    event = tp("OrderPlaced")
    naive = dataclasses.replace(event, occurred_at=datetime(2024, 5, 1, 12))
    version = codec.registry.latest("OrderPlaced")
    assert codec.encode(naive)[5:] == fastavro_bytes(version.schema, to_record(naive))
    # A value that breaks the schema still names its field.
    with pytest.raises(InvalidEvent) as caught:
        codec.encode(tp("OrderPlaced", amount_minor=True, order_id=uuid.uuid4()))
    assert caught.value.field in {"amount_minor", "order_id"}


# Reading.


def fastavro_read(schema: Any, message: bytes, offset: int = 0) -> tuple[Any, int]:
    body = io.BytesIO(message)
    body.seek(offset)
    parsed = fastavro.parse_schema(schema)
    return fastavro.schemaless_reader(body, parsed, parsed), body.tell()


@pytest.mark.parametrize("event_type", sorted(CATALOGUE))
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_every_schema_reads_what_fastavro_reads(codec: Codec, event_type: str, data: Any) -> None:
    event = data.draw(touchpoints(codec, event_type))
    version = codec.registry.latest(event_type)
    message = codec.encode(event)
    reader = compile_reader(version.schema)
    split = compile_split_reader(version.schema, ENVELOPE_FIELDS)  # the Codec's reader

    assert reader is not None
    assert split is not None
    assert reader(message, 5) == fastavro_read(version.schema, message, 5)
    assert split(message, 5) == (envelope(event), event.data, len(message))
    assert codec.decode(message) == event


def test_a_split_reader_reads_the_whole_record_in_two_parts() -> None:
    schema = record_schema("string", "long", ["null", "string"], "boolean")
    message = fastavro_bytes(schema, {"f0": "a", "f1": 7, "f2": None, "f3": True})
    split = compile_split_reader(schema, ("f2", "f0"))

    assert split is not None
    assert split(message, 0) == ((None, "a"), {"f1": 7, "f3": True}, len(message))
    assert split(message[:-1], 0) is None  # past the end: left to fastavro
    assert compile_split_reader(schema, ("f9",)) is None


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_each_field_type_reads_what_fastavro_reads(data: Any) -> None:
    chosen = data.draw(st.lists(st.sampled_from(FIELD_TYPES), min_size=1, max_size=6, unique_by=id))
    schema = record_schema(*[avro_type for avro_type, _ in chosen])
    record = {f"f{i}": data.draw(values) for i, (_, values) in enumerate(chosen)}
    message = fastavro_bytes(schema, record)
    reader = compile_reader(schema)

    assert reader is not None
    try:
        expected = fastavro_read(schema, message)
    except OverflowError:  # epoch milliseconds outside the years 1 to 9999
        assert reader(message, 0) is None
    else:
        assert reader(message, 0) == expected


def _mutated(message: bytes) -> st.SearchStrategy[bytes]:
    """``message`` cut short, grown, or with bytes replaced, inserted or removed."""
    at = st.integers(0, max(len(message) - 1, 0))
    return st.one_of(
        at.map(lambda i: message[:i]),
        st.binary(min_size=1, max_size=12).map(lambda extra: message + extra),
        st.tuples(at, st.integers(0, 255)).map(
            lambda p: message[: p[0]] + bytes([p[1]]) + message[p[0] + 1 :]
        ),
        st.tuples(at, st.binary(min_size=1, max_size=11)).map(
            lambda p: message[: p[0]] + p[1] + message[p[0] :]
        ),
        st.tuples(at, st.integers(1, 4)).map(lambda p: message[: p[0]] + message[p[0] + p[1] :]),
    )


@pytest.mark.parametrize("event_type", ["InteractionRecorded", "OrderPlaced", "ConsentChanged"])
@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_any_bytes_read_as_fastavro_reads_them_or_are_left_to_it(
    codec: Codec, event_type: str, data: Any
) -> None:
    # The safety property: whatever the bytes, the compiled reader returns exactly fastavro's
    # record and end, or nothing (and fastavro decides). It never accepts what fastavro refuses.
    schema = codec.registry.latest(event_type).schema
    valid = codec.encode(data.draw(touchpoints(codec, event_type)))[5:]
    message = data.draw(_mutated(valid) | st.binary(max_size=200))
    reader = compile_reader(schema)
    assert reader is not None

    ours = reader(message, 0)
    if ours is not None:
        assert ours == fastavro_read(schema, message)


@pytest.mark.parametrize(
    ("avro_type", "body"),
    [
        ("long", b"\x80" * 10 + b"\x01"),  # a varint over 64 bits
        ("long", b"\xff" * 9 + b"\x7f"),  # 70 bits in ten bytes
        ("long", b"\x80"),  # cut short
        ("string", b"\x01"),  # length -1
        ("string", b"\x04\xff\xfe"),  # not UTF-8, and short
        ("string", b"\x06\xed\xa0\x80"),  # a UTF-8 encoded surrogate
        ("int", b"\x80\x80\x80\x80\x10"),  # 2**31 in an int
        ("boolean", b"\x02"),
        (["null", "string"], b"\x04"),  # branch 2 of 2
        (["null", "string"], b"\x01"),  # branch -1
        ({"type": "enum", "name": "E", "symbols": ["a", "b"]}, b"\x04"),
        ({"type": "enum", "name": "E", "symbols": ["a", "b"]}, b"\x01"),
        ({"type": "map", "values": "string"}, b"\x01\x02\x00"),  # a block with its size
        ({"type": "string", "logicalType": "uuid"}, b"\x06abc"),
        ({"type": "long", "logicalType": "timestamp-millis"}, b"\xfe\xff\xff\xff\xff\xff\xff\x7f"),
    ],
)
def test_bytes_it_is_not_sure_of_are_left_to_fastavro(avro_type: Any, body: bytes) -> None:
    reader = compile_reader(record_schema(avro_type))

    assert reader is not None
    assert reader(body, 0) is None


@pytest.mark.parametrize(
    "avro_type",
    [
        {"type": "array", "items": "string"},
        ["null", "string", "long"],
        "double",
        {"type": "int", "logicalType": "date"},
        "test.Unknown",
    ],
)
def test_shapes_it_cannot_read_compile_to_nothing(avro_type: Any) -> None:
    assert compile_reader(record_schema("string", avro_type)) is None


def test_the_codec_reads_through_the_compiled_reader_and_fastavro_resolves_older_versions(
    codec: Codec, monkeypatch: pytest.MonkeyPatch
) -> None:
    event = tp("OrderPlaced")
    message = codec.encode(event)

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("fastavro was asked to read a message the compiled reader reads")

    monkeypatch.setattr(fastavro, "schemaless_reader", refuse)
    assert codec.decode(message) == event
    with pytest.raises(UndecodableMessage, match="2 bytes after the record"):
        codec.decode(message + b"\x00\x00")
    with pytest.raises(UndecodableMessage, match="compiled reader reads"):  # bad: fastavro's
        codec.decode(message[:-3])
