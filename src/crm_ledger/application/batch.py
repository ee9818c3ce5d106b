"""A unit of work: the aggregates one batch touches, their new events in arrival order, the
receipts, and how a re-sent event_id is told apart from a conflicting one."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, ProcessingEvent
from eventsourcing.domain import Snapshot

from crm_ledger.aggregates import (
    CATALOGUE,
    PERSONAL_FIELDS,
    Customer,
    Initiative,
    Organisation,
    Subject,
    Touchpoint,
    customer_uuid,
    subject_uuid,
)
from crm_ledger.aggregates.customer import MERGE_TYPES, merge, unmerge
from crm_ledger.aggregates.envelope import own_fields
from crm_ledger.application.records import RECORDS_KWARG, BatchRecords, Receipt
from crm_ledger.errors import (
    ConflictingDuplicate,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from crm_ledger.application.ledger import Ledger
    from crm_ledger.application.records import OutboxLetter, Position


class UnitOfWork:
    """The aggregates one batch touches, their new events in arrival order, and receipts."""

    def __init__(self, ledger: Ledger, touchpoints: Sequence[Touchpoint]) -> None:
        self.ledger = ledger
        self.aggregates: dict[UUID, Any] = {}
        self.absent = self._absent(touchpoints)
        # One recorded time per transaction: the moment the ledger accepted the batch.
        self.recorded_at = datetime.now(UTC)
        self.changed: dict[UUID, Any] = {}
        self.events: list[Any] = []
        self.receipts: list[Receipt] = []

    def _absent(self, touchpoints: Sequence[Touchpoint]) -> set[UUID]:
        """Subjects of the batch that the store has never seen (one query, not one each)."""
        subjects = {subject_uuid(tp.subject, tp.customer_id) for tp in touchpoints}
        cache = self.ledger.repository.cache
        unknown = []
        for aggregate_id in subjects:
            try:
                if cache is not None:
                    cache.get(aggregate_id)
                    continue
            except KeyError:
                pass
            if self.ledger.in_flight_aggregate(aggregate_id) is None:
                unknown.append(aggregate_id)
        recorder = self.ledger.ledger_recorder
        stored = recorder.existing_ids(unknown)
        # Their stored events open with their keys when loaded: fetch the keys in one go.
        recorder.prepare_keys(list(stored))
        return set(unknown) - stored

    def load(self, kind: type[Any], subject_id: str, aggregate_id: UUID) -> Any:
        """The aggregate from this batch, the cache or the store; a new one if unknown."""
        aggregate = self.aggregates.get(aggregate_id)
        if aggregate is None:
            if aggregate_id in self.absent:
                aggregate = self._open(kind, subject_id)
            else:
                # A batch in flight holds the latest state; the store may not have it yet.
                aggregate = self.ledger.in_flight_aggregate(aggregate_id)
                if aggregate is None:
                    try:
                        aggregate = self.ledger.repository.get(aggregate_id)
                    except AggregateNotFoundError:
                        aggregate = self._open(kind, subject_id)
            self.aggregates[aggregate_id] = aggregate
        return aggregate

    def _open(self, kind: type[Any], subject_id: str) -> Any:
        # The stream opens at the batch's recorded time too, so that "as of" any moment sees
        # a stream together with its first events.
        aggregate = kind(subject_id)
        object.__setattr__(aggregate.pending_events[0], "timestamp", self.recorded_at)
        aggregate._created_on = aggregate.modified_on = self.recorded_at
        return aggregate

    def customer(self, customer_id: str) -> Customer:
        """The customer, loaded or opened."""
        return cast("Customer", self.load(Customer, customer_id, customer_uuid(customer_id)))

    def apply(self, tp: Touchpoint) -> None:
        """Run the command ``tp`` calls for on the aggregates it concerns."""
        if tp.subject is Subject.ORGANISATION:
            org_id = subject_uuid(Subject.ORGANISATION, tp.customer_id)
            org = self.load(Organisation, tp.customer_id, org_id)
            org.register(tp)
            self._collect(tp, org)
        elif tp.subject is Subject.INITIATIVE:
            ini_id = subject_uuid(Subject.INITIATIVE, tp.customer_id)
            ini = self.load(Initiative, tp.customer_id, ini_id)
            ini.record(tp)
            self._collect(tp, ini)
        elif tp.event_type in MERGE_TYPES:
            self._merge(tp)
        else:
            self._record_customer_event(tp)

    def _record_customer_event(self, tp: Touchpoint) -> None:
        target = self.customer(tp.customer_id)
        if tp.event_type != "CustomerErased":  # erasure is about the id it names, never routed
            # An erased duplicate takes no personal data, even where it would be routed.
            target.refuse_personal_data_if_erased(tp)
            target = self._survivor_of(target)
        routed = target.customer_id != tp.customer_id
        target.record(
            tp, addressed_to=tp.customer_id if routed else None, recorded_at=self.recorded_at
        )
        self._collect(tp, target)

    def _survivor_of(self, customer: Customer) -> Customer:
        if customer.merged_into is None:  # nearly always: no set to build
            return customer
        seen = {customer.customer_id}
        while customer.merged_into is not None and customer.merged_into not in seen:
            seen.add(customer.merged_into)
            customer = self.customer(customer.merged_into)
        return customer

    def _merge(self, tp: Touchpoint) -> None:
        absorbed = self.customer(tp.customer_id)
        survivor = self.customer(tp.data["survivor_id"])
        if tp.event_type == "CustomersMerged":
            merge(absorbed, survivor, tp)
        else:
            unmerge(absorbed, survivor, tp)
        self._collect(tp, absorbed)
        self._collect(tp, survivor, receipt=False)

    def _collect(self, tp: Touchpoint, aggregate: Any, *, receipt: bool = True) -> None:
        new = aggregate.collect_events()
        self.events.extend(new)
        self.changed[aggregate.id] = aggregate
        if receipt:
            self.receipts.append(Receipt(tp.event_id, aggregate.id, new[-1].originator_version))

    def save(
        self,
        positions: Sequence[Position],
        letters: Sequence[OutboxLetter] = (),
        *,
        wait: bool = True,
    ) -> None:
        """Write every new event, receipt, position and outbox letter in one transaction
        (without ``wait``, the recorder may commit it in the background)."""
        processing = ProcessingEvent[UUID]()
        processing.events = self.events
        # Only aggregates with new events: one opened for an event that was then rejected
        # must not reach the cache, as it is not in the store.
        processing.aggregates = self.changed
        self.ledger.ledger_recorder.prepare_keys(list(self.changed))
        # In the background, snapshots go with the batch, taken of the aggregates in memory
        # (eventsourcing's take the stored events back, which are not stored yet).
        snapshots = [] if wait else self._snapshots()
        processing.saved_kwargs = {
            RECORDS_KWARG: BatchRecords(
                self.receipts, list(positions), list(letters), snapshots, wait=wait
            )
        }
        self.ledger._record(processing)
        if wait:
            self.ledger._take_snapshots(processing)

    def _snapshots(self) -> list[Any]:
        """Stored snapshots of the aggregates whose new events reach a snapshot interval, as
        they stand after the batch."""
        ledger = self.ledger
        if ledger.snapshots is None:
            return []
        due = set()
        for event in self.events:
            interval = ledger.snapshotting_intervals.get(type(self.changed[event.originator_id]))
            if interval is not None and event.originator_version % interval == 0:
                due.add(event.originator_id)
        return [
            ledger.snapshots.mapper.to_stored_event(Snapshot.take(self.changed[aggregate_id]))
            for aggregate_id in due
        ]


def check_same_content(received: Touchpoint, stored: Any, stream: UUID | None) -> None:
    """Raise ConflictingDuplicate unless ``received`` repeats what is stored for its id: an
    earlier touchpoint of the batch, or a stored event of ``stream``."""
    stored_tp = stored if stream is None else _as_received(received, stored, stream)
    # Personal data of an erased customer reads as None: it can no longer be compared.
    kind = stored_tp.event_type
    unknown = frozenset(n for n in PERSONAL_FIELDS.get(kind, ()) if stored_tp.data.get(n) is None)
    theirs, ours = stored_tp.fingerprint(unknown=unknown), received.fingerprint(unknown=unknown)
    if theirs != ours:
        raise ConflictingDuplicate(str(received.event_id), theirs, ours)


def _as_received(received: Touchpoint, stored: Any, stream: UUID) -> Touchpoint:
    """The stored event as the touchpoint that made it."""
    customer_id = stored.addressed_to  # set when the event was routed to a merge survivor
    if customer_id is None:
        # Not routed: the event lives in the stream the ledger derives from its subject's id.
        same = received.event_type in CATALOGUE and stream == subject_uuid(
            received.subject, received.customer_id
        )
        customer_id = received.customer_id if same else f"stream {stream}"
    return Touchpoint(
        type(stored).__name__,
        stored.event_id,
        customer_id,
        stored.occurred_at,
        stored.source,
        stored.actor,
        stored.correlation_id,
        own_fields(stored),
    )
