"""Kafka clients and topics: settings, connecting, creating the touchpoint and dead-letter
topics (the dead-letter one large enough for any message plus its headers), and reading header
names that are not UTF-8."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.record.default_records import DefaultRecordBatch

from crm_ledger.errors import (
    KafkaUnavailable,
)
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

if TYPE_CHECKING:
    from collections.abc import Callable


log = logging.getLogger("crm_ledger.ingest")

TOPIC = "crm.touchpoints"
DLQ_TOPIC = "crm.touchpoints.dlq"
GROUP = "crm-ledger-ingest"
T = TypeVar("T")
DAY_MS = 86_400_000

#: A crashed worker's partitions are taken over within this, plus a rebalance.
SESSION_TIMEOUT_MS = 10_000
HEARTBEAT_INTERVAL_MS = 3_000

#: The broker's default largest message (message.max.bytes), for a topic that sets none.
BROKER_MAX_MESSAGE_BYTES = 1_048_588
#: Room for the dead-letter headers beyond the largest message the source topic takes.
HEADER_ROOM = 64 * 1024
#: How long a new topic may take to be served before we call Kafka unavailable.
READY_TIMEOUT_S = 30.0


class _RawHeaderName(str):
    """A header name that is not UTF-8: its bytes kept as they came (``encode`` gives them
    back, as kafka-python's size accounting asks for)."""

    raw: bytes

    def __new__(cls, raw: bytes) -> _RawHeaderName:
        name = super().__new__(cls, raw.decode("utf-8", "surrogateescape"))
        name.raw = raw
        return name

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return self.raw


class _SurrogateName(bytes):
    """A header name's bytes that decode whatever they hold."""

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        try:
            return bytes.decode(self, encoding)
        except UnicodeDecodeError:
            return _RawHeaderName(bytes(self))


class _LenientBuffer(bytearray):
    """A record batch's buffer whose slices decode without failing."""

    def __getitem__(self, index: Any) -> Any:
        item = super().__getitem__(index)
        return _SurrogateName(item) if isinstance(index, slice) else item


def _lenient_header_names() -> None:
    """Let kafka-python read header names that are not UTF-8.

    Kafka's protocol calls a header name a string but brokers pass any bytes, and kafka-python
    decodes names strictly: one such message made every poll of its partition fail, so the
    worker never got past it. A batch that fails so is read again with such names kept as
    their bytes (only then: the common path is untouched).
    """
    strict = DefaultRecordBatch._read_msg
    if getattr(strict, "lenient", False):
        return

    def read_msg(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return strict(self, *args, **kwargs)
        except UnicodeDecodeError:
            self._buffer = _LenientBuffer(self._buffer)
            return strict(self, *args, **kwargs)

    read_msg.lenient = True  # type: ignore[attr-defined]
    DefaultRecordBatch._read_msg = read_msg


_lenient_header_names()


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    """Where and how the ledger talks to Kafka."""

    bootstrap: str
    topic: str = TOPIC
    dlq_topic: str = DLQ_TOPIC
    group: str = GROUP
    partitions: int = 6
    retention_days: int = 7
    session_timeout_ms: int = SESSION_TIMEOUT_MS
    heartbeat_interval_ms: int = HEARTBEAT_INTERVAL_MS
    #: Dead-letter a message whose key is not its event's customer_id.
    check_keys: bool = True


def connect(client: Callable[..., T], bootstrap: str, **config: Any) -> T:
    """A kafka-python client, or KafkaUnavailable saying why there is none."""
    try:
        return client(bootstrap_servers=bootstrap, bootstrap_timeout_ms=10_000, **config)
    except KafkaError as e:
        raise KafkaUnavailable(f"cannot reach Kafka at {bootstrap}: {e}") from None


def new_consumer(bootstrap: str, **config: Any) -> KafkaConsumer:
    return connect(KafkaConsumer, bootstrap, metrics_enabled=False, **config)


def new_producer(bootstrap: str, **config: Any) -> KafkaProducer:
    return connect(
        KafkaProducer,
        bootstrap,
        acks="all",
        enable_idempotence=True,
        allow_auto_create_topics=False,
        metrics_enabled=False,
        **config,
    )


def ensure_topics(settings: KafkaSettings) -> int:
    """Create the touchpoint and dead-letter topics if missing, with bounded retention, and
    let the dead-letter topic take the largest message the touchpoint topic takes plus the
    dead-letter headers. Returns the dead-letter topic's largest message, in bytes."""
    config = {"retention.ms": str(settings.retention_days * DAY_MS)}
    admin = connect(KafkaAdminClient, settings.bootstrap, request_timeout_ms=30_000)
    try:
        _create(admin, settings.topic, settings.partitions, config)
        source_max = max_message_bytes(admin, settings.topic)
        dlq_max = source_max + HEADER_ROOM
        dlq_config = {**config, "max.message.bytes": str(dlq_max)}
        created = _create(admin, settings.dlq_topic, settings.partitions, dlq_config)
        _wait_until_led(admin, [settings.topic, settings.dlq_topic])
        if not created and max_message_bytes(admin, settings.dlq_topic) < dlq_max:
            resource = ConfigResource(
                ConfigResourceType.TOPIC,
                settings.dlq_topic,
                configs={"max.message.bytes": str(dlq_max)},
            )
            admin.alter_configs([resource])
    except KafkaError as e:
        raise KafkaUnavailable(f"cannot set up the topics at {settings.bootstrap}: {e}") from None
    finally:
        admin.close()
    return dlq_max


def _create(admin: Any, name: str, partitions: int, config: dict[str, str]) -> bool:
    """Create topic ``name`` unless it exists; True if this call created it."""
    if name in set(admin.list_topics()):
        return False
    try:
        admin.create_topics([NewTopic(name, partitions, 1, topic_configs=config)])
    except TopicAlreadyExistsError:  # another process got there between our look and ask
        return False
    return True


def _wait_until_led(admin: Any, names: list[str], timeout_s: float = READY_TIMEOUT_S) -> None:
    """Return once every partition of ``names`` has a leader: a topic just created is not
    served at once, and a consumer that joins its group before then is assigned nothing."""
    deadline = time.monotonic() + timeout_s
    while True:
        described = admin.describe_topics(names)
        if len(described) == len(names) and all(_led(topic) for topic in described):
            return
        if time.monotonic() > deadline:
            raise KafkaUnavailable(f"topics {', '.join(names)} have no leader after {timeout_s} s")
        time.sleep(0.1)


def _led(topic: dict[str, Any]) -> bool:
    partitions = topic.get("partitions") or []
    return (
        topic.get("error_code", 0) == 0
        and bool(partitions)
        and all(p.get("leader_id", -1) >= 0 for p in partitions)
    )


def wait_for_partitions(
    consumer: KafkaConsumer, topic: str, timeout_s: float = READY_TIMEOUT_S
) -> set[int]:
    """The partitions of ``topic`` once ``consumer``'s own metadata knows them (a subscriber
    that joins its group without them is assigned nothing until the next metadata refresh,
    five minutes later by default)."""
    deadline = time.monotonic() + timeout_s
    while not (partitions := consumer.partitions_for_topic(topic)):
        if time.monotonic() > deadline:
            raise KafkaUnavailable(f"Kafka does not know topic {topic} after {timeout_s} s")
        time.sleep(0.1)
    return set(partitions)


def max_message_bytes(admin: Any, topic: str) -> int:
    """The largest message ``topic`` accepts (its own setting or the broker's default)."""
    resource = ConfigResource(ConfigResourceType.TOPIC, topic, configs={"max.message.bytes": None})
    described = admin.describe_configs([resource], config_filter="all")
    for by_name in described.values():
        entry = by_name.get(topic, {}).get("max.message.bytes")
        if entry and entry.get("value"):
            return int(entry["value"])
    return BROKER_MAX_MESSAGE_BYTES
