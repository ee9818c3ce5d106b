"""Dead-letter inspection and redrive, and lag: what operators ask of the topics."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kafka.structs import TopicPartition

from crm_ledger.adapters.kafka.client import (
    KafkaSettings,
    ensure_topics,
    new_consumer,
    new_producer,
)
from crm_ledger.application import Position
from crm_ledger.errors import AccessDenied, CrmLedgerError

if TYPE_CHECKING:
    from crm_ledger.application import Ledger


REDRIVE_SOURCE_PREFIX = "redrive:"

log = logging.getLogger("crm_ledger.ingest")

# Dead-letter inspection and redrive, lag.


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One message in the dead-letter topic."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, str]


def read_topic(
    settings: KafkaSettings, topic: str, start: dict[int, int] | None = None
) -> list[Any]:
    """Every record of ``topic`` from ``start`` (partition -> offset) to its current end."""
    consumer = new_consumer(settings, enable_auto_commit=False, group_id=None)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        if not partitions and settings.user:
            # A topic the principal may not describe looks like one that does not exist.
            msg = f"Kafka refused {settings.principal} reading {topic}: it does not exist or "
            raise AccessDenied(msg + "is not granted (see `crm-ledger kafka acls --help`)")
        if not partitions:
            return []
        consumer.assign(partitions)
        ends = consumer.end_offsets(partitions)
        for p in partitions:
            consumer.seek(p, (start or {}).get(p.partition, 0))
        records: list[Any] = []
        while any(consumer.position(p) < ends[p] for p in partitions):
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
        for r in read_topic(settings, settings.dlq_topic, start)
    ]


def redrive(settings: KafkaSettings, ledger: Ledger) -> list[DeadLetter]:
    """Re-publish dead letters not redriven before to their source topic (after a fix).

    How far redrive has gone is kept in the ledger's positions, so each message is redriven
    once; one that fails again lands in the DLQ anew.
    """
    source = f"{REDRIVE_SOURCE_PREFIX}{settings.dlq_topic}"
    done = ledger.positions(source)
    letters = dead_letters(settings, done)
    if not letters:
        return []
    producer = new_producer(settings, max_request_size=ensure_topics(settings))
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
    consumer = new_consumer(settings, group_id=None)
    try:
        ends, begins = topic_offsets(consumer, settings.topic)
    finally:
        consumer.close()
    if not ends:
        raise CrmLedgerError(f"topic {settings.topic} does not exist")
    stored = ledger.positions(settings.topic)
    return [Lag(p, stored.get(p, begins[p]), ends[p]) for p in sorted(ends)]


class KafkaTopics:
    """The operations above on one cluster's configured topics (the services' Kafka port)."""

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings

    @property
    def topic(self) -> str:
        """The touchpoint topic."""
        return self.settings.topic

    def dead_letters(self) -> list[DeadLetter]:
        """Every message in the dead-letter topic."""
        return dead_letters(self.settings)

    def redrive(self, ledger: Ledger) -> list[DeadLetter]:
        """Re-publish dead letters not redriven before."""
        return redrive(self.settings, ledger)

    def lag(self, ledger: Ledger) -> list[Lag]:
        """Per partition: stored position against the topic's end."""
        return lag(self.settings, ledger)


def topic_offsets(consumer: Any, topic: str) -> tuple[dict[int, int], dict[int, int]]:
    """Partition -> end offset, and partition -> first offset, of ``topic`` now."""
    partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
    ends = consumer.end_offsets(partitions)
    begins = consumer.beginning_offsets(partitions)
    return (
        {p.partition: ends[p] for p in partitions},
        {p.partition: begins[p] for p in partitions},
    )


def recreated_topic(topic: str, partition: int, stored: dict[int, int], end: int) -> str:
    return (
        f"the ledger has read {topic} partition {partition} up to offset {stored[partition]}, "
        f"but the topic ends at {end}: it was deleted and re-created. Run "
        f"`crm-ledger positions reset --topic {topic}` to read it from the start "
        "(events already stored are recognised by event_id)"
    )
