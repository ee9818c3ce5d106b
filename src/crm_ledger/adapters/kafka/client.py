"""Kafka clients and topics: settings, connecting, creating the touchpoint and dead-letter
topics (the dead-letter one large enough for any message plus its headers), and reading header
names that are not UTF-8."""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from kafka.errors import (
    AuthorizationError,
    KafkaError,
    KafkaTimeoutError,
    TopicAlreadyExistsError,
    TopicAuthorizationFailedError,
)
from kafka.record.default_records import DefaultRecordBatch

from crm_ledger.errors import AccessDenied, KafkaUnavailable
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence


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
#: How long closing a client may take, even with the broker away.
CLOSE_TIMEOUT_MS = 2_000


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

# kafka-python warns on every SASL_PLAINTEXT connection that credentials go "in the clear";
# with SCRAM they never do (a salted challenge and proof), so the warning is only noise in
# the worker's log. PLAIN keeps its warning.
logging.getLogger("kafka.net.sasl.scram").setLevel(logging.ERROR)


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
    #: The principal this process authenticates as (SASL), if any.
    user: str | None = None
    #: kafka-python's security settings (security_protocol, sasl_*, ssl_cafile).
    security: tuple[tuple[str, str], ...] = ()

    @property
    def principal(self) -> str:
        """Who the broker sees: the SASL user, or ANONYMOUS."""
        return f"User:{self.user}" if self.user else "User:ANONYMOUS"


def security_config(
    *, user: str | None, password: str | None, mechanism: str, ca_file: str | None
) -> tuple[tuple[str, str], ...]:
    """kafka-python's settings for SASL (SCRAM or PLAIN), over TLS when ``ca_file`` is given."""
    config: dict[str, str] = {}
    if ca_file:
        config |= {"security_protocol": "SSL", "ssl_cafile": ca_file}
    if user:
        protocol = "SASL_SSL" if ca_file else "SASL_PLAINTEXT"
        config |= {
            "security_protocol": protocol,
            "sasl_mechanism": mechanism,
            "sasl_plain_username": user,
            "sasl_plain_password": password or "",
        }
    return tuple(sorted(config.items()))


def refused(settings: KafkaSettings, error: BaseException, doing: str) -> AccessDenied | None:
    """``error`` as one line naming the principal, if the cluster refused it."""
    if isinstance(error, AuthorizationError):
        reason = type(error).__name__.removesuffix("Error")
        return AccessDenied(
            f"Kafka refused {settings.principal} {doing}: {reason} (see `crm-ledger kafka "
            "acls --help` for what each principal may do)"
        )
    return None


def connect(client: Callable[..., T], settings: KafkaSettings, **config: Any) -> T:
    """A kafka-python client, or KafkaUnavailable saying why there is none."""
    bootstrap = settings.bootstrap
    try:
        return client(
            bootstrap_servers=bootstrap,
            bootstrap_timeout_ms=10_000,
            **dict(settings.security),
            **config,
        )
    except KafkaTimeoutError as e:
        if settings.user:
            msg = (
                f"cannot reach Kafka at {bootstrap} as {settings.principal}: no broker answered, "
                "or it refused the user's password or SASL mechanism"
            )
            raise AccessDenied(msg) from None
        raise KafkaUnavailable(f"cannot reach Kafka at {bootstrap}: {e}") from None
    except KafkaError as e:
        raise KafkaUnavailable(f"cannot reach Kafka at {bootstrap}: {e}") from None


def new_consumer(settings: KafkaSettings, **config: Any) -> KafkaConsumer:
    return connect(KafkaConsumer, settings, metrics_enabled=False, **config)


def new_producer(settings: KafkaSettings, **config: Any) -> KafkaProducer:
    return connect(
        KafkaProducer,
        settings,
        acks="all",
        enable_idempotence=True,
        allow_auto_create_topics=False,
        metrics_enabled=False,
        **config,
    )


def open_worker_clients(
    settings: KafkaSettings, max_batch: int, send_timeout_s: float
) -> tuple[KafkaConsumer, KafkaProducer]:
    """An ingest worker's consumer (in its group, its topic's partitions known) and dead-letter
    producer, after making sure of the topics; what was opened is closed again if starting
    fails (a worker that never started leaves no connection behind)."""
    dlq_bytes = ensure_topics(settings)
    with contextlib.ExitStack() as opened:
        consumer = new_consumer(
            settings,
            group_id=settings.group,
            enable_auto_commit=False,
            # Never reset silently: every position comes from the ledger (or the beginning),
            # so one out of range means the topic lost messages or was re-created.
            auto_offset_reset="none",
            max_poll_records=max_batch,
            # Bounded prefetch: fetched records wait in memory as Python objects, so large
            # fetches made a worker's memory grow with the topic instead of staying flat.
            fetch_max_bytes=8 * 1024 * 1024,
            max_partition_fetch_bytes=1024 * 1024,
            session_timeout_ms=settings.session_timeout_ms,
            heartbeat_interval_ms=settings.heartbeat_interval_ms,
        )
        opened.callback(consumer.close, autocommit=False, timeout_ms=CLOSE_TIMEOUT_MS)
        # A send never blocks for long (a stop must come within seconds): what is not sent
        # stays in the outbox.
        producer = new_producer(
            settings, max_request_size=dlq_bytes, max_block_ms=int(send_timeout_s * 1000)
        )
        opened.callback(producer.close, timeout=CLOSE_TIMEOUT_MS / 1000)
        wait_for_partitions(consumer, settings.topic)
        opened.pop_all()  # started: the worker closes them
    return consumer, producer


def ensure_topics(settings: KafkaSettings, needed: Sequence[str] | None = None) -> int:
    """Create the touchpoint and dead-letter topics if missing, with bounded retention, and
    let the dead-letter topic take the largest message the touchpoint topic takes plus the
    dead-letter headers. Returns the dead-letter topic's largest message, in bytes.

    A principal that may not manage topics (a service, the ingest worker under `kafka acls`)
    needs only that the topics it uses (``needed``; both by default) exist for it."""
    config = {"retention.ms": str(settings.retention_days * DAY_MS)}
    admin = connect(KafkaAdminClient, settings, request_timeout_ms=30_000)
    try:
        if _create(admin, settings.topic, settings.partitions, config):
            # Until the new topic is served its configs read as none, which would pass for
            # a refusal to describe them (seen right after a topic was re-created).
            _wait_until_led(admin, [settings.topic])
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
    except AuthorizationError:
        names = list(needed or (settings.topic, settings.dlq_topic))
        _check_visible(admin, settings, names)
        dlq_max = BROKER_MAX_MESSAGE_BYTES + HEADER_ROOM
    except KafkaError as e:
        raise KafkaUnavailable(f"cannot set up the topics at {settings.bootstrap}: {e}") from None
    finally:
        admin.close()
    return dlq_max


def _check_visible(admin: Any, settings: KafkaSettings, names: Sequence[str]) -> None:
    """Raise AccessDenied unless every topic of ``names`` exists for this principal."""
    try:
        visible = set(admin.list_topics())
    except KafkaError as e:
        raise KafkaUnavailable(f"cannot list topics at {settings.bootstrap}: {e}") from None
    missing = [name for name in names if name not in visible]
    if missing:
        msg = (
            f"Kafka refused {settings.principal} to create topics, and "
            f"{', '.join(missing)} does not exist or is not granted to it: an administrator "
            "creates the topics and grants access with `crm-ledger kafka acls`"
        )
        raise AccessDenied(msg)
    _wait_until_led(admin, list(names))


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
    if not any(by_name.get(topic) for by_name in described.values()):
        # Every topic has configs: none means the principal may not describe them.
        raise TopicAuthorizationFailedError
    for by_name in described.values():
        entry = by_name.get(topic, {}).get("max.message.bytes")
        if entry and entry.get("value"):
            return int(entry["value"])
    return BROKER_MAX_MESSAGE_BYTES
