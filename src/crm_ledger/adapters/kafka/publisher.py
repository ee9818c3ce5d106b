"""Publishing touchpoints: validated, Avro in the Confluent wire format, keyed by customer id."""

from __future__ import annotations

import logging
from array import array
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple, overload

from kafka.errors import KafkaError
from kafka.partitioner import DefaultPartitioner, murmur2

from crm_ledger.adapters.kafka.client import (
    KafkaSettings,
    ensure_topics,
    new_producer,
    refused,
)
from crm_ledger.aggregates import check_touchpoint
from crm_ledger.errors import (
    InvalidEventInBatch,
    InvalidInput,
    KafkaUnavailable,
)

if TYPE_CHECKING:
    from collections.abc import Callable
    from uuid import UUID

    from crm_ledger.adapters.avro import Codec
    from crm_ledger.aggregates import Touchpoint


DELIVERY_TIMEOUT_S = 120
#: Keys whose partition hash a Publisher remembers (a few MB at most).
REMEMBERED_KEYS = 100_000

log = logging.getLogger("crm_ledger.ingest")

# Publishing.


class KeyPartitioner(DefaultPartitioner):  # type: ignore[misc]  # kafka-python is untyped
    """The Java client's partitioning (murmur2 of the key, modulo the partition count), with
    each key's hash remembered.

    A publisher sends many events per customer, and kafka-python's pure-Python murmur2 with
    its partition lists was a fifth of each send. The partition is the one the default
    partitioner (and every other Kafka client) picks; a record without a key goes to it.
    """

    def __init__(self, remembered: int = REMEMBERED_KEYS) -> None:
        self._hashes: dict[bytes, int] = {}
        self._remembered = remembered

    def partition(
        self,
        topic: str,
        key: Any,
        serialized_key: bytes | None,
        value: Any,
        serialized_value: bytes | None,
        cluster: Any,
    ) -> int:
        partitions = cluster.partitions_for_topic(topic)
        if serialized_key is None or not partitions:
            return int(
                super().partition(topic, key, serialized_key, value, serialized_value, cluster)
            )
        return int(self.pick(serialized_key, sorted(partitions)))

    def pick(self, key: bytes, partitions: Sequence[int]) -> int:
        """The key's partition of ``partitions`` (sorted): its murmur2 hash as the Java client
        takes it (the low 31 bits, remembered), modulo their number."""
        hashed = self._hashes.get(key)
        if hashed is None:
            if len(self._hashes) >= self._remembered:
                self._hashes.clear()
            hashed = self._hashes[key] = murmur2(key) & 0x7FFFFFFF
        return partitions[hashed % len(partitions)]


class PublishResult(NamedTuple):
    """Where one event landed, or why it did not."""

    event_id: UUID
    customer_id: str
    partition: int | None
    offset: int | None
    error: str | None = None


class PublishResults(Sequence[PublishResult]):
    """One PublishResult per event of a ``publish_many`` call, in order, kept as columns.

    Two numbers an event rather than a tuple (and a future) each: a million results held as
    objects were a million more for the collector to scan on every full collection.
    """

    def __init__(self, touchpoints: Sequence[Touchpoint]) -> None:
        self.touchpoints = touchpoints
        self._partitions = array("i")
        self._offsets = array("q")
        self._errors: dict[int, str] = {}

    def add(self, partition: int | None, offset: int | None, error: str | None = None) -> None:
        """The next event's outcome."""
        if error is not None:
            self._errors[len(self._partitions)] = error
        self._partitions.append(-1 if partition is None else partition)
        self._offsets.append(-1 if offset is None else offset)

    @property
    def failed(self) -> int:
        """How many events were not delivered."""
        return len(self._errors)

    def __len__(self) -> int:
        return len(self._partitions)

    @overload
    def __getitem__(self, index: int) -> PublishResult: ...
    @overload
    def __getitem__(self, index: slice) -> list[PublishResult]: ...
    def __getitem__(self, index: int | slice) -> PublishResult | list[PublishResult]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        partition, offset = self._partitions[index], self._offsets[index]  # IndexError past end
        tp = self.touchpoints[index % len(self)]
        return PublishResult(
            tp.event_id,
            tp.customer_id,
            None if partition < 0 else partition,
            None if offset < 0 else offset,
            self._errors.get(index % len(self)),
        )


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
        ensure_topics(settings, needed=[settings.topic])
        self._partitioner = KeyPartitioner()
        self._producer = new_producer(
            settings,
            linger_ms=linger_ms,
            batch_size=batch_bytes,
            max_in_flight_requests_per_connection=5,
            partitioner=self._partitioner,
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

    def publish_many(self, touchpoints: Sequence[Touchpoint]) -> PublishResults:
        """Validate and encode every event, then send them all (batched) and wait.

        All or nothing on bad input: an invalid event raises before anything is sent. One
        result per event, in order; a delivery failure is reported in its result.
        """
        now, encode = self._clock(), self.codec.encode
        keys, values = [], []
        for index, tp in enumerate(touchpoints):  # one pass: each event is read once here
            try:
                check_touchpoint(tp, now=now)
                values.append(encode(tp))
            except InvalidInput as e:
                raise InvalidEventInBatch(index, e) from None
            keys.append(tp.customer_id.encode())
        results = PublishResults(touchpoints)
        send, topic, pending = self._producer.send, self.settings.topic, deque[Any]()
        # Each event's partition, as the partitioner would pick it, without the producer
        # asking it per event (a sixth of each send's time).
        partitions = self._partitions(topic)
        pick = self._partitioner.pick
        for key, value in zip(keys, values, strict=True):
            pending.append(send(topic, key=key, value=value, partition=pick(key, partitions)))
            # Each future is let go once its result is taken: a million kept to the end made
            # the collector rescan them, at about a quarter of the time at 300,000 events.
            while pending and pending[0].is_done:
                self._take(results, pending.popleft())
        self._producer.flush(timeout=DELIVERY_TIMEOUT_S)
        for future in pending:
            self._take(results, future)
        return results

    def _partitions(self, topic: str) -> list[int]:
        try:
            partitions = sorted(self._producer.partitions_for(topic) or ())
        except KafkaError as e:
            msg = f"the partitions of {topic} are not known: {e}"
            raise KafkaUnavailable(msg) from None
        if not partitions:
            raise KafkaUnavailable(f"the topic {topic} has no partitions")
        return partitions

    def _take(self, results: PublishResults, future: Any) -> None:
        if future.is_done and future.succeeded():  # the common case, without get()'s work
            meta = future.value
            results.add(meta.partition, meta.offset)
            return
        index = len(results)
        outcome = self._wait(results.touchpoints[index], future)
        results.add(outcome.partition, outcome.offset, outcome.error)

    def _wait(self, tp: Touchpoint, future: Any) -> PublishResult:
        try:
            meta = future.get(timeout=DELIVERY_TIMEOUT_S)
        except KafkaError as e:
            denied = refused(self.settings, e, f"writing to {self.settings.topic}")
            if denied is not None:  # every other event would be refused the same way
                raise denied from None
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
