"""The ledger's mapper: touchpoint events as compact JSON with personal fields sealed, sealed
snapshots, and the log records projections read.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta
from functools import cache, lru_cache
from typing import TYPE_CHECKING, Any, cast
from uuid import UUID

import orjson
from eventsourcing.domain import Snapshot
from eventsourcing.persistence import Mapper, StoredEvent
from eventsourcing.utils import TopicError, get_topic, resolve_topic

from crm_ledger.aggregates import PERSONAL_FIELDS, Customer, customer_uuid
from crm_ledger.aggregates.envelope import Touched, own_fields
from crm_ledger.application import LogRecord
from crm_ledger.errors import UntrustedSnapshot

if TYPE_CHECKING:
    from eventsourcing.domain import DomainEventProtocol

    from crm_ledger.adapters.crypto import DataKeys


#: SQLite page cache per connection, in KiB (eventsourcing's pool may open several).


class LedgerMapper(Mapper[UUID]):
    """Stores touchpoint events as compact JSON (orjson), restoring their typed fields.

    eventsourcing's JSON transcoder tags every UUID and datetime and encodes through a Python
    hook, which dominated the write path. Touchpoint events have exactly three typed envelope
    fields, so they are written plainly and typed again on reading. Every other event
    (aggregate creation, snapshots) keeps eventsourcing's own format, and touchpoint events in
    that format are read too.
    """

    #: Set by the Ledger to its recorder's data keys; personal fields are sealed with them.
    data_keys: DataKeys | None = None
    #: Set by the Ledger: the secret (kept outside the database) that seals snapshots.
    snapshot_key: bytes | None = None

    def to_stored_event(self, domain_event: DomainEventProtocol[UUID]) -> StoredEvent:
        """The stored form of ``domain_event``, its personal fields sealed."""
        if not isinstance(domain_event, Touched):
            if isinstance(domain_event, Snapshot):
                if _is_customer(domain_event.topic):
                    domain_event = self._sealed_snapshot(domain_event)
                return self._with_seal(super().to_stored_event(domain_event))
            return super().to_stored_event(domain_event)
        state = dict(vars(domain_event))
        personal = PERSONAL_FIELDS.get(type(domain_event).__name__)
        if personal and self.data_keys is not None:
            stream = _sealing_stream(state, domain_event.originator_id)
            # Version 2 follows only the stream's opening, which has no personal data (an
            # event routed here is sealed with its sender's key, which may well exist).
            fresh = (
                domain_event.originator_version == 2 and stream == domain_event.originator_id.bytes
            )
            for name in personal:
                if state[name] is not None:
                    state[name] = self.data_keys.seal(stream, name, state[name], fresh=fresh)
        originator_id = state.pop("originator_id")
        originator_version = state.pop("originator_version")
        class_version = getattr(type(domain_event), "class_version", 1)
        if class_version > 1:
            state["class_version"] = class_version
        return StoredEvent(
            originator_id=originator_id,
            originator_version=originator_version,
            topic=_topic(type(domain_event)),
            # A copy of orjson's output at its own size: orjson's bytes keep the 4 to 8 KB
            # buffer they were written in, and a batch's events are all held until it is
            # stored (37 MB for 5,000 events against 2 MB).
            state=memoryview(orjson.dumps(state)).tobytes(),
        )

    def to_domain_event(self, stored_event: StoredEvent) -> DomainEventProtocol[UUID]:
        """The domain event of ``stored_event``."""
        cls = resolve_topic(stored_event.topic)
        if isinstance(cls, type) and issubclass(cls, Snapshot):
            stored_event = self._unsealed(stored_event)
        if not (isinstance(cls, type) and issubclass(cls, Touched)):
            found = super().to_domain_event(stored_event)
            if isinstance(found, Snapshot) and _is_customer(found.topic):
                return cast("DomainEventProtocol[UUID]", self._opened_snapshot(found))
            return found
        state = orjson.loads(stored_event.state)
        personal = PERSONAL_FIELDS.get(cls.__name__)
        if personal and self.data_keys is not None:
            stream = _sealing_stream(state, stored_event.originator_id)
            for name in personal:
                state[name] = self.data_keys.open(stream, name, state.get(name))
        for name, convert in _TYPED_FIELDS.items():
            state[name] = _typed(state[name], convert)
        state["originator_id"] = _as_uuid(stored_event.originator_id)
        state["originator_version"] = stored_event.originator_version
        from_version = state.pop("class_version", 1)
        while from_version < getattr(cls, "class_version", 1):
            getattr(cls, f"upcast_v{from_version}_v{from_version + 1}")(state)
            from_version += 1
        event = object.__new__(cls)
        object.__setattr__(event, "__dict__", state)
        return cast("DomainEventProtocol[UUID]", event)

    def _seal_of(self, stream: UUID | str, version: int, topic: str, state: bytes) -> bytes:
        if self.snapshot_key is None:
            msg = "no snapshot key: the Ledger sets one"
            raise UntrustedSnapshot(msg)
        message = b"".join(
            (_as_uuid(stream).bytes, version.to_bytes(8, "big"), topic.encode(), b"\x00", state)
        )
        return hmac.digest(self.snapshot_key, message, hashlib.sha256)

    def _with_seal(self, stored: StoredEvent) -> StoredEvent:
        """A stored snapshot with an HMAC over its stream, version, topic and state in front:
        whoever can rewrite the database's rows cannot make a snapshot the ledger trusts."""
        seal = self._seal_of(
            stored.originator_id, stored.originator_version, stored.topic, stored.state
        )
        return StoredEvent(
            stored.originator_id,
            stored.originator_version,
            stored.topic,
            SNAPSHOT_SEAL + seal + stored.state,
        )

    def snapshot_trusted(self, stream: bytes, version: int, topic: str, state: bytes) -> bool:
        """Whether a stored snapshot's seal matches its content (the auditor asks this)."""
        try:
            self._unsealed(StoredEvent(UUID(bytes=stream), version, topic, state))
        except UntrustedSnapshot:
            return False
        return True

    def _unsealed(self, stored: StoredEvent) -> StoredEvent:
        """The stored snapshot without its seal; UntrustedSnapshot if the seal is wrong."""
        state = bytes(stored.state)
        size = len(SNAPSHOT_SEAL) + 32
        if not state.startswith(SNAPSHOT_SEAL) or len(state) < size:
            msg = f"snapshot of {stored.originator_id} at {stored.originator_version} is unsealed"
            raise UntrustedSnapshot(msg)
        inner = state[size:]
        expected = self._seal_of(
            stored.originator_id, stored.originator_version, stored.topic, inner
        )
        if not hmac.compare_digest(expected, state[len(SNAPSHOT_SEAL) : size]):
            msg = f"snapshot of {stored.originator_id} at {stored.originator_version} was altered"
            raise UntrustedSnapshot(msg)
        return StoredEvent(stored.originator_id, stored.originator_version, stored.topic, inner)

    def _sealed_snapshot(self, snapshot: Any) -> Any:
        """A copy of a Customer snapshot with its personal data sealed."""
        return self._snapshot_with(snapshot, self._seal_value)

    def _opened_snapshot(self, snapshot: Any) -> Any:
        """A copy of a stored Customer snapshot with its personal data opened."""
        return self._snapshot_with(snapshot, self._open_value)

    def _snapshot_with(self, snapshot: Any, change: Any) -> Any:
        if self.data_keys is None:
            return snapshot
        stream = snapshot.originator_id.bytes
        state = dict(snapshot.state)
        state["profile"] = {
            k: change(stream, k, v) if k in PERSONAL_PROFILE and v is not None else v
            for k, v in state.get("profile", {}).items()
        }
        state["identities"] = [
            [system, change(stream, "identity", value)]
            for system, value in state.get("identities", [])
        ]
        copy = object.__new__(type(snapshot))
        object.__setattr__(copy, "__dict__", {**vars(snapshot), "state": state})
        return copy

    def _seal_value(self, stream: bytes, name: str, value: Any) -> Any:
        assert self.data_keys is not None  # checked by the caller
        return self.data_keys.seal(stream, name, value) if value is not None else None

    def _open_value(self, stream: bytes, name: str, value: Any) -> Any:
        assert self.data_keys is not None  # checked by the caller
        return self.data_keys.open(stream, name, value)

    def to_record(
        self, position: int, originator_id: UUID | str, version: int, topic: str, state: bytes
    ) -> LogRecord | None:
        """A stored event as a projection reads it: customer events only, plain values."""
        kind = _customer_kind(topic)
        if kind is None:
            return None
        stream = originator_id.hex if isinstance(originator_id, UUID) else originator_id
        if kind == OPENED:
            return self._record_of_domain_event(position, stream, version, topic, state)
        values = orjson.loads(state)
        if type(values["timestamp"]) is not str:  # eventsourcing's own (tagged) format
            return self._record_of_domain_event(position, stream, version, topic, state)
        return LogRecord(
            position,
            stream,
            version,
            kind,
            _micros_of(values.pop("timestamp")),
            _micros(datetime.fromisoformat(values.pop("occurred_at"))),
            values.pop("event_id"),
            values,
        )

    def _record_of_domain_event(
        self, position: int, stream: str, version: int, topic: str, state: bytes
    ) -> LogRecord:
        stored = StoredEvent(UUID(stream), version, topic, state)
        event = cast("Any", self.to_domain_event(stored))
        if isinstance(event, Customer.Opened):
            data = {"customer_id": event.customer_id}
            return LogRecord(
                position, stream, version, OPENED, _micros(event.timestamp), None, None, data
            )
        values = {**own_fields(event), **{n: getattr(event, n) for n in _ENVELOPE_REST}}
        return LogRecord(
            position,
            stream,
            version,
            type(event).__name__,
            _micros(event.timestamp),
            _micros(event.occurred_at),
            str(event.event_id),
            values,
        )


OPENED = "Opened"

#: Marks a sealed snapshot's stored state (an HMAC-SHA256 follows, then the state).
SNAPSHOT_SEAL = b"mac1"

#: Profile fields of the Customer aggregate that hold personal data (sealed in snapshots).
PERSONAL_PROFILE = frozenset(PERSONAL_FIELDS["CustomerRegistered"])


def _sealing_stream(state: dict[str, Any], originator_id: UUID | str) -> bytes:
    """Whose data key seals an event's personal fields: the customer it was sent for. An
    event routed to a merge survivor keeps its sender's key, so that erasing either customer
    destroys exactly the personal data that belongs to them."""
    sender = state.get("addressed_to")
    if sender:
        return customer_uuid(sender).bytes
    return _as_uuid(originator_id).bytes


def _is_customer(aggregate_topic: str) -> bool:
    return aggregate_topic.endswith(":Customer")


_ENVELOPE_REST = ("source", "actor", "correlation_id", "addressed_to")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // _MICROSECOND


@lru_cache(maxsize=64)
def _micros_of(text: str) -> int:
    """A recorded time: one per transaction, so the same text comes many times in a row."""
    return _micros(datetime.fromisoformat(text))


@cache
def _customer_kind(topic: str) -> str | None:
    """The event class name for a Customer stream's event topic; None for anything else,
    topics this version does not know included (a newer writer's), so projections skip them
    instead of stopping."""
    try:
        cls = resolve_topic(topic)
    except TopicError:
        return None
    if not (isinstance(cls, type) and cls.__qualname__.startswith("Customer.")):
        return None
    if issubclass(cls, Touched) or cls is Customer.Opened:
        return cls.__name__
    return None


def _as_uuid(value: UUID | str) -> UUID:
    return value if isinstance(value, UUID) else UUID(value)


def _typed(value: Any, convert: Any) -> Any:
    if isinstance(value, dict):  # eventsourcing's tagged form {"_type_": ..., "_data_": ...}
        value = value["_data_"]
    return convert(value)


_TYPED_FIELDS = {
    "event_id": UUID,
    "occurred_at": datetime.fromisoformat,
    "timestamp": datetime.fromisoformat,
}


@cache
def _topic(cls: type) -> str:
    return get_topic(cls)
