"""The envelope every stored touchpoint event carries, shared by all aggregates."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from eventsourcing.domain import Aggregate

if TYPE_CHECKING:
    from datetime import datetime
    from uuid import UUID

    from crm_ledger.aggregates.touchpoint import Touchpoint


class Touched(Aggregate.Event):
    """Base of stored touchpoint events: the source's envelope beside the ledger's own time.

    ``timestamp`` (from eventsourcing) is when the ledger recorded the event; ``occurred_at``
    is the source's business time. ``addressed_to`` keeps the customer id a source used when
    the ledger routed the event to a merge survivor.
    """

    event_id: UUID
    occurred_at: datetime
    source: str
    actor: str | None
    correlation_id: str | None
    addressed_to: str | None

    #: False for the ledger's own bookkeeping events (the other side of a merge or link).
    counts_as_touch: ClassVar[bool] = True

    def apply(self, aggregate: Any) -> None:
        """Count the touch, then let the event type change the aggregate's state."""
        if self.counts_as_touch:
            aggregate.note_touch(self.occurred_at)
        self.change(aggregate)

    def change(self, aggregate: Any) -> None:
        """The event type's own state change; the base changes nothing more."""


def envelope(tp: Touchpoint, addressed_to: str | None = None) -> dict[str, Any]:
    """Keyword arguments that put ``tp``'s envelope on a stored event."""
    return {
        "event_id": tp.event_id,
        "occurred_at": tp.occurred_at,
        "source": tp.source,
        "actor": tp.actor,
        "correlation_id": tp.correlation_id,
        "addressed_to": addressed_to,
    }
