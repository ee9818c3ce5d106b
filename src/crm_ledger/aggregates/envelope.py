"""The envelope every stored touchpoint event carries, shared by all aggregates."""

from __future__ import annotations

import dataclasses
from functools import cache
from typing import TYPE_CHECKING, Any, ClassVar

from eventsourcing.domain import Aggregate, OriginatorIDError, OriginatorVersionError

from crm_ledger.errors import InvalidEvent

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

    def mutate(self, aggregate: Any) -> Any:
        """eventsourcing's mutate, with the same checks, minus its Python-level UUID equality
        on the common path where the id is the aggregate's own object."""
        if self.originator_id is not aggregate.id and self.originator_id != aggregate.id:
            raise OriginatorIDError(self.originator_id, aggregate.id)
        if self.originator_version != aggregate.version + 1:
            raise OriginatorVersionError(self.originator_version, aggregate.version + 1)
        self.apply(aggregate)
        aggregate.version = self.originator_version
        aggregate.modified_on = self.timestamp
        return aggregate

    def apply(self, aggregate: Any) -> None:
        """Count the touch, then let the event type change the aggregate's state."""
        if self.counts_as_touch:
            aggregate.note_touch(self.occurred_at)
        self.change(aggregate)

    def change(self, aggregate: Any) -> None:
        """The event type's own state change; the base changes nothing more."""


def trigger_touch(
    aggregate: Any,
    event_class: type[Touched],
    tp: Touchpoint,
    *,
    addressed_to: str | None = None,
    recorded_at: datetime | None = None,
) -> None:
    """Trigger ``event_class`` for ``tp`` on ``aggregate``: eventsourcing's trigger_event,
    without its per-event keyword copies (the write path's hottest line).

    The event's fields must be exactly the class's fields, as the dataclass constructor would
    insist; the event is then built the way eventsourcing's mapper rebuilds stored events.
    """
    names = _field_names(event_class)
    if tp.data.keys() != names:
        missing, extra = sorted(names - tp.data.keys()), sorted(tp.data.keys() - names)
        problem = f"missing {missing}" if missing else f"not in the schema: {extra}"
        raise InvalidEvent("data", problem, event_type=tp.event_type)
    event = object.__new__(event_class)
    state = envelope(tp, addressed_to)
    state["originator_id"] = aggregate.id
    state["originator_version"] = aggregate.version + 1
    state["timestamp"] = recorded_at or event_class.create_timestamp()
    state.update(tp.data)
    object.__setattr__(event, "__dict__", state)
    event.mutate(aggregate)
    aggregate.pending_events.append(event)


#: Attributes every stored touchpoint event has: eventsourcing's three, then the envelope.
STORED_ENVELOPE = frozenset(
    {
        "originator_id",
        "originator_version",
        "timestamp",
        "event_id",
        "occurred_at",
        "source",
        "actor",
        "correlation_id",
        "addressed_to",
    }
)


@cache
def _field_names(event_class: type[Touched]) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(event_class)) - STORED_ENVELOPE


def own_fields(event: Touched) -> dict[str, Any]:
    """The event type's own fields (everything but the envelope)."""
    return {k: v for k, v in vars(event).items() if k not in STORED_ENVELOPE}


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
