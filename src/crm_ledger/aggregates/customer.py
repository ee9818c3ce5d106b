"""The Customer aggregate: one stream per customer, holding every touchpoint about them."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, ClassVar

from eventsourcing.domain import Aggregate

from crm_ledger.aggregates.envelope import Touched, envelope, trigger_touch
from crm_ledger.aggregates.touchpoint import CATALOGUE, Subject, Touchpoint, customer_uuid
from crm_ledger.errors import ErasedCustomerError, MergeError

if TYPE_CHECKING:
    from datetime import datetime
    from uuid import UUID

PROMOTED_BY_ORDER = frozenset({"lead", "prospect", "churned"})
PROFILE_FIELDS = ("name", "email", "phone", "address", "country", "region", "segment")
#: Profile fields with few distinct values: every customer's state shares one copy of each
#: value (a writer keeps tens of thousands of customers in memory).
FEW_VALUES = frozenset({"country", "region", "segment"})


def shared(value: Any) -> Any:
    """One copy in memory of a text that many customers' states hold."""
    return sys.intern(value) if type(value) is str else value


class Customer(Aggregate):
    """A customer (or member, citizen, partner): profile, consent, identities and merges."""

    class Opened(Aggregate.Created):
        """The ledger first heard of this customer."""

        customer_id: str

    @staticmethod
    def create_id(customer_id: str) -> UUID:
        """Customers are found by the id their sources use."""
        return customer_uuid(customer_id)

    def __init__(self, customer_id: str) -> None:
        self.customer_id = customer_id
        self.profile: dict[str, str] = {}
        self.lifecycle_stage = "lead"
        self.consent: dict[str, dict[str, Any]] = {}
        self.identities: list[list[str]] = []
        self.organisations: dict[str, str] = {}
        self.merged_into: str | None = None
        self.merged_from: list[str] = []
        self.erased = False
        self.touchpoints = 0
        self.first_occurred_at: datetime | None = None
        self.last_occurred_at: datetime | None = None
        self.orders = 0
        self.refunds = 0
        self.interactions = 0
        self.active_subscriptions: list[str] = []
        self.open_tickets: list[str] = []

    # Commands: one check, then one event.

    def record(
        self,
        tp: Touchpoint,
        *,
        addressed_to: str | None = None,
        recorded_at: datetime | None = None,
    ) -> None:
        """Store a plain touchpoint about this customer."""
        self.refuse_personal_data_if_erased(tp)
        trigger_touch(
            self,
            TOUCHPOINT_EVENTS[tp.event_type],
            tp,
            addressed_to=addressed_to,
            recorded_at=recorded_at,
        )

    def merge_into(self, tp: Touchpoint) -> None:
        """Mark this customer as a duplicate of ``tp.data['survivor_id']``."""
        self.check_can_merge()
        self.trigger_event(self.CustomersMerged, **envelope(tp), **tp.data)

    def unmerge(self, tp: Touchpoint) -> None:
        """Undo this customer's merge into ``tp.data['survivor_id']``."""
        if self.merged_into != tp.data["survivor_id"]:
            msg = f"customer {self.customer_id} is not merged into {tp.data['survivor_id']}"
            raise MergeError(msg)
        self.trigger_event(self.CustomersUnmerged, **envelope(tp), **tp.data)

    def absorb(self, tp: Touchpoint) -> None:
        """As survivor, take in the customer that ``tp`` merges."""
        self.check_can_absorb()
        self.trigger_event(self.CustomerAbsorbed, **envelope(tp), absorbed_id=tp.customer_id)

    def release(self, tp: Touchpoint) -> None:
        """As survivor, let go of the customer that ``tp`` unmerges."""
        self.trigger_event(self.CustomerReleased, **envelope(tp), released_id=tp.customer_id)

    def check_can_merge(self) -> None:
        """Raise MergeError if this customer is already merged."""
        if self.merged_into is not None:
            msg = f"customer {self.customer_id} is already merged into {self.merged_into}"
            raise MergeError(msg)

    def check_can_absorb(self) -> None:
        """Raise MergeError if this customer cannot be a survivor."""
        if self.merged_into is not None:
            msg = (
                f"survivor {self.customer_id} is itself merged into {self.merged_into}; "
                f"merge into {self.merged_into} instead"
            )
            raise MergeError(msg)

    def refuse_personal_data_if_erased(self, tp: Touchpoint) -> None:
        """Raise ErasedCustomerError if ``tp`` carries personal data and this customer was
        erased (also when ``tp`` would be routed to a merge survivor)."""
        if self.erased and (personal := tp.personal_values()):
            raise ErasedCustomerError(self.customer_id, next(iter(personal)))

    # State changes shared by events.

    def note_touch(self, occurred_at: datetime) -> None:
        """Keep count of touches and the first and last business time seen."""
        self.touchpoints += 1
        if self.first_occurred_at is None or occurred_at < self.first_occurred_at:
            self.first_occurred_at = occurred_at
        if self.last_occurred_at is None or occurred_at > self.last_occurred_at:
            self.last_occurred_at = occurred_at

    def update_profile(self, fields: dict[str, Any]) -> None:
        """Overwrite the profile fields given a value; null leaves a field as it was."""
        for name in PROFILE_FIELDS:
            value = fields.get(name)
            if value is not None:
                self.profile[name] = shared(value) if name in FEW_VALUES else value
        if fields.get("lifecycle_stage") is not None:
            self.lifecycle_stage = shared(fields["lifecycle_stage"])

    # Events: the catalogue's customer events, each with its state change.

    class CustomerRegistered(Touched):
        """See schemas/CustomerRegistered.avsc."""

        name: str | None
        email: str | None
        phone: str | None
        address: str | None
        country: str | None
        region: str | None
        segment: str | None
        lifecycle_stage: str | None

        def change(self, aggregate: Customer) -> None:
            aggregate.update_profile(vars(self))

    class ProfileUpdated(CustomerRegistered):
        """See schemas/ProfileUpdated.avsc."""

    class IdentityLinked(Touched):
        """See schemas/IdentityLinked.avsc."""

        system: str
        value: str

        def change(self, aggregate: Customer) -> None:
            identity = [shared(self.system), self.value]
            if identity not in aggregate.identities:
                aggregate.identities.append(identity)

    class CustomersMerged(Touched):
        """See schemas/CustomersMerged.avsc."""

        survivor_id: str
        reason: str | None

        def change(self, aggregate: Customer) -> None:
            aggregate.merged_into = self.survivor_id

    class CustomersUnmerged(CustomersMerged):
        """See schemas/CustomersUnmerged.avsc."""

        def change(self, aggregate: Customer) -> None:
            aggregate.merged_into = None

    class CustomerAbsorbed(Touched):
        """The survivor's side of a merge: ``absorbed_id`` now routes here."""

        absorbed_id: str
        counts_as_touch: ClassVar[bool] = False

        def change(self, aggregate: Customer) -> None:
            if self.absorbed_id not in aggregate.merged_from:
                aggregate.merged_from.append(self.absorbed_id)

    class CustomerReleased(Touched):
        """The survivor's side of an unmerge: ``released_id`` stands alone again."""

        released_id: str
        counts_as_touch: ClassVar[bool] = False

        def change(self, aggregate: Customer) -> None:
            if self.released_id in aggregate.merged_from:
                aggregate.merged_from.remove(self.released_id)

    class ConsentChanged(Touched):
        """See schemas/ConsentChanged.avsc."""

        purpose: str
        channel: str | None
        granted: bool
        method: str | None

        def change(self, aggregate: Customer) -> None:
            key = shared(f"{self.purpose}/{self.channel or '*'}")
            known = aggregate.consent.get(key)
            # Arrival order is not business order: the latest decision by occurred_at wins.
            if known is None or known["at"] <= self.occurred_at:
                aggregate.consent[key] = {"granted": self.granted, "at": self.occurred_at}

    class InteractionRecorded(Touched):
        """See schemas/InteractionRecorded.avsc."""

        channel: str
        device: str | None
        direction: str
        kind: str
        score: int | None
        campaign: str | None
        note: str | None

        def change(self, aggregate: Customer) -> None:
            aggregate.interactions += 1

    class OrderPlaced(Touched):
        """See schemas/OrderPlaced.avsc. Version 2 added ``margin_minor`` and ``items``."""

        class_version: ClassVar[int] = 2

        order_id: str
        amount_minor: int
        currency: str
        margin_minor: int | None
        items: int
        channel: str | None

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            """Version 1 knew no margin and counted no items: one item, margin unknown."""
            state["margin_minor"] = None
            state["items"] = 1

        def change(self, aggregate: Customer) -> None:
            aggregate.orders += 1
            if aggregate.lifecycle_stage in PROMOTED_BY_ORDER:
                aggregate.lifecycle_stage = "customer"

    class OrderRefunded(Touched):
        """See schemas/OrderRefunded.avsc."""

        order_id: str
        amount_minor: int
        currency: str
        reason: str | None

        def change(self, aggregate: Customer) -> None:
            aggregate.refunds += 1

    class SubscriptionStarted(Touched):
        """See schemas/SubscriptionStarted.avsc."""

        subscription_id: str
        plan: str
        amount_minor: int | None
        currency: str | None
        period: str | None

        def change(self, aggregate: Customer) -> None:
            if self.subscription_id not in aggregate.active_subscriptions:
                aggregate.active_subscriptions.append(self.subscription_id)
            aggregate.lifecycle_stage = "subscriber"

    class SubscriptionCancelled(Touched):
        """See schemas/SubscriptionCancelled.avsc."""

        subscription_id: str
        reason: str | None

        def change(self, aggregate: Customer) -> None:
            if self.subscription_id in aggregate.active_subscriptions:
                aggregate.active_subscriptions.remove(self.subscription_id)
            if not aggregate.active_subscriptions and aggregate.lifecycle_stage == "subscriber":
                aggregate.lifecycle_stage = "customer"

    class SupportTicketOpened(Touched):
        """See schemas/SupportTicketOpened.avsc."""

        ticket_id: str
        channel: str | None
        priority: str
        subject: str | None

        def change(self, aggregate: Customer) -> None:
            if self.ticket_id not in aggregate.open_tickets:
                aggregate.open_tickets.append(self.ticket_id)

    class SupportTicketResolved(Touched):
        """See schemas/SupportTicketResolved.avsc."""

        ticket_id: str
        resolution: str | None
        satisfaction: int | None

        def change(self, aggregate: Customer) -> None:
            if self.ticket_id in aggregate.open_tickets:
                aggregate.open_tickets.remove(self.ticket_id)

    class ContactLinkedToOrganisation(Touched):
        """See schemas/ContactLinkedToOrganisation.avsc."""

        organisation_id: str
        role: str

        def change(self, aggregate: Customer) -> None:
            aggregate.organisations[self.organisation_id] = self.role

    class CustomerErased(Touched):
        """See schemas/CustomerErased.avsc."""

        reason: str

        def change(self, aggregate: Customer) -> None:
            aggregate.erased = True
            aggregate.profile = {}
            aggregate.identities = []
            aggregate.lifecycle_stage = "erased"


def merge(absorbed: Customer, survivor: Customer, tp: Touchpoint) -> None:
    """Merge ``absorbed`` into ``survivor``: both sides change, or neither."""
    absorbed.check_can_merge()
    survivor.check_can_absorb()
    survivor.absorb(tp)
    absorbed.merge_into(tp)


def unmerge(absorbed: Customer, survivor: Customer, tp: Touchpoint) -> None:
    """Undo the merge of ``absorbed`` into ``survivor``: both sides change, or neither."""
    absorbed.unmerge(tp)  # the only check: release cannot fail
    survivor.release(tp)


MERGE_TYPES = frozenset({"CustomersMerged", "CustomersUnmerged"})

#: Catalogue event type -> stored event class, for the plain (non-merge) customer events.
TOUCHPOINT_EVENTS: dict[str, type[Touched]] = {
    name: getattr(Customer, name)
    for name, subject in CATALOGUE.items()
    if subject is Subject.CUSTOMER and name not in MERGE_TYPES
}
