"""The Initiative aggregate: a named business change with a scope and a window."""

from __future__ import annotations

from typing import TYPE_CHECKING

from eventsourcing.domain import Aggregate

from crm_ledger.aggregates.envelope import Touched, envelope
from crm_ledger.aggregates.touchpoint import Subject, Touchpoint, subject_uuid

if TYPE_CHECKING:
    from datetime import datetime
    from uuid import UUID


class Initiative(Aggregate):
    """A business change (a CRM programme, a channel, a loyalty scheme) and when it ran."""

    class Opened(Aggregate.Created):
        """The ledger first heard of this initiative."""

        initiative_id: str

    @staticmethod
    def create_id(initiative_id: str) -> UUID:
        """Initiatives are found by the id their sources use."""
        return subject_uuid(Subject.INITIATIVE, initiative_id)

    def __init__(self, initiative_id: str) -> None:
        self.initiative_id = initiative_id
        self.name: str | None = None
        self.scope: dict[str, str] = {}
        self.description: str | None = None
        self.started_at: datetime | None = None
        self.ended_at: datetime | None = None
        self.outcome: str | None = None

    def record(self, tp: Touchpoint) -> None:
        """Store the start or the end of the initiative."""
        event_class = (
            self.InitiativeStarted
            if tp.event_type == "InitiativeStarted"
            else (self.InitiativeEnded)
        )
        self.trigger_event(event_class, **envelope(tp), **tp.data)

    def note_touch(self, occurred_at: datetime) -> None:
        """Initiatives keep no touch count."""

    def matches(self, profile: dict[str, str]) -> bool:
        """Whether a customer with this profile is in the initiative's scope."""
        return all(profile.get(k) == v for k, v in self.scope.items())

    class InitiativeStarted(Touched):
        """See schemas/InitiativeStarted.avsc."""

        name: str
        scope: dict[str, str]
        description: str | None

        def change(self, aggregate: Initiative) -> None:
            aggregate.name = self.name
            aggregate.scope = dict(self.scope)
            aggregate.description = self.description
            aggregate.started_at = self.occurred_at

    class InitiativeEnded(Touched):
        """See schemas/InitiativeEnded.avsc."""

        outcome: str | None

        def change(self, aggregate: Initiative) -> None:
            aggregate.ended_at = self.occurred_at
            aggregate.outcome = self.outcome
