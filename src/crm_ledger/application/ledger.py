"""The Ledger: use cases over the Customer, Organisation and Initiative aggregates.

``record_many`` is the write path: it applies a batch that touches many customers in one
transaction (events, receipts for permanent dedup and source positions together), because one
transaction per event runs at only a few hundred events a second.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import os
import random
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, cast
from uuid import UUID, uuid4

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.persistence import (
    ConnectionUnavailableError,
    EventStore,
    IntegrityError,
    InterfaceError,
    OperationalError,
    StoredEvent,
)
from eventsourcing.utils import Environment, get_topic

from crm_ledger.aggregates import (
    Customer,
    Initiative,
    Organisation,
    Subject,
    Touchpoint,
    check_touchpoint,
    customer_uuid,
    subject_uuid,
)
from crm_ledger.aggregates.envelope import Touched, own_fields
from crm_ledger.application import access
from crm_ledger.application.batch import UnitOfWork, check_same_content
from crm_ledger.application.records import (
    BatchResult,
    CustomerView,
    HistoryEntry,
    LogMapper,
    LogPage,
    LogRecord,
    Rejection,
)
from crm_ledger.errors import (
    BatchesNotStored,
    CrmLedgerError,
    CustomerNotFound,
    InvalidInput,
    RejectedEvent,
    StoreUnavailable,
    UntrustedSnapshot,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from eventsourcing.domain import MutableOrImmutableAggregate

    from crm_ledger.application.access import AccessRecord
    from crm_ledger.application.records import KeyWrapping, LedgerRecorder, OutboxLetter, Position


#: Streams (customers, organisations, initiatives) whose aggregate, data key and chain head
#: are kept in memory between batches: about 2.8 KB each, so the default bounds them to
#: about 280 MB. A stream the cache let go of is read again from the store when next touched.
DEFAULT_CACHE_SIZE = 100_000

#: The source named on CustomerErased events the ledger records itself.
ERASURE_SOURCE = "crm-ledger"

#: Opening the store is retried this many times when another process creates its tables.
OPEN_ATTEMPTS = 5

#: A batch that loses a race with another writer is retried this many times.
MAX_ATTEMPTS = 12


class InFlight(NamedTuple):
    """A batch sent to be committed in the background and not answered yet."""

    sent: dict[UUID, Touchpoint]  # its recorded touchpoints, by event id
    touched: list[UUID]  # every aggregate it loaded or changed
    changed: dict[UUID, Any]  # the aggregates it changed, as it left them


class Ledger(Application[UUID]):
    """The crm-ledger application: records touchpoints, answers questions about customers."""

    name = "CrmLedger"
    snapshotting_intervals: ClassVar[dict[type[MutableOrImmutableAggregate[Any]], int]] = {
        Customer: 200,
        Organisation: 200,
    }

    def __init__(
        self,
        env: dict[str, str],
        *,
        clock: Callable[[], datetime] | None = None,
        max_future: timedelta = timedelta(days=1),
        snapshot_key: bytes | None = None,
        keyring: KeyWrapping | None = None,
        cache_streams: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        """``snapshot_key`` seals snapshots (keep it outside the database); without one, a
        key for this instance alone is made, so snapshots stored before are not trusted and
        aggregates are rebuilt from their events. ``keyring`` wraps the data keys (bootstrap
        always passes one; without, keys are stored as they are, for embedded use only).
        ``cache_streams``: how many streams' aggregates, data keys and chain heads stay in
        memory (``env``'s AGGREGATE_CACHE_MAXSIZE, if given, sizes the aggregates alone)."""
        settings = {
            # Bounded (memory stays flat), but big enough for the customers active at once:
            # at 1M events / 47k customers a 20,000 cache halved throughput with misses.
            "AGGREGATE_CACHE_MAXSIZE": str(cache_streams),
            # A stale cached aggregate fails the insert (version conflict) and the batch is
            # retried from the store, so fast-forwarding on every get is not needed.
            "AGGREGATE_CACHE_FASTFORWARD": "n",
            "DEEPCOPY_FROM_AGGREGATE_CACHE": "n",
            **env,
        }
        self._clock = clock or (lambda: datetime.now(UTC))
        self._max_future = max_future
        # Batches sent to be committed in the background and not answered yet, oldest first.
        self._in_flight = collections.deque[InFlight]()
        self._open_store(settings)
        # Personal fields are sealed with per-customer keys the recorder keeps (and stores in
        # the same transaction as the events that first need them).
        cast("Any", self.mapper).data_keys = getattr(self.recorder, "data_keys", None)
        self.ledger_recorder.limit_streams(cache_streams)
        self.keyring = keyring
        if keyring is not None:
            cast("Any", self.recorder).data_keys.keyring = keyring
        cast("Any", self.mapper).snapshot_key = snapshot_key or os.urandom(32)
        if self.snapshots is not None:
            snapshots: Any = self.snapshots.recorder
            cast("Any", self.recorder).snapshots_table = snapshots.events_table_name

    def _open_store(self, settings: dict[str, str]) -> None:
        """eventsourcing's application on the store, retried while another process is
        creating the same tables."""
        for attempt in range(OPEN_ATTEMPTS):
            try:
                super().__init__(settings)
                return
            except CrmLedgerError:
                raise
            except Exception as e:  # the library raises many kinds for an unusable store
                if "concurrently updated" in str(e) and attempt + 1 < OPEN_ATTEMPTS:
                    time.sleep(random.uniform(0.1, 0.5))
                    continue
                msg = f"cannot open the event store: {e}"
                raise StoreUnavailable(msg) from None

    def construct_snapshot_store(self) -> EventStore[UUID]:
        """Snapshots whose seal does not match are skipped: the aggregate is rebuilt from its
        events instead."""
        recorder = self.factory.aggregate_recorder(purpose="snapshots")
        return _TrustedSnapshots(mapper=self.mapper, recorder=recorder)

    def construct_env(self, name: str, env: Mapping[str, str] | None = None) -> Environment:
        """Settings come only from bootstrap, never from the process environment."""
        values = {**type(self).env, "IS_SNAPSHOTTING_ENABLED": "y", **(env or {})}
        return Environment(name, values)

    def close(self) -> None:
        """Wait for the batches in flight, stop the recorder's background work, then close
        the store."""
        try:
            if not self.closing.is_set():
                self.ledger_recorder.close()
        finally:
            self._in_flight.clear()
            super().close()

    @property
    def ledger_recorder(self) -> LedgerRecorder:
        """The recorder, seen through the ledger's extra queries."""
        return cast("LedgerRecorder", self.recorder)

    # Writing.

    def check(self, tp: Touchpoint) -> None:
        """Raise InvalidEvent if ``tp`` breaks a contract rule (nothing is written)."""
        check_touchpoint(tp, now=self._clock(), max_future=self._max_future)

    def record(self, tp: Touchpoint) -> bool:
        """Record one touchpoint in its own transaction; False if it was a duplicate."""
        result = self.record_many([tp])
        if result.rejected:
            raise result.rejected[0].error
        return result.recorded == 1

    def record_many(
        self,
        touchpoints: Sequence[Touchpoint],
        positions: Sequence[Position] = (),
        *,
        dead_letters: Sequence[OutboxLetter] = (),
        dead_letter_for: Callable[[int, CrmLedgerError], OutboxLetter] | None = None,
        wait: bool = True,
    ) -> BatchResult:
        """Apply a batch in one transaction: duplicates are skipped, bad events rejected.

        ``dead_letters`` are kept in the ledger's outbox in the same transaction, and so is
        ``dead_letter_for(index, error)`` of every event the batch rejects.

        Without ``wait``, the batch is committed in the background while the caller prepares
        the next one (on a SQLite file by a process of its own, on PostgreSQL by a thread
        with a connection of its own): it is stored once ``flush`` returns. If it
        fails, a later call raises BatchesNotStored for it and the batches after it, which
        the caller sends again from its own record of what is stored (``positions``).
        """
        self._settle_in_flight()
        for _attempt in range(MAX_ATTEMPTS):
            batch = UnitOfWork(self, touchpoints)
            try:
                result = self._record_batch(batch, touchpoints)
                letters = list(dead_letters)
                if dead_letter_for is not None:
                    letters += [dead_letter_for(r.index, r.error) for r in result.rejected]
                self._save(batch, touchpoints, positions, letters, wait=wait)
                result.recorded = len(batch.receipts)
                return result
            except BatchesNotStored:
                self._forget(batch)
                self._forget_in_flight()
                raise
            except IntegrityError:
                # Another writer got there first; reload those aggregates and try again, after
                # a short random pause so that two writers do not collide in step.
                self._forget(batch)
                time.sleep(random.uniform(0, 0.05 * (_attempt + 1)))
            except (OperationalError, InterfaceError, ConnectionUnavailableError) as e:
                # The store is away or busy (a locked file, a dropped connection): not the
                # batch's fault, so say so in the one way callers wait and retry on.
                self._forget(batch)
                raise StoreUnavailable(f"the event store failed: {e}") from e
            except BaseException:
                self._forget(batch)
                raise
        msg = f"gave up after {MAX_ATTEMPTS} conflicting writes to the same customers"
        raise StoreUnavailable(msg)

    def flush(self) -> None:
        """Wait until every batch recorded without ``wait`` is stored; raises
        BatchesNotStored (and forgets what they changed in memory) if one is not."""
        try:
            self.ledger_recorder.flush()
        except BatchesNotStored:
            self._forget_in_flight()
            raise
        self._settle_in_flight()

    @property
    def batches_in_flight(self) -> int:
        """Batches recorded without ``wait`` whose outcome is not known yet."""
        return self.ledger_recorder.batches_in_flight

    def _save(
        self,
        batch: UnitOfWork,
        touchpoints: Sequence[Touchpoint],
        positions: Sequence[Position],
        letters: Sequence[OutboxLetter],
        *,
        wait: bool,
    ) -> None:
        sent = self.ledger_recorder.batches_sent
        batch.save(positions, letters, wait=wait)
        if self.ledger_recorder.batches_sent > sent:  # it went to be committed in the background
            self._track_in_flight(batch, touchpoints)
        self._settle_in_flight()

    def _track_in_flight(self, batch: UnitOfWork, touchpoints: Sequence[Touchpoint]) -> None:
        """Remember a batch the recorder commits in the background: its touchpoints count as
        stored for the next batches' duplicate check, the aggregates it changed are the
        latest state of those (whatever the cache lets go of), and every aggregate it touched
        is dropped from the cache if it fails."""
        receipted = {r.event_id for r in batch.receipts}
        sent = {tp.event_id: tp for tp in touchpoints if tp.event_id in receipted}
        self._in_flight.append(InFlight(sent, list(batch.aggregates), dict(batch.changed)))

    def in_flight_aggregate(self, aggregate_id: UUID) -> Any | None:
        """The aggregate as a batch still in flight left it, if one changed it. The store
        has not got those events yet, so an aggregate the cache let go of in the meantime
        must come from here, not from the store (where it would be a version behind)."""
        for flying in reversed(self._in_flight):
            aggregate = flying.changed.get(aggregate_id)
            if aggregate is not None:
                return aggregate
        return None

    def _settle_in_flight(self) -> None:
        """Drop the batches the recorder has since reported stored: the oldest ones, as the
        batches in flight are always the newest sent."""
        while len(self._in_flight) > self.ledger_recorder.batches_in_flight:
            self._in_flight.popleft()

    def _forget_in_flight(self) -> None:
        cache = self.repository.cache
        for flying in self._in_flight:
            for aggregate_id in flying.touched:
                with contextlib.suppress(KeyError):
                    if cache is not None:
                        cache.get(aggregate_id, evict=True)
        self._in_flight.clear()

    def _forget(self, batch: UnitOfWork) -> None:
        # Commands mutate cached aggregates in place, so after a failed batch the cache may
        # hold state the store never saw: drop every aggregate the batch touched.
        cache = self.repository.cache
        if cache is not None:
            for aggregate_id in batch.aggregates:
                with contextlib.suppress(KeyError):
                    cache.get(aggregate_id, evict=True)

    def _record_batch(self, batch: UnitOfWork, touchpoints: Sequence[Touchpoint]) -> BatchResult:
        result = BatchResult()
        # Known: stored before this batch, or recorded earlier in it. A copy that was rejected
        # leaves no receipt, so a later copy is judged afresh, as it would be one at a time.
        known = self._stored_copies([tp.event_id for tp in touchpoints])
        for flying in self._in_flight:  # sent to be stored, not stored yet
            for tp in touchpoints:
                if tp.event_id in flying.sent and tp.event_id not in known:
                    known[tp.event_id] = (flying.sent[tp.event_id], None)
        now = self._clock()
        for index, tp in enumerate(touchpoints):
            try:
                if tp.event_id in known:
                    check_same_content(tp, *known[tp.event_id])
                    result.duplicates += 1
                    continue
                check_touchpoint(tp, now=now, max_future=self._max_future)  # one clock per batch
                batch.apply(tp)
            except (InvalidInput, RejectedEvent) as error:
                result.rejected.append(Rejection(index, tp.event_id, error))
                continue
            known[tp.event_id] = (tp, None)
        return result

    def _stored_copies(self, event_ids: Sequence[UUID]) -> dict[UUID, tuple[Any, UUID | None]]:
        """The stored event and its stream, for those of ``event_ids`` the ledger holds."""
        found: dict[UUID, tuple[Any, UUID | None]] = {}
        for copy_ in self.ledger_recorder.receipted_events(event_ids):
            stored = StoredEvent(
                copy_.originator_id, copy_.originator_version, copy_.topic, copy_.state
            )
            found[copy_.event_id] = (self.mapper.to_domain_event(stored), copy_.originator_id)
        return found

    # Reading.

    def customer(self, customer_id: str) -> CustomerView:
        """The customer's current state."""
        c = self._get(Customer, customer_uuid(customer_id))
        if c is None:
            raise CustomerNotFound(customer_id)
        return customer_view(c)

    def history(self, customer_id: str, *, as_of: datetime | None = None) -> list[HistoryEntry]:
        """Every touchpoint stored in the customer's stream, optionally as recorded by ``as_of``."""
        events = list(self.events.get(customer_uuid(customer_id)))
        if not events:
            raise CustomerNotFound(customer_id)
        entries = []
        for e in events:
            if not isinstance(e, Touched) or (as_of is not None and e.timestamp > as_of):
                continue
            entries.append(
                HistoryEntry(
                    version=e.originator_version,
                    event_type=type(e).__name__,
                    event_id=e.event_id,
                    occurred_at=e.occurred_at,
                    recorded_at=e.timestamp,
                    source=e.source,
                    actor=e.actor,
                    addressed_to=e.addressed_to,
                    details=own_fields(e),
                )
            )
        return entries

    def erase(self, customer_id: str, *, reason: str, actor: str | None = None) -> list[str]:
        """Record CustomerErased and destroy the data keys of the customer and of everyone
        merged into them: their personal data can no longer be read anywhere. Returns the
        customer ids whose keys were destroyed."""
        view = self.customer(customer_id)
        now = self._clock()
        self.record(
            Touchpoint(
                "CustomerErased",
                uuid4(),
                customer_id,
                now,
                ERASURE_SOURCE,
                actor,
                None,
                {"reason": reason},
            )
        )
        erased = [customer_id, *view.merged_from]
        for member in erased:
            self.ledger_recorder.destroy_key(customer_uuid(member).bytes)
        # Copies of the destroyed keys may remain wrapped in old WAL segments or backups: a
        # new KEK for the live keys, and the old one destroyed, leaves them unreadable.
        self.rotate_keys()
        return erased

    def rotate_keys(self) -> int:
        """Wrap every live data key by a new KEK and destroy the old KEK; how many keys."""
        if self.keyring is None:
            return 0
        self.keyring.rotate()
        count = self.ledger_recorder.rewrap_keys()
        # Again, for keys another process wrapped by the old KEK meanwhile (writers look for
        # the current KEK's file before each wrap, so after this there are none).
        self.ledger_recorder.rewrap_keys()
        self.keyring.retire()
        return count

    def customer_as_of(
        self,
        customer_id: str,
        *,
        as_of: datetime | None = None,
        valid_at: datetime | None = None,
    ) -> CustomerView:
        """The customer as the ledger knew them at ``as_of`` (recorded by then), counting only
        events that occurred by ``valid_at``."""
        customer: Any = None
        e: Any
        for e in self.events.get(customer_uuid(customer_id)):
            if as_of is not None and e.timestamp > as_of:
                break  # a stream is recorded in order
            if isinstance(e, Customer.Opened):
                customer = e.mutate(None)
            elif isinstance(e, Touched) and (valid_at is None or e.occurred_at <= valid_at):
                # Filtering leaves gaps in the versions, so apply without the sequence check.
                e.apply(customer)
                customer.version = e.originator_version
                customer.modified_on = e.timestamp
        if customer is None:
            raise CustomerNotFound(customer_id)
        return customer_view(customer)

    def read_log(self, after: int, limit: int) -> LogPage:
        """Up to ``limit`` notifications after position ``after``, as log records."""
        rows = self.ledger_recorder.select_log(after, limit)
        if not rows:
            return LogPage([], after)
        to_record = cast("LogMapper", self.mapper).to_record
        records = [r for row in rows if (r := to_record(*row)) is not None]
        return LogPage(records, rows[-1][0])

    def read_stream(self, customer_id: str) -> list[LogRecord]:
        """Every stored event of the customer's stream, as log records."""
        rows = self.ledger_recorder.select_stream(customer_uuid(customer_id))
        to_record = cast("LogMapper", self.mapper).to_record
        return [r for row in rows if (r := to_record(*row)) is not None]

    def stream_name(self, stream: bytes) -> str | None:
        """The id sources use for the customer, organisation or initiative of ``stream``."""
        if UUID(bytes=stream) == access.ACCESS_STREAM:
            return "the access log"
        try:
            stored = self.recorder.select_events(UUID(bytes=stream), lte=1)
            opened: Any = self.mapper.to_domain_event(stored[0]) if stored else None
        except Exception:
            return None
        for name in ("customer_id", "organisation_id", "initiative_id"):
            if opened is not None and hasattr(opened, name):
                return str(getattr(opened, name))
        return None

    def append_access(self, records: Sequence[AccessRecord]) -> int:
        """Append access records to the access stream (chained like every event)."""
        return access.append(self.recorder, records)

    def access_records(self) -> list[tuple[int, AccessRecord]]:
        """Every access record with its version, oldest first."""
        return access.read(self.recorder)

    def log_head(self) -> int:
        """The position of the newest notification (0 when the log is empty)."""
        return self.recorder.max_notification_id() or 0

    def organisation(self, organisation_id: str) -> Organisation | None:
        """The organisation's current state, if the ledger knows it."""
        found = self._get(Organisation, subject_uuid(Subject.ORGANISATION, organisation_id))
        return cast("Organisation | None", found)

    def initiatives(self) -> list[Initiative]:
        """Every initiative the ledger knows, in the order it first heard of them."""
        topic = get_topic(Initiative.Opened)
        found, start = [], None
        while True:
            page = self.recorder.select_notifications(start, 1_000, topics=[topic])
            found += [self._get(Initiative, UUID(str(n.originator_id))) for n in page]
            if len(page) < 1_000:
                return [i for i in found if i is not None]
            start = page[-1].id + 1

    def initiative(self, initiative_id: str) -> Initiative | None:
        """The initiative's current state, if the ledger knows it."""
        found = self._get(Initiative, subject_uuid(Subject.INITIATIVE, initiative_id))
        return cast("Initiative | None", found)

    def count_events(self) -> int:
        """How many distinct touchpoints the ledger holds."""
        return self.ledger_recorder.count_receipts()

    def positions(self, source: str) -> dict[int, int]:
        """Partition -> next offset the ledger stored for ``source`` (say, a Kafka topic)."""
        return self.ledger_recorder.positions(source)

    def reset_positions(self, source: str) -> int:
        """Forget where reading ``source`` got to (it will be read again from its start;
        event_id dedup keeps what was stored). Returns how many partitions had a position."""
        return self.ledger_recorder.reset_positions(source)

    def pending_dead_letters(self, limit: int = 500) -> list[tuple[int, OutboxLetter]]:
        """Outbox letters not yet sent to the dead-letter topic, oldest first."""
        return self.ledger_recorder.pending_dead_letters(limit)

    def dead_letters_sent(self, ids: Sequence[int]) -> None:
        """Remove outbox letters the dead-letter topic has acknowledged."""
        if ids:
            self.ledger_recorder.remove_dead_letters(ids)

    def _get(self, kind: type[Any], aggregate_id: UUID) -> Any:
        try:
            aggregate: Any = self.repository.get(aggregate_id)
        except AggregateNotFoundError:
            return None
        # A copy: the cached aggregate is the write path's, and callers may keep the view.
        return copy.deepcopy(aggregate) if isinstance(aggregate, kind) else None


class _TrustedSnapshots(EventStore[UUID]):
    """An event store of snapshots that passes over any whose seal does not match."""

    def get(
        self,
        originator_id: UUID,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Any:
        """The trusted snapshots of ``originator_id`` (an untrusted one is left out)."""
        rows = self.recorder.select_events(originator_id, gt=gt, lte=lte, desc=desc, limit=limit)
        for stored in rows:
            try:
                yield self.mapper.to_domain_event(stored)
            except UntrustedSnapshot:
                continue


def customer_view(c: Customer) -> CustomerView:
    return CustomerView(
        customer_id=c.customer_id,
        profile=dict(c.profile),
        lifecycle_stage=c.lifecycle_stage,
        consent=copy.deepcopy(c.consent),
        identities=[list(i) for i in c.identities],
        organisations=dict(c.organisations),
        merged_into=c.merged_into,
        merged_from=list(c.merged_from),
        erased=c.erased,
        touchpoints=c.touchpoints,
        orders=c.orders,
        refunds=c.refunds,
        interactions=c.interactions,
        active_subscriptions=list(c.active_subscriptions),
        open_tickets=list(c.open_tickets),
        first_occurred_at=c.first_occurred_at,
        last_occurred_at=c.last_occurred_at,
        version=c.version,
        first_recorded_at=c.created_on,
        last_recorded_at=c.modified_on,
    )
