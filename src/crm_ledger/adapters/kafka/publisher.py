"""Publishing touchpoints: validated, Avro in the Confluent wire format, keyed by customer id."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from kafka.errors import KafkaError

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
    from collections.abc import Callable, Sequence
    from uuid import UUID

    from crm_ledger.adapters.avro import Codec
    from crm_ledger.aggregates import Touchpoint


DELIVERY_TIMEOUT_S = 120

log = logging.getLogger("crm_ledger.ingest")

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
        ensure_topics(settings, needed=[settings.topic])
        self._producer = new_producer(
            settings,
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
