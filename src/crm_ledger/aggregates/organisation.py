"""The Organisation aggregate: a business customer and its contacts with their roles."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from eventsourcing.domain import Aggregate

from crm_ledger.aggregates.envelope import Touched, envelope
from crm_ledger.aggregates.touchpoint import Subject, Touchpoint, subject_uuid

if TYPE_CHECKING:
    from datetime import datetime
    from uuid import UUID


class Organisation(Aggregate):
    """An organisation and its profile.

    Its contacts are not kept here: ContactLinkedToOrganisation is a fact about the contact and
    lives in the contact's stream, written by the worker that owns the contact's partition.
    Writing it into this stream too would make two workers write one stream (the organisation's
    key sits in another partition), and their batches collide; the roll-up of contacts per
    organisation is a read model.
    """

    class Opened(Aggregate.Created):
        """The ledger first heard of this organisation."""

        organisation_id: str

    @staticmethod
    def create_id(organisation_id: str) -> UUID:
        """Organisations are found by the id their sources use."""
        return subject_uuid(Subject.ORGANISATION, organisation_id)

    def __init__(self, organisation_id: str) -> None:
        self.organisation_id = organisation_id
        self.profile: dict[str, Any] = {}
        self.registered = False
        self.touchpoints = 0

    def register(self, tp: Touchpoint) -> None:
        """Store the organisation's registration (or a later re-registration)."""
        self.trigger_event(self.OrganisationRegistered, **envelope(tp), **tp.data)

    def note_touch(self, occurred_at: datetime) -> None:
        """Count events about the organisation."""
        self.touchpoints += 1

    class OrganisationRegistered(Touched):
        """See schemas/OrganisationRegistered.avsc."""

        name: str
        industry: str | None
        country: str | None
        size: str | None

        def change(self, aggregate: Organisation) -> None:
            aggregate.registered = True
            aggregate.profile = {
                k: v for k, v in vars(self).items() if k in ("name", "industry", "country", "size")
            }
