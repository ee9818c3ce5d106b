"""The Kafka transport against a real Apache Kafka broker: exactly once, crashes, rebalances,
broker restarts and a dead-letter topic that keeps every bad message with its reason."""

from __future__ import annotations

import gc
import io
import json
import os
import random
import signal
import struct
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fastavro
import pytest
from kafka.partitioner.default import murmur2

from crm_ledger.adapters.avro import Codec, to_json, to_record
from crm_ledger.adapters.eventstore import sqlite_env
from crm_ledger.adapters.kafka import (
    IngestWorker,
    KafkaSettings,
    Publisher,
    dead_letters,
    ensure_topics,
    lag,
    redrive,
)
from crm_ledger.application import Ledger
from crm_ledger.errors import CustomerNotFound
from crm_ledger.sources.synthetic import generate
from kafka import KafkaProducer
from tests.factories import tp
from tests.integration.conftest import (
    KAFKA_SCRIPT,
    Worker,
    batches,
    cli_ledger,
    init_ledger,
    kafka_env,
    stored_touchpoints,
    wait_until,
)
from tests.processes import cli_loading

if TYPE_CHECKING:
    from crm_ledger.aggregates import Touchpoint

CLI = Path(sys.executable).with_name("crm-ledger")
SESSION_TIMEOUT_S = 10  # the worker's default: a killed member's partitions wait this long


def events(count: int, seed: int = 5) -> list[Touchpoint]:
    history, _ = generate(seed, customers=count * 2500 // 50000 + 40)
    assert len(history) >= count
    return history[:count]


def publish(kafka: KafkaSettings, codec: Codec, batch: list[Touchpoint]) -> None:
    with Publisher(kafka, codec) as publisher:
        results = publisher.publish_many(batch)
    assert [r.error for r in results if r.error] == []


def ingest(ledger: Ledger, codec: Codec, kafka: KafkaSettings, **options: Any) -> Any:
    worker = IngestWorker(ledger, codec, kafka, poll_timeout_ms=300, **options)
    return worker.run(until_caught_up=True)


def expected(batch: list[Touchpoint]) -> dict[str, tuple[str, Any, str, dict[str, Any]]]:
    return {str(e.event_id): (e.event_type, e.occurred_at, e.source, dict(e.data)) for e in batch}


def stored(ledger: Ledger) -> dict[str, tuple[str, Any, str, dict[str, Any]]]:
    rows = stored_touchpoints(ledger)
    as_dict = {k: (s.event_type, s.occurred_at, s.source, s.data) for k, s in rows}
    assert len(as_dict) == len(rows), "an event_id is stored twice"
    return as_dict


def _my_commit_processes() -> list[int]:
    """This process's children that run the SQLite commit process."""
    found = subprocess.run(
        ["pgrep", "-P", str(os.getpid()), "-f", "sqlite_writer"],
        capture_output=True,
        text=True,
        check=False,
    )
    return [int(pid) for pid in found.stdout.split()]


def test_batches_lost_in_flight_are_read_again_from_the_ledgers_positions(
    kafka: KafkaSettings, codec: Codec, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The commit process stops answering with batches in flight, twice: the worker reads
    them again from the ledger's positions, and every event is stored exactly once."""
    batch = events(3_000)
    publish(kafka, codec, batch)
    kills: list[int] = []

    def stop_the_commit_process(stats: Any) -> None:
        # Stopped, the process answers nothing more: the worker's wait for an answer times
        # out, the process is killed, and the batches it did not answer are lost.
        if stats.batches in (2, 6) and len(kills) < 2:
            (pid,) = _my_commit_processes()
            ledger.recorder.committer.answer_timeout = 1.0  # type: ignore[attr-defined]
            os.kill(pid, signal.SIGSTOP)
            kills.append(pid)

    with Ledger(sqlite_env(str(tmp_path / "l.sqlite"))) as ledger:
        stats = ingest(ledger, codec, kafka, max_batch=200, on_batch=stop_the_commit_process)
        assert len(kills) == 2
        read_again = [r for r in caplog.records if r.getMessage().startswith("batches not stored")]
        assert len(read_again) == 2
        assert all(r.messages > 0 for r in read_again)  # type: ignore[attr-defined]
        assert stored(ledger) == expected(batch)
        assert sum(r.lag for r in lag(kafka, ledger)) == 0
        assert (stats.consumed, stats.recorded, stats.duplicates) == (3_000, 3_000, 0)


def test_keys_partition_as_the_java_client_does() -> None:
    # Vectors from Kafka's Java partitioner (1,000 partitions), as kafka-python's tests use.
    vectors = {b"": 681, b"a": 524, b"ab": 434, b"abc": 107, b"123456789": 566, b"\x00 ": 742}
    assert {k: (murmur2(k) & 0x7FFFFFFF) % 1000 for k in vectors} == vectors


def test_ten_thousand_events_are_ingested_exactly_once(
    kafka: KafkaSettings, codec: Codec, tmp_path: Path
) -> None:
    batch = events(10_000)
    publish(kafka, codec, batch)

    with Ledger(sqlite_env(str(tmp_path / "l.sqlite"))) as ledger:
        stats = ingest(ledger, codec, kafka)
        assert (stats.consumed, stats.recorded, stats.dead_lettered) == (10_000, 10_000, 0)
        assert stored(ledger) == expected(batch)
        assert sum(r.lag for r in lag(kafka, ledger)) == 0

        publish(kafka, codec, batch)  # the same events again
        again = ingest(ledger, codec, kafka)
        assert (again.consumed, again.recorded, again.duplicates) == (10_000, 0, 10_000)
        assert ledger.count_events() == 10_000
        assert stored(ledger) == expected(batch)


def test_published_events_land_on_their_key_partition(kafka: KafkaSettings, codec: Codec) -> None:
    # Each customer three times: the Publisher's partitioner then answers from its memory.
    batch = [tp("InteractionRecorded", f"C{i % 50}") for i in range(150)]
    with Publisher(kafka, codec) as publisher:
        results = publisher.publish_many(batch)
    partitions = kafka.partitions
    assert [r.partition for r in results] == [
        (murmur2(e.customer_id.encode()) & 0x7FFFFFFF) % partitions for e in batch
    ]


def test_publish_many_lets_go_of_each_future_once_its_event_is_delivered(
    kafka: KafkaSettings, codec: Codec, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Futures kept to the end of a million-event batch made the collector rescan them on
    # every full collection (publish_ratio 0.59 at 1M; 0.79 once let go).
    from kafka.producer.future import FutureRecordMetadata

    batch = [tp("InteractionRecorded", f"C{i % 50}") for i in range(3000)]
    live: list[int] = []  # futures alive just after the 1,000th and 2,000th sends
    with Publisher(kafka, codec) as publisher:
        producer, send, calls = publisher._producer, publisher._producer.send, [0]

        def send_then_settle(*args: Any, **kwargs: Any) -> Any:
            calls[0] += 1
            if calls[0] in (1001, 2001):
                live.append(sum(isinstance(o, FutureRecordMetadata) for o in gc.get_objects()))
            future = send(*args, **kwargs)
            if calls[0] in (1000, 2000):
                producer.flush()  # everything sent so far is delivered before the next send
            return future

        monkeypatch.setattr(producer, "send", send_then_settle)
        results = publisher.publish_many(batch)
    assert [r.event_id for r in results] == [e.event_id for e in batch]
    assert [r.offset is not None and r.error is None for r in results] == [True] * len(batch)
    assert len(live) == 2
    assert max(live) < 50, live  # was 1000 and 2000: every future since the first


def test_publish_refuses_an_invalid_event_before_sending(
    kafka: KafkaSettings, codec: Codec
) -> None:
    from crm_ledger.errors import InvalidEvent

    with Publisher(kafka, codec) as publisher, pytest.raises(InvalidEvent, match="amount_minor"):
        publisher.publish(tp("OrderPlaced", amount_minor=-1))
    assert dead_letters(kafka) == []


def test_an_event_over_the_message_limit_stops_the_batch_before_anything_is_sent(
    kafka: KafkaSettings, codec: Codec
) -> None:
    # 3 MB: over the ledger's 512 KiB message limit and kafka-python's 1 MB request, which
    # raised its own MessageSizeTooLargeError after the events before it had been sent.
    from crm_ledger.errors import InvalidEventInBatch

    with Publisher(kafka, codec) as publisher:
        [first] = publisher.publish_many([tp("InteractionRecorded", "C1")])
        huge = tp("InteractionRecorded", "C1", note="x" * 3_000_000)
        with pytest.raises(InvalidEventInBatch, match=r"event 2: .* bytes encoded, over the"):
            publisher.publish_many([tp("InteractionRecorded", "C1"), huge])
        [after] = publisher.publish_many([tp("InteractionRecorded", "C1")])
    assert first.offset is not None
    assert (after.partition, after.offset) == (first.partition, first.offset + 1)


def _errors(text: str) -> str:
    """The lines of a worker's stderr that say what went wrong."""
    keep = [
        line
        for line in text.splitlines()
        if line.startswith("crm-ledger:") or (line[:1].isalpha() and "Error" in line)
    ]
    return "\n".join(keep[-20:]) or text[-2000:]


def _split_settled(logs: list[dict[str, Any]]) -> bool:
    assigned = [e["partitions"] for e in logs if e.get("event") == "assigned"]
    return bool(assigned) and 0 < len(assigned[-1]) < 6


def test_two_workers_split_the_partitions_and_store_every_event_once(
    kafka: KafkaSettings, codec: Codec, pg_url: str, pg_schema: str, tmp_path: Path
) -> None:
    ensure_topics(kafka)
    env = kafka_env(kafka)
    keys = tmp_path / "keys"
    base = ["--database-url", pg_url, "--database-schema", pg_schema, "--data-dir", str(keys)]
    init_ledger(keys, *base)  # the tables once, before two processes race to make them
    workers = [Worker([*base, "ingest", "--batch-size", "500"], env) for _ in range(2)]
    for worker in workers:  # both joined the group and hold a share before anything arrives
        worker.wait_for(_split_settled)
    batch = events(10_000, seed=9)
    publish(kafka, codec, batch)
    with cli_ledger(keys, database_url=pg_url, schema=pg_schema) as ledger:
        wait_until(lambda: ledger.count_events() >= 10_000, 180, "10,000 events stored")
        for worker in workers:
            worker.stop(signal.SIGTERM)
        outputs = [w.finish() for w in workers]
        assert [o[0] for o in outputs] == [0, 0], [o[2][-2000:] for o in outputs]
        assert stored(ledger) == expected(batch)

    logs = [w.logs for w in workers]
    # The split in force while consuming (when one worker leaves at the end, the group hands
    # the other every partition, so the last assignment says nothing about the work).
    split = [batches(log)[0]["partitions"] for log in logs]
    assert sorted(split[0] + split[1]) == list(range(kafka.partitions))
    assert set(split[0]).isdisjoint(split[1])
    recorded = [max((e["recorded"] for e in batches(log)), default=0) for log in logs]
    assert all(r > 0 for r in recorded), recorded
    assert sum(recorded) == 10_000


def test_a_worker_killed_mid_batch_and_restarted_leaves_one_copy_of_each_event(
    kafka: KafkaSettings, codec: Codec, tmp_path: Path
) -> None:
    batch = events(20_000, seed=13)
    publish(kafka, codec, batch)
    env = kafka_env(kafka)
    init_ledger(tmp_path)
    args = ["--data-dir", str(tmp_path), "ingest", "--batch-size", "100", "--until-caught-up"]
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    kills = 0
    for _ in range(4):
        worker = Worker(args, env)
        worker.wait_for(lambda logs: bool(batches(logs)), timeout=180, or_exit=True)
        time.sleep(rng.uniform(0, 0.5))  # a random moment while batches are flowing
        if worker.process.poll() is None:
            worker.process.send_signal(signal.SIGKILL)
            kills += 1
        worker.finish(timeout=60)
    # Killed workers stay members of the group until their session times out, holding
    # partitions nobody alive reads: --until-caught-up waits for them to be handed over.
    final = Worker(args, env)
    code, _, err = final.finish(timeout=300)
    assert code == 0, _errors(err)
    unread = time.monotonic() - final.started

    assert kills >= 3, f"the worker finished before it could be killed (seed {seed})"
    with cli_ledger(tmp_path) as ledger:
        assert ledger.count_events() == 20_000, f"seed {seed}"
        assert stored(ledger) == expected(batch), f"seed {seed}"
    print(f"kill test: seed {seed}, last worker {unread:.1f} s (session {SESSION_TIMEOUT_S} s)")


def test_a_broker_restart_mid_ingest_loses_nothing(
    kafka: KafkaSettings, codec: Codec, tmp_path: Path, kafka_bootstrap: str
) -> None:
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        pytest.fail("this test restarts the broker it started; unset KAFKA_BOOTSTRAP_SERVERS")
    batch = events(30_000, seed=17)
    publish(kafka, codec, batch)
    init_ledger(tmp_path)
    worker = Worker(
        ["--data-dir", str(tmp_path), "ingest", "--batch-size", "500", "--until-caught-up"],
        kafka_env(kafka),
    )
    worker.wait_for(lambda logs: bool(batches(logs)))
    restarted = subprocess.run(
        [str(KAFKA_SCRIPT), "restart"], capture_output=True, text=True, check=False, timeout=180
    )
    assert restarted.returncode == 0, restarted.stderr
    assert restarted.stdout.strip() == kafka_bootstrap
    code, _, err = worker.finish()
    assert code == 0, _errors(err)

    with cli_ledger(tmp_path) as ledger:
        assert stored(ledger) == expected(batch)


def test_an_ingest_worker_does_not_load_the_read_side_sql_toolkit(
    kafka: KafkaSettings, codec: Codec, tmp_path: Path
) -> None:
    """The worker only writes: SQLAlchemy (about 14 MB of its memory) stays unloaded."""
    batch = events(300, seed=19)
    publish(kafka, codec, batch)
    init_ledger(tmp_path)
    command = ["--data-dir", str(tmp_path), "ingest", "--until-caught-up"]
    code, _, err, loaded = cli_loading(command, ("sqlalchemy",), kafka_env(kafka))
    assert code == 0, err[-2000:]
    assert loaded == []
    with cli_ledger(tmp_path) as ledger:
        assert stored(ledger) == expected(batch)


def _framed(schema_id: int, schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    buffer.write(struct.pack(">bI", 0, schema_id))
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(schema), record)
    return buffer.getvalue()


def _variant(schema: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """The schema with some fields retyped (None drops the field)."""
    fields = []
    for f in schema["fields"]:
        if f["name"] in changes:
            if changes[f["name"]] is None:
                continue
            f = {**f, "type": changes[f["name"]]}
        fields.append(f)
    return {**schema, "name": "Variant", "fields": fields}


def malformed(codec: Codec) -> dict[str, bytes]:
    """One message per way a producer can break the contract."""
    order = codec.registry.latest("OrderPlaced")
    good = to_record(tp("OrderPlaced", "BAD"))
    encoded = codec.encode(tp("OrderPlaced", "BAD"))
    as_str = {**good, "amount_minor": "twelve euros ninety-nine"}
    return {
        "truncated Avro": encoded[:-4],
        "wrong magic byte": b"\x07" + encoded[1:],
        "unknown schema id": b"\x00" + struct.pack(">I", 999_999) + encoded[5:],
        "wrong field type": _framed(
            order.schema_id, _variant(order.schema, amount_minor="string"), as_str
        ),
        "missing event_id": _framed(order.schema_id, _variant(order.schema, event_id=None), good),
        "missing customer_id": _framed(
            order.schema_id, _variant(order.schema, customer_id=None), good
        ),
        "negative amount": codec.encode(tp("OrderPlaced", "BAD", amount_minor=-500)),
        "not whole minor units": _framed(
            order.schema_id,
            _variant(order.schema, amount_minor="double"),
            {**good, "amount_minor": 12.5},
        ),
        "far future": codec.encode(
            tp("OrderPlaced", "BAD", at=datetime.now(UTC) + timedelta(days=400))
        ),
        # From a producer without the Publisher's limit (ours refuses to encode it).
        "oversize payload": Codec(codec.registry, max_message_bytes=2**20).encode(
            tp("InteractionRecorded", "BAD", note="x" * 600_000)
        ),
        "not Avro at all": b'{"type": "OrderPlaced"}',
        "empty": b"",
    }


def test_every_malformed_message_is_dead_lettered_and_the_good_ones_are_stored(
    kafka: KafkaSettings, codec: Codec, tmp_path: Path
) -> None:
    ensure_topics(kafka)
    corpus = malformed(codec)
    goods = [tp("InteractionRecorded", "K") for _ in range(len(corpus) + 1)]
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap, max_request_size=2_000_000)
    sent = []
    for good, (name, value) in zip(goods, [*corpus.items(), ("", b"")], strict=True):
        producer.send(kafka.topic, key=b"K", value=codec.encode(good))  # one partition: in order
        if name:
            producer.send(kafka.topic, key=b"K", value=value)
            sent.append(name)
    producer.flush()
    producer.close()

    with Ledger(sqlite_env(str(tmp_path / "l.sqlite"))) as ledger:
        stats = ingest(ledger, codec, kafka)
        assert stats.recorded == len(goods)
        assert ledger.customer("K").interactions == len(goods)
        with pytest.raises(CustomerNotFound):
            ledger.customer("BAD")

    letters = dead_letters(kafka)
    assert len(letters) == len(corpus)
    by_value = {d.value: d for d in letters}
    for name, value in corpus.items():
        letter = by_value[value]
        assert letter.key == b"K"
        assert letter.headers["source.topic"] == kafka.topic
        assert int(letter.headers["source.offset"]) >= 0
        assert letter.headers["error.class"] in {"UndecodableMessage", "InvalidEvent"}, name
        assert letter.headers["error.message"], name
    reasons = {name: by_value[value].headers["error.message"] for name, value in corpus.items()}
    assert "magic byte is 7" in reasons["wrong magic byte"]
    assert "schema id 999999 is not in the registry" in reasons["unknown schema id"]
    assert "amount_minor: must not be negative" in reasons["negative amount"]
    assert "is in the future" in reasons["far future"]
    assert "over the" in reasons["oversize payload"]


def test_redrive_after_a_fix_stores_what_was_dead_lettered(
    kafka: KafkaSettings, codec: Codec, tmp_path: Path
) -> None:
    soon = tp("OrderPlaced", "C1", at=datetime.now(UTC) + timedelta(days=3))
    publish_raw = KafkaProducer(bootstrap_servers=kafka.bootstrap)
    ensure_topics(kafka)
    publish_raw.send(kafka.topic, key=b"C1", value=codec.encode(soon))
    publish_raw.flush()
    publish_raw.close()

    store = sqlite_env(str(tmp_path / "l.sqlite"))
    with Ledger(store) as ledger:
        first = ingest(ledger, codec, kafka)  # allows 1 day of clock skew: refused
        assert (first.recorded, first.dead_lettered) == (0, 1)
        assert [d.offset for d in redrive(kafka, ledger)] == [0]
        assert redrive(kafka, ledger) == []  # each dead letter is redriven once

    with Ledger(store, max_future=timedelta(days=7)) as ledger:  # the fix: a wider allowance
        fixed = ingest(ledger, codec, kafka)
        assert (fixed.recorded, fixed.dead_lettered) == (1, 0)
        assert ledger.history("C1")[0].event_id == soon.event_id


def test_the_cli_publishes_ingests_and_reports_lag(
    kafka: KafkaSettings, tmp_path: Path, runner: Any
) -> None:
    from crm_ledger.cli import cli

    source = tmp_path / "events.jsonl"
    batch = [tp("OrderPlaced", f"C{i}", order_id=f"O{i}") for i in range(25)]
    source.write_text("".join(json.dumps(to_json(e)) + "\n" for e in batch))
    env = kafka_env(kafka)
    base = ["--data-dir", str(tmp_path), "--format", "json"]
    assert runner.invoke(cli, [*base, "init"], env=env).exit_code == 0

    published = runner.invoke(cli, [*base, "publish", str(source)], env=env)
    assert published.exit_code == 0, published.output
    assert len(json.loads(published.stdout)) == 25
    before = json.loads(runner.invoke(cli, [*base, "lag"], env=env).stdout)
    assert sum(r["lag"] for r in before) == 25
    ran = runner.invoke(cli, [*base, "ingest", "--until-caught-up"], env=env)
    assert json.loads(ran.stdout)["recorded"] == 25, ran.output
    after = json.loads(runner.invoke(cli, [*base, "lag"], env=env).stdout)
    assert sum(r["lag"] for r in after) == 0
    assert json.loads(runner.invoke(cli, [*base, "dlq", "list"], env=env).stdout) == []

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({**to_json(batch[0]), "currency": 978}) + "\n")
    refused = runner.invoke(cli, [*base, "publish", str(bad)], env=env)
    assert refused.exit_code == 1
    assert "bad.jsonl, line 1: OrderPlaced.currency: must be a string" in refused.stderr
    huge = tmp_path / "huge.jsonl"
    huge.write_text(json.dumps({**to_json(batch[0]), "order_id": "O" * 600_000}) + "\n")
    refused = runner.invoke(cli, [*base, "publish", str(huge)], env=env)
    assert refused.exit_code == 1
    assert refused.stderr.count("\n") == 1, refused.stderr
    assert "huge.jsonl, line 1: OrderPlaced.record: is 600,0" in refused.stderr
    assert "over the 524,288-byte limit of a message" in refused.stderr


def test_commands_without_a_cluster_say_how_to_get_one(tmp_path: Path) -> None:
    # A subprocess: kafka-python leaves the sockets of a failed bootstrap to the collector.
    init_ledger(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    missing = subprocess.run(
        [str(CLI), "--data-dir", str(tmp_path), "lag"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert missing.returncode == 1
    assert missing.stderr.startswith("crm-ledger: error: no Kafka cluster configured")
    unreachable = subprocess.run(
        [str(CLI), "--data-dir", str(tmp_path), "--bootstrap-servers", "127.0.0.1:9", "lag"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert unreachable.returncode == 1
    assert "crm-ledger: error: cannot reach Kafka at 127.0.0.1:9" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr
