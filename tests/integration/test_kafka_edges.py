"""Every message Kafka can deliver is stored or dead-lettered, and ingestion goes on: odd keys,
headers and values, every compression codec, messages at the topic's size limit, conflicting
re-sends, poison messages, and a worker that stops on SIGTERM in every state. All against the
real broker."""

from __future__ import annotations

import signal
import subprocess
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import pytest
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic

from crm_ledger.adapters.avro import Codec
from crm_ledger.adapters.eventstore import sqlite_env
from crm_ledger.adapters.kafka import (
    HEADER_ROOM,
    IngestWorker,
    KafkaSettings,
    dead_letters,
    ensure_topics,
    max_message_bytes,
)
from crm_ledger.application import Ledger
from kafka import KafkaAdminClient, KafkaProducer
from tests.factories import tp
from tests.integration.conftest import (
    KAFKA_SCRIPT,
    Worker,
    batches,
    init_ledger,
    kafka_env,
    run_cli,
    wait_until,
)

if TYPE_CHECKING:
    import uuid
    from pathlib import Path

    from crm_ledger.adapters.kafka import DeadLetter
    from crm_ledger.aggregates import Touchpoint

#: The broker's default largest record batch (message.max.bytes), which our topics keep.
TOPIC_LIMIT = 1_048_588


class RawName(str):
    """A header name whose wire bytes are whatever we say, UTF-8 or not (kafka-python's
    producer encodes names with ``str.encode``)."""

    raw: bytes

    def __new__(cls, raw: bytes) -> RawName:
        name = super().__new__(cls, raw.decode("latin-1"))
        name.raw = raw
        return name

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return self.raw


def _producer(kafka: KafkaSettings, **config: Any) -> KafkaProducer:
    return KafkaProducer(
        bootstrap_servers=kafka.bootstrap, max_request_size=2 * TOPIC_LIMIT, **config
    )


def _ingest(ledger: Ledger, codec: Codec, kafka: KafkaSettings, **options: Any) -> Any:
    worker = IngestWorker(ledger, codec, kafka, poll_timeout_ms=300, **options)
    return worker.run(until_caught_up=True)


def _letters_by_offset(kafka: KafkaSettings) -> dict[int, DeadLetter]:
    return {int(d.headers["source.offset"]): d for d in dead_letters(kafka)}


def _send(producer: KafkaProducer, kafka: KafkaSettings, **message: Any) -> int:
    """Send one message to partition 0 (so all are read in order); its offset."""
    meta = producer.send(kafka.topic, partition=0, **message).get(timeout=60)
    return int(meta.offset)


def test_every_kind_of_message_is_stored_or_dead_lettered_and_ingestion_goes_on(
    kafka: KafkaSettings, codec: Codec, tmp_path: Path
) -> None:
    ensure_topics(kafka)
    customer = "EDGE-1"
    key = customer.encode()
    goods: list[Touchpoint] = []
    bad: dict[int, tuple[str, str]] = {}  # offset -> (case, error class expected)

    def good(producer: KafkaProducer, **extra: Any) -> None:
        event = tp("InteractionRecorded", customer)
        goods.append(event)
        _send(producer, kafka, key=key, value=codec.encode(event), **extra)

    def negative(customer_id: str) -> bytes:
        return codec.encode(tp("OrderPlaced", customer_id, amount_minor=-500))

    plain = _producer(kafka)
    good(plain)
    # Every compression codec Kafka supports, each batch between good events.
    for compression in ("gzip", "snappy", "lz4", "zstd"):
        compressed = _producer(kafka, compression_type=compression)
        good(compressed)
        good(compressed)
        compressed.close()
        good(plain)
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("tombstone", {"key": key, "value": None}, "UndecodableMessage"),
        (
            "null key",
            {"key": None, "value": codec.encode(tp("InteractionRecorded", customer))},
            "WrongMessageKey",
        ),
        (
            "empty key",
            {"key": b"", "value": codec.encode(tp("InteractionRecorded", customer))},
            "WrongMessageKey",
        ),
        (
            "another customer's key",
            {"key": b"EDGE-2", "value": codec.encode(tp("InteractionRecorded", customer))},
            "WrongMessageKey",
        ),
        ("binary key", {"key": bytes(range(256)), "value": b"\x00\x00"}, "UndecodableMessage"),
        (
            "at the topic's size limit",
            {"key": key, "value": b"\x00" * (TOPIC_LIMIT - 200)},
            "UndecodableMessage",
        ),
        (
            "a tombstone with odd headers",
            {"key": key, "value": None, "headers": [(RawName(b"\xff\xfe"), b"\x00")]},
            "UndecodableMessage",
        ),
        # Checked by the ledger as it records the batch: refused, the batch stored.
        ("breaks the contract", {"key": key, "value": negative(customer)}, "InvalidEvent"),
        # Both wrong: the contract is the reason given.
        ("breaks it, wrong key", {"key": b"EDGE-3", "value": negative(customer)}, "InvalidEvent"),
    ]
    for name, message, error_class in cases:
        bad[_send(plain, kafka, **message)] = (name, error_class)
        good(plain)
    # Headers of any bytes, any number and size, on good events: stored as usual.
    good(plain, headers=[(RawName(b"\xc3\x28 not utf-8 \xff"), bytes(range(256)))])
    good(plain, headers=[(RawName(bytes([i])), bytes([i])) for i in range(256)])
    good(plain, headers=[(f"h{i}", b"v" * 10) for i in range(2000)])
    good(plain, headers=[("big", b"\xff" * 500_000)])
    good(plain, headers=[("", b"")])
    # A re-send: identical is a quiet duplicate, different content is dead-lettered.
    first = goods[0]
    _send(plain, kafka, key=key, value=codec.encode(first))
    changed = replace(first, data={**first.data, "campaign": "not what was sent first"})
    bad[_send(plain, kafka, key=key, value=codec.encode(changed))] = (
        "conflicting duplicate",
        "ConflictingDuplicate",
    )
    good(plain)
    plain.close()

    with Ledger(sqlite_env(str(tmp_path / "l.sqlite"))) as ledger:
        stats = _ingest(ledger, codec, kafka)
        assert (stats.recorded, stats.duplicates, stats.dead_lettered) == (
            len(goods),
            1,
            len(bad),
        )
        history = ledger.history(customer)
        assert sorted(str(h.event_id) for h in history) == sorted(str(e.event_id) for e in goods)
        assert ledger.pending_dead_letters() == []  # every refusal reached the topic

    letters = _letters_by_offset(kafka)
    assert sorted(letters) == sorted(bad)
    for offset, (name, error_class) in bad.items():
        letter = letters[offset]
        assert letter.headers["error.class"] == error_class, (name, letter.headers)
        assert letter.headers["error.message"], name
        assert letter.headers["source.topic"] == kafka.topic
    size_case = next(o for o, (n, _) in bad.items() if n == "at the topic's size limit")
    assert len(letters[size_case].value) == TOPIC_LIMIT - 200
    reasons = {name: letters[o].headers["error.message"] for o, (name, _) in bad.items()}
    assert "tombstone" in reasons["tombstone"]
    assert "message key null is not the event's customer_id 'EDGE-1'" in reasons["null key"]
    assert "sha256:" in reasons["conflicting duplicate"]
    assert "amount_minor: must not be negative" in reasons["breaks the contract"]
    assert "amount_minor: must not be negative" in reasons["breaks it, wrong key"]
    assert "over the" in reasons["at the topic's size limit"]


def test_the_dead_letter_topic_is_raised_to_take_the_largest_message_plus_headers(
    kafka: KafkaSettings,
) -> None:
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    try:
        admin.create_topics(
            [NewTopic(kafka.dlq_topic, 1, 1, topic_configs={"max.message.bytes": "100000"})]
        )
        ensure_topics(kafka)
        assert max_message_bytes(admin, kafka.dlq_topic) == TOPIC_LIMIT + HEADER_ROOM
    finally:
        admin.close()


class PoisonCodec(Codec):
    """Raises an unexpected error whenever it decodes ``poison`` (and counts the tries)."""

    def __init__(self, codec: Codec, poison: bytes) -> None:
        super().__init__(codec.registry)
        self.poison = poison
        self.tries = 0

    def decode(self, message: bytes) -> Any:
        if message == self.poison:
            self.tries += 1
            raise RuntimeError("forced failure on this message")
        return super().decode(message)


class PoisonLedger(Ledger):
    """Fails every batch holding event ``poison`` with an unexpected error."""

    poison: uuid.UUID
    failed: int = 0

    def record_many(self, touchpoints: Any, *args: Any, **kwargs: Any) -> Any:
        if any(t.event_id == self.poison for t in touchpoints):
            self.failed += 1
            raise ValueError("forced failure storing this event")
        return super().record_many(touchpoints, *args, **kwargs)


def test_a_poison_message_is_retried_a_bounded_number_of_times_then_dead_lettered(
    kafka: KafkaSettings, codec: Codec, tmp_path: Path
) -> None:
    ensure_topics(kafka)
    customer = "POISON-1"
    events = [tp("InteractionRecorded", customer) for _ in range(9)]
    values = [codec.encode(e) for e in events]
    producer = _producer(kafka)
    offsets = [_send(producer, kafka, key=customer.encode(), value=v) for v in values]
    producer.close()

    poisoned = PoisonCodec(codec, values[2])  # fails in decoding
    with PoisonLedger(sqlite_env(str(tmp_path / "l.sqlite"))) as ledger:
        ledger.poison = events[6].event_id  # fails in storing
        stats = _ingest(ledger, poisoned, kafka)
        assert poisoned.tries == 3
        assert ledger.failed >= 3
        assert (stats.recorded, stats.dead_lettered) == (7, 2)
        stored = {h.event_id for h in ledger.history(customer)}
    assert stored == {e.event_id for i, e in enumerate(events) if i not in (2, 6)}
    letters = _letters_by_offset(kafka)
    assert sorted(letters) == [offsets[2], offsets[6]]
    assert letters[offsets[2]].headers["error.class"] == "RuntimeError"
    assert letters[offsets[2]].headers["error.message"] == "forced failure on this message"
    assert letters[offsets[6]].headers["error.class"] == "ValueError"


def _limit_dlq(kafka: KafkaSettings, max_bytes: int) -> None:
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    try:
        resource = ConfigResource(
            ConfigResourceType.TOPIC, kafka.dlq_topic, configs={"max.message.bytes": str(max_bytes)}
        )
        admin.alter_configs([resource])
        wait_until(
            lambda: max_message_bytes(admin, kafka.dlq_topic) == max_bytes, 30, "DLQ limit set"
        )
    finally:
        admin.close()


def test_a_dead_letter_the_topic_refuses_is_kept_in_the_ledger_and_sent_later(
    kafka: KafkaSettings, codec: Codec, tmp_path: Path
) -> None:
    ensure_topics(kafka)
    refused = b"not avro " * 2000
    producer = _producer(kafka)
    offset = _send(producer, kafka, key=b"X", value=refused)
    after = tp("InteractionRecorded", "X")
    _send(producer, kafka, key=b"X", value=codec.encode(after))
    producer.close()
    store = sqlite_env(str(tmp_path / "l.sqlite"))
    with Ledger(store) as ledger:
        worker = IngestWorker(ledger, codec, kafka, poll_timeout_ms=300)
        _limit_dlq(kafka, 1000)  # an operator shrank the dead-letter topic under the worker
        stats = worker.run(until_caught_up=True)
        assert (stats.consumed, stats.recorded, stats.dead_lettered) == (2, 1, 1)
        [(_, kept)] = ledger.pending_dead_letters()
        assert (kept.offset, kept.value, kept.error_class) == (
            offset,
            refused,
            "UndecodableMessage",
        )
    assert dead_letters(kafka) == []

    with Ledger(store) as ledger:  # the next run raises the limit again and sends it
        IngestWorker(ledger, codec, kafka, poll_timeout_ms=300).run(until_caught_up=True)
        assert ledger.pending_dead_letters() == []
    assert [d.value for d in dead_letters(kafka)] == [refused]


def test_a_recreated_topic_stops_the_worker_with_the_command_that_resets_it(
    kafka: KafkaSettings, codec: Codec, tmp_path: Path
) -> None:
    ensure_topics(kafka)
    producer = _producer(kafka)
    for _ in range(5):
        event = tp("InteractionRecorded", "R1")
        producer.send(kafka.topic, key=b"R1", value=codec.encode(event))
    producer.flush()
    producer.close()
    env = kafka_env(kafka)
    args = ["--data-dir", str(init_ledger(tmp_path)), "--format", "json"]
    ran = run_cli([*args, "ingest", "--until-caught-up"], env)
    assert ran.returncode == 0, ran.stderr
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    admin.delete_topics([kafka.topic])
    wait_until(lambda: kafka.topic not in admin.list_topics(), 60, "topic deleted")
    admin.close()
    ensure_topics(kafka)  # re-created, empty
    again = run_cli([*args, "ingest", "--until-caught-up"], env)
    assert again.returncode == 1
    [line] = [ln for ln in again.stderr.splitlines() if ln.startswith("crm-ledger:")]
    assert "was deleted and re-created" in line
    assert f"crm-ledger positions reset --topic {kafka.topic}" in line
    reset = run_cli([*args, "positions", "reset", "--yes"], env)
    assert reset.returncode == 0, reset.stderr
    assert '"partitions_reset": 1' in reset.stdout


def _idle(logs: list[dict[str, Any]]) -> bool:
    return any(e.get("event") == "assigned" and e["partitions"] for e in logs)


@pytest.mark.parametrize("state", ["polling", "waiting for a rebalance", "broker down"])
def test_sigterm_stops_the_worker_within_seconds(
    state: str, kafka: KafkaSettings, codec: Codec, tmp_path: Path
) -> None:
    ensure_topics(kafka)
    env = kafka_env(kafka)
    args = ["--data-dir", str(init_ledger(tmp_path)), "ingest"]
    if state == "waiting for a rebalance":
        holder = Worker(args, env)
        holder.wait_for(_idle)
        holder.process.send_signal(signal.SIGKILL)  # its partitions stay held for a session
        holder.finish()
        worker = Worker(args, env)
        worker.wait_for(lambda logs: any(e.get("event") == "started" for e in logs))
        assert not _idle(worker.logs)  # the killed member's session has not run out yet
    else:
        worker = Worker(args, env)
        worker.wait_for(_idle)
    if state == "broker down":
        stopped = subprocess.run([str(KAFKA_SCRIPT), "stop"], check=False, timeout=120)
        assert stopped.returncode == 0
    try:
        took = worker.stop(signal.SIGTERM, timeout=30)
        code, _, err = worker.finish()
    finally:
        if state == "broker down":
            up = subprocess.run(
                [str(KAFKA_SCRIPT), "resume"],
                capture_output=True,
                text=True,
                check=False,
                timeout=180,
            )
            assert up.returncode == 0, up.stderr
    assert code == 0, err[-2000:]
    assert not batches(worker.logs)
    print(f"SIGTERM while {state}: exited in {took:.2f} s")


def test_a_worker_that_fails_to_start_leaves_no_connection_open(
    kafka: KafkaSettings, codec: Codec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its consumer had joined the broker when the dead-letter producer could not be made:
    the consumer is closed before the error is raised, not left to the garbage collector (an
    unclosed socket found later fails whichever test is running then)."""
    from crm_ledger.adapters.kafka import client
    from crm_ledger.errors import KafkaUnavailable

    consumers: list[Any] = []

    def kept(settings: KafkaSettings, **config: Any) -> Any:
        consumers.append(new_consumer(settings, **config))
        return consumers[-1]

    def no_producer(*args: Any, **config: Any) -> Any:
        raise KafkaUnavailable("no dead-letter producer in this test")

    new_consumer = client.new_consumer
    monkeypatch.setattr(client, "new_consumer", kept)
    monkeypatch.setattr(client, "new_producer", no_producer)
    refused = pytest.raises(KafkaUnavailable, match="no dead-letter producer")
    with Ledger(sqlite_env(str(tmp_path / "l.sqlite"))) as ledger, refused:
        IngestWorker(ledger, codec, kafka)
    [consumer] = consumers
    assert consumer._closed
