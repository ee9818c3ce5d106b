"""Kafka transport: the Publisher, the exactly-once ingest worker, the dead-letter topic and lag.
The only importer of kafka-python.

Exactly once: the ingest worker stores each batch's events together with the (topic,
partition, next offset) positions in one ledger transaction, and on every (re)assignment seeks
to the ledger's stored positions, not to Kafka's committed offsets (those are committed after
the transaction only so that lag tools see progress). A crash at any instant therefore neither
loses nor duplicates an event; event_id dedup is a second line of defence.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from kafka.admin import NewTopic
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.structs import OffsetAndMetadata, TopicPartition

from crm_ledger.aggregates import check_touchpoint
from crm_ledger.application import Position
from crm_ledger.errors import CrmLedgerError, InvalidEventInBatch, InvalidInput, StoreUnavailable
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from uuid import UUID

    from crm_ledger.adapters.avro import Codec
    from crm_ledger.aggregates import Touchpoint
    from crm_ledger.application import Ledger

log = logging.getLogger("crm_ledger.ingest")

TOPIC = "crm.touchpoints"
DLQ_TOPIC = "crm.touchpoints.dlq"
GROUP = "crm-ledger-ingest"
REDRIVE_SOURCE_PREFIX = "redrive:"
T = TypeVar("T")
DAY_MS = 86_400_000
DELIVERY_TIMEOUT_S = 120


class KafkaUnavailable(StoreUnavailable):
    """The Kafka cluster cannot be reached, or refused a request."""


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    """Where and how the ledger talks to Kafka."""

    bootstrap: str
    topic: str = TOPIC
    dlq_topic: str = DLQ_TOPIC
    group: str = GROUP
    partitions: int = 6
    retention_days: int = 7


def _connect(client: Callable[..., T], bootstrap: str, **config: Any) -> T:
    """A kafka-python client, or KafkaUnavailable saying why there is none."""
    try:
        return client(bootstrap_servers=bootstrap, bootstrap_timeout_ms=10_000, **config)
    except KafkaError as e:
        raise KafkaUnavailable(f"cannot reach Kafka at {bootstrap}: {e}") from None


def _consumer(bootstrap: str, **config: Any) -> KafkaConsumer:
    return _connect(KafkaConsumer, bootstrap, metrics_enabled=False, **config)


def _producer(bootstrap: str, **config: Any) -> KafkaProducer:
    return _connect(
        KafkaProducer,
        bootstrap,
        acks="all",
        enable_idempotence=True,
        allow_auto_create_topics=False,
        metrics_enabled=False,
        **config,
    )


def ensure_topics(settings: KafkaSettings) -> None:
    """Create the touchpoint and dead-letter topics if missing, with bounded retention."""
    config = {"retention.ms": str(settings.retention_days * DAY_MS)}
    admin = _connect(KafkaAdminClient, settings.bootstrap, request_timeout_ms=30_000)
    try:
        existing = set(admin.list_topics())
        wanted = [
            NewTopic(name, settings.partitions, 1, topic_configs=config)
            for name in (settings.topic, settings.dlq_topic)
            if name not in existing
        ]
        if wanted:
            # Another process may create it between our look and our request.
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(wanted)
    finally:
        admin.close()


# Publishing.


class PublishResult(NamedTuple):
    """Where one event landed, or why it did not."""

    event_id: UUID
    customer_id: str
    partition: int | None
    offset: int | None
    error: str | None = None


class Publisher:
    """Publishes touchpoints to Kafka: validated, Avro in the Confluent wire format, keyed by
    customer id (murmur2 partitioning, as the Java client), idempotent with acks=all."""

    def __init__(
        self,
        settings: KafkaSettings,
        codec: Codec,
        *,
        linger_ms: int = 20,
        batch_bytes: int = 512 * 1024,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.settings = settings
        self.codec = codec
        self._clock = clock or (lambda: datetime.now(UTC))
        ensure_topics(settings)
        self._producer = _producer(
            settings.bootstrap,
            linger_ms=linger_ms,
            batch_size=batch_bytes,
            max_in_flight_requests_per_connection=5,
        )

    def encode(self, tp: Touchpoint) -> bytes:
        """The wire bytes of ``tp``, after the same checks the ledger applies."""
        check_touchpoint(tp, now=self._clock())
        return self.codec.encode(tp)

    def send(self, tp: Touchpoint) -> Any:
        """Send one event without waiting; returns kafka-python's future."""
        return self._send(tp, self.encode(tp))

    def _send(self, tp: Touchpoint, value: bytes) -> Any:
        return self._producer.send(self.settings.topic, key=tp.customer_id.encode(), value=value)

    def publish(self, tp: Touchpoint) -> PublishResult:
        """Send one event and wait for the broker; raises KafkaUnavailable if it failed."""
        result = self._wait(tp, self.send(tp))
        if result.error:
            raise KafkaUnavailable(f"event {tp.event_id} was not delivered: {result.error}")
        return result

    def publish_many(self, touchpoints: Sequence[Touchpoint]) -> list[PublishResult]:
        """Validate and encode every event, then send them all (batched) and wait.

        All or nothing on bad input: an invalid event raises before anything is sent. One
        result per event, in order; a delivery failure is reported in its result.
        """
        values = []
        for index, tp in enumerate(touchpoints):
            try:
                values.append(self.encode(tp))
            except InvalidInput as e:
                raise InvalidEventInBatch(index, e) from None
        pending = [self._send(tp, value) for tp, value in zip(touchpoints, values, strict=True)]
        self._producer.flush(timeout=DELIVERY_TIMEOUT_S)
        results = []
        for tp, future in zip(touchpoints, pending, strict=True):
            if future.is_done and future.succeeded():  # the common case, without get()'s work
                meta = future.value
                results.append(
                    PublishResult(tp.event_id, tp.customer_id, meta.partition, meta.offset)
                )
            else:
                results.append(self._wait(tp, future))
        return results

    def _wait(self, tp: Touchpoint, future: Any) -> PublishResult:
        try:
            meta = future.get(timeout=DELIVERY_TIMEOUT_S)
        except KafkaError as e:
            return PublishResult(tp.event_id, tp.customer_id, None, None, repr(e))
        return PublishResult(tp.event_id, tp.customer_id, meta.partition, meta.offset)

    def flush(self) -> None:
        """Wait until everything sent so far is acknowledged."""
        self._producer.flush()

    def close(self) -> None:
        """Flush and close the producer."""
        self._producer.close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# Ingesting.


@dataclass(slots=True)
class IngestStats:
    """What one ingest run did."""

    consumed: int = 0
    recorded: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    batches: int = 0
    started: float = field(default_factory=time.monotonic)
    assigned: list[int] = field(default_factory=list)

    @property
    def rate(self) -> float:
        """Messages a second since the start."""
        return self.consumed / max(time.monotonic() - self.started, 1e-9)


@dataclass(frozen=True, slots=True)
class _Bad:
    record: Any
    error: Exception


class _SeekToLedger(ConsumerRebalanceListener):  # type: ignore[misc]
    """On every assignment, continue from the ledger's stored positions."""

    def __init__(self, worker: IngestWorker) -> None:
        self.worker = worker

    def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        # Nothing is in flight: batches are stored before the next poll, where this runs.
        log.info("partitions revoked", extra={"partitions": sorted(p.partition for p in revoked)})

    def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        self.worker.seek_to_ledger(assigned)


class IngestWorker:
    """Consumes the touchpoint topic into the ledger, exactly once; dead-letters bad messages."""

    def __init__(
        self,
        ledger: Ledger,
        codec: Codec,
        settings: KafkaSettings,
        *,
        max_batch: int = 5000,
        poll_timeout_ms: int = 500,
        on_batch: Callable[[IngestStats], None] | None = None,
        on_assign: Callable[[list[int]], None] | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.ledger = ledger
        self.codec = codec
        self.settings = settings
        self.max_batch = max_batch
        self.poll_timeout_ms = poll_timeout_ms
        self.on_batch = on_batch
        self.on_assign = on_assign
        self._clock = clock or (lambda: datetime.now(UTC))
        self._stopping = False
        self.stats = IngestStats()
        ensure_topics(settings)
        self._consumer = _consumer(
            settings.bootstrap,
            group_id=settings.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=max_batch,
            # Bounded prefetch: fetched records wait in memory as Python objects, so large
            # fetches made a worker's memory grow with the topic instead of staying flat.
            fetch_max_bytes=8 * 1024 * 1024,
            max_partition_fetch_bytes=1024 * 1024,
        )
        self._dlq = _producer(settings.bootstrap, max_request_size=4 * 1024 * 1024)
        self._consumer.subscribe([settings.topic], listener=_SeekToLedger(self))

    def stop(self) -> None:
        """Finish the batch in hand, then return from ``run`` (safe from a signal handler)."""
        self._stopping = True

    def seek_to_ledger(self, assigned: Sequence[TopicPartition]) -> None:
        """Position each assigned partition at the ledger's stored next offset."""
        stored = self.ledger.ledger_recorder.positions(self.settings.topic)
        for tp in assigned:
            if tp.partition in stored:
                self._consumer.seek(tp, stored[tp.partition])
            else:
                self._consumer.seek_to_beginning(tp)
        self.stats.assigned = sorted(tp.partition for tp in assigned)
        if self.on_assign:
            self.on_assign(self.stats.assigned)
        log.info(
            "partitions assigned",
            extra={"partitions": self.stats.assigned, "positions": stored},
        )

    def run(self, *, max_events: int | None = None, until_idle: float | None = None) -> IngestStats:
        """Ingest until stopped, until ``max_events`` messages, or ``until_idle`` seconds idle."""
        idle_since = time.monotonic()
        try:
            while not self._stopping:
                limit = self.max_batch
                if max_events is not None:
                    limit = min(limit, max_events - self.stats.consumed)
                    if limit <= 0:
                        break
                try:
                    polled = self._consumer.poll(timeout_ms=self.poll_timeout_ms, max_records=limit)
                except KafkaError as e:
                    # The broker is away (restart, network): nothing was taken, so wait and
                    # poll again; the client reconnects. An outage is not idleness.
                    log.warning("poll failed; retrying", extra={"error": repr(e)})
                    time.sleep(1)
                    idle_since = time.monotonic()
                    continue
                records = [r for batch in polled.values() for r in batch]
                if not records:
                    if not self._consumer.assignment():
                        # Waiting to join the group (say, for a crashed member's session to
                        # time out) is not being idle.
                        idle_since = time.monotonic()
                    elif until_idle is not None and time.monotonic() - idle_since >= until_idle:
                        break
                    continue
                self._ingest(records)
                idle_since = time.monotonic()
        finally:
            self.close()
        return self.stats

    def _ingest(self, records: list[Any]) -> None:
        good: list[tuple[Any, Touchpoint]] = []
        bad: list[_Bad] = []
        for record in records:
            try:
                tp = self.codec.decode(record.value)
                self.ledger.check(tp)
            except InvalidInput as e:
                bad.append(_Bad(record, e))
                continue
            good.append((record, tp))
        # Dead letters first: once the positions below are stored, these are never read again.
        self._dead_letter(bad)
        positions = self._positions(records)
        result = self.ledger.record_many([tp for _, tp in good], positions)
        # Valid events a domain rule refused also go to the DLQ, so nothing is silently lost.
        self._dead_letter([_Bad(good[r.index][0], r.error) for r in result.rejected])
        self._commit(positions)
        self.stats.consumed += len(records)
        self.stats.recorded += result.recorded
        self.stats.duplicates += result.duplicates
        self.stats.dead_lettered += len(bad) + len(result.rejected)
        self.stats.batches += 1
        if self.on_batch:
            self.on_batch(self.stats)

    def _positions(self, records: list[Any]) -> list[Position]:
        last: dict[int, int] = {}
        for r in records:
            last[r.partition] = max(last.get(r.partition, -1), r.offset)
        return [Position(self.settings.topic, p, o + 1) for p, o in sorted(last.items())]

    def _dead_letter(self, bad: list[_Bad]) -> None:
        if not bad:
            return
        at = self._clock().isoformat()
        futures = [
            self._dlq.send(
                self.settings.dlq_topic,
                key=b.record.key,
                value=b.record.value,
                headers=dead_letter_headers(b.record, b.error, at),
            )
            for b in bad
        ]
        self._dlq.flush()
        for future in futures:
            future.get(timeout=60)  # raises: better to stop than to skip a message unrecorded
        for b in bad:
            log.warning(
                "dead-lettered",
                extra={
                    "partition": b.record.partition,
                    "offset": b.record.offset,
                    "error": f"{type(b.error).__name__}: {b.error}",
                },
            )

    def _commit(self, positions: list[Position]) -> None:
        offsets = {
            TopicPartition(self.settings.topic, p.partition): OffsetAndMetadata(
                p.next_offset, "", -1
            )
            for p in positions
        }
        try:
            self._consumer.commit(offsets)
        except KafkaError as e:  # only lag tools read these; the ledger's positions are the truth
            log.warning("offset commit failed", extra={"error": repr(e)})

    def close(self) -> None:
        """Leave the group and close the clients (a broker that is away cannot stop this)."""
        for client in (self._consumer, self._dlq):
            try:
                client.close()
            except KafkaError as e:
                log.warning("closing a Kafka client failed", extra={"error": repr(e)})


def dead_letter_headers(record: Any, error: Exception, at: str) -> list[tuple[str, bytes]]:
    """Headers saying why a message was dead-lettered and where it came from."""
    return [
        ("error.class", type(error).__name__.encode()),
        ("error.message", str(error).encode()[:4000]),
        ("source.topic", record.topic.encode()),
        ("source.partition", str(record.partition).encode()),
        ("source.offset", str(record.offset).encode()),
        ("dlq.time", at.encode()),
    ]


# Dead-letter inspection and redrive, lag.


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One message in the dead-letter topic."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, str]


def read_topic(bootstrap: str, topic: str, start: dict[int, int] | None = None) -> list[Any]:
    """Every record of ``topic`` from ``start`` (partition -> offset) to its current end."""
    consumer = _consumer(bootstrap, enable_auto_commit=False, group_id=None)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        if not partitions:
            return []
        consumer.assign(partitions)
        ends = consumer.end_offsets(partitions)
        for tp in partitions:
            consumer.seek(tp, (start or {}).get(tp.partition, 0))
        records: list[Any] = []
        while any(consumer.position(tp) < ends[tp] for tp in partitions):
            for batch in consumer.poll(timeout_ms=1000).values():
                records.extend(
                    r for r in batch if r.offset < ends[TopicPartition(topic, r.partition)]
                )
        return sorted(records, key=lambda r: (r.partition, r.offset))
    finally:
        consumer.close()


def dead_letters(settings: KafkaSettings, start: dict[int, int] | None = None) -> list[DeadLetter]:
    """The dead-letter topic's messages (from ``start``)."""
    return [
        DeadLetter(
            r.partition,
            r.offset,
            r.key,
            r.value,
            {k: v.decode(errors="replace") for k, v in r.headers},
        )
        for r in read_topic(settings.bootstrap, settings.dlq_topic, start)
    ]


def redrive(settings: KafkaSettings, ledger: Ledger) -> list[DeadLetter]:
    """Re-publish dead letters not redriven before to their source topic (after a fix).

    How far redrive has gone is kept in the ledger's positions, so each message is redriven
    once; one that fails again lands in the DLQ anew.
    """
    source = f"{REDRIVE_SOURCE_PREFIX}{settings.dlq_topic}"
    done = ledger.ledger_recorder.positions(source)
    letters = dead_letters(settings, done)
    if not letters:
        return []
    producer = _producer(settings.bootstrap, max_request_size=4 * 1024 * 1024)
    try:
        futures = [
            producer.send(
                letter.headers.get("source.topic", settings.topic),
                key=letter.key,
                value=letter.value,
                headers=[("redriven.from", f"{letter.partition}/{letter.offset}".encode())],
            )
            for letter in letters
        ]
        producer.flush()
        for future in futures:
            future.get(timeout=60)
    finally:
        producer.close()
    last: dict[int, int] = {}
    for letter in letters:
        last[letter.partition] = max(last.get(letter.partition, -1), letter.offset)
    ledger.record_many([], [Position(source, p, o + 1) for p, o in last.items()])
    return letters


@dataclass(frozen=True, slots=True)
class Lag:
    """One partition's ledger position against the topic's end."""

    partition: int
    ledger_position: int
    end_offset: int

    @property
    def lag(self) -> int:
        """Messages in the topic the ledger has not taken yet."""
        return self.end_offset - self.ledger_position


def lag(settings: KafkaSettings, ledger: Ledger) -> list[Lag]:
    """Per partition: the ledger's stored position against the topic's end offset."""
    consumer = _consumer(settings.bootstrap, group_id=None)
    try:
        partitions = [
            TopicPartition(settings.topic, p)
            for p in sorted(consumer.partitions_for_topic(settings.topic) or ())
        ]
        if not partitions:
            raise CrmLedgerError(f"topic {settings.topic} does not exist")
        ends = consumer.end_offsets(partitions)
        begins = consumer.beginning_offsets(partitions)
    finally:
        consumer.close()
    stored = ledger.ledger_recorder.positions(settings.topic)
    return [Lag(tp.partition, stored.get(tp.partition, begins[tp]), ends[tp]) for tp in partitions]
