"""The plain values the Ledger takes and gives (receipts, positions, outbox letters, log
records, views, batch results) and the ports it needs of its recorder."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from datetime import datetime
    from uuid import UUID

    from crm_ledger.errors import (
        CrmLedgerError,
    )


class Receipt(NamedTuple):
    """Proof that an event_id was stored, and in which stream at which version."""

    event_id: UUID
    originator_id: UUID
    originator_version: int


class Position(NamedTuple):
    """The next offset to read from one partition of an external source (e.g. a Kafka topic)."""

    source: str
    partition: int
    next_offset: int


class OutboxLetter(NamedTuple):
    """A message the ledger could not take, kept until it is sent to the dead-letter topic.

    Written in the same transaction as the batch it came with (an outbox), so a crash
    between the ledger's commit and the send loses no refusal.
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    error_class: str
    error_message: str
    at: str


@dataclass(frozen=True, slots=True)
class BatchRecords:
    """What a batch writes beside its events, in the same transaction.

    eventsourcing hands a ``ProcessingEvent``'s ``saved_kwargs`` to the recorder's
    ``insert_events(stored_events, **kwargs)``; the ledger passes exactly one, ``records``,
    holding this value, and each recorder reads it with ``batch_records(kwargs)``.
    """

    receipts: Sequence[Receipt] = ()
    positions: Sequence[Position] = ()
    dead_letters: Sequence[OutboxLetter] = ()
    #: Snapshots of the batch's aggregates as they stand after it (stored with it).
    snapshots: Sequence[Any] = ()
    #: False: the recorder may commit the batch in the background (see Ledger.record_many).
    wait: bool = True


#: The one keyword argument the ledger gives the recorder's insert_events.
RECORDS_KWARG = "records"


def batch_records(kwargs: Mapping[str, Any]) -> BatchRecords:
    """The batch's records from the recorder's keyword arguments (none for a plain save)."""
    records = kwargs.get(RECORDS_KWARG)
    return records if isinstance(records, BatchRecords) else BatchRecords()


class StoredCopy(NamedTuple):
    """An event_id's stored event, as the receipts find it."""

    event_id: UUID
    originator_id: UUID
    originator_version: int
    topic: str
    state: bytes


class LogRecord(NamedTuple):
    """One stored customer event as projections read it: plain values, no domain objects.

    Times are whole microseconds since 1970-01-01 UTC. ``occurred`` is None for the ledger's
    own bookkeeping (a stream being opened), which has no business time. ``data`` holds the
    event type's own fields and the envelope's source, actor, correlation_id and addressed_to.
    """

    position: int
    stream: str
    version: int
    kind: str
    recorded: int
    occurred: int | None
    event_id: str | None
    data: dict[str, Any]


class LogPage(NamedTuple):
    """Records read from the notification log, and the last position the read covered."""

    records: list[LogRecord]
    last: int


class LogMapper(Protocol):
    """Turns stored events into log records (the event store adapter's mapper does this)."""

    def to_record(
        self, position: int, originator_id: UUID | str, version: int, topic: str, state: bytes
    ) -> LogRecord | None:
        """The record of a stored event, or None for events projections never read."""


class KeyWrapping(Protocol):
    """Key-encryption keys kept outside the database (the crypto adapter's Keyring)."""

    def rotate(self) -> int:
        """Make a new current KEK; its number."""
        ...

    def retire(self) -> None:
        """Destroy every KEK but the current one."""


class LedgerRecorder(Protocol):
    """What the ledger needs of its recorder beyond eventsourcing's ApplicationRecorder."""

    def receipted_events(self, event_ids: Sequence[UUID]) -> list[StoredCopy]:
        """The stored events of those of ``event_ids`` already stored."""
        ...

    def prepare_keys(self, stream_ids: Sequence[UUID]) -> None:
        """Load the data keys of a batch's streams with one look-up (before sealing)."""

    def limit_streams(self, streams: int) -> None:
        """Keep what the recorder remembers per stream (keys, chain heads) for at most about
        ``streams`` streams."""

    def close(self) -> None:
        """Stop what the recorder runs in the background."""

    def flush(self) -> None:
        """Wait until every batch sent to be committed in the background is stored."""

    @property
    def batches_in_flight(self) -> int:
        """Batches sent to be committed in the background whose outcome is not known yet."""
        ...

    @property
    def batches_sent(self) -> int:
        """Batches sent to be committed in the background so far (a count that only grows;
        the ones in flight are always the newest sent)."""
        ...

    def pending_dead_letters(self, limit: int) -> list[tuple[int, OutboxLetter]]:
        """Up to ``limit`` outbox letters not yet sent, oldest first, with their ids."""
        ...

    def remove_dead_letters(self, ids: Sequence[int]) -> None:
        """Forget outbox letters the dead-letter topic acknowledged."""

    def reset_positions(self, source: str) -> int:
        """Forget every stored position of ``source``; how many partitions had one."""
        ...

    def existing_ids(self, originator_ids: Sequence[UUID]) -> set[UUID]:
        """The subset of ``originator_ids`` that have stored events."""

    def positions(self, source: str) -> dict[int, int]:
        """Partition -> next offset stored for ``source``."""

    def select_log(self, after: int, limit: int) -> list[tuple[Any, ...]]:
        """(position, originator id, version, topic, state) rows after ``after``."""
        ...

    def select_stream(self, originator_id: UUID) -> list[tuple[Any, ...]]:
        """(0, originator id, version, topic, state) rows of one stream, in order."""
        ...

    def destroy_key(self, stream: bytes) -> None:
        """Destroy a stream's data key for good."""
        ...

    def count_receipts(self) -> int:
        """How many distinct events the ledger holds."""
        ...

    def rewrap_keys(self) -> int:
        """Wrap every live data key again by the current KEK; how many."""


@dataclass(frozen=True, slots=True)
class Rejection:
    """An event of a batch that was not stored, and why."""

    index: int
    event_id: UUID
    error: CrmLedgerError


@dataclass(slots=True)
class BatchResult:
    """What ``record_many`` did with a batch."""

    recorded: int = 0
    duplicates: int = 0
    rejected: list[Rejection] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class CustomerView:
    """A customer's current state, as the CLI and SDK show it."""

    customer_id: str
    profile: dict[str, str]
    lifecycle_stage: str
    consent: dict[str, dict[str, Any]]
    identities: list[list[str]]
    organisations: dict[str, str]
    merged_into: str | None
    merged_from: list[str]
    erased: bool
    touchpoints: int
    orders: int
    refunds: int
    interactions: int
    active_subscriptions: list[str]
    open_tickets: list[str]
    first_occurred_at: datetime | None
    last_occurred_at: datetime | None
    version: int
    first_recorded_at: datetime
    last_recorded_at: datetime


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One stored event of a customer's stream, with both of its times."""

    version: int
    event_type: str
    event_id: UUID
    occurred_at: datetime
    recorded_at: datetime
    source: str
    actor: str | None
    addressed_to: str | None
    details: dict[str, Any]
