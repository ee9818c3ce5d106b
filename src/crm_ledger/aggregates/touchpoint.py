"""The touchpoint: one inbound event of the catalogue, as the domain sees it, and its rules."""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import Enum
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from crm_ledger.aggregates.currencies import CURRENCIES
from crm_ledger.errors import InvalidEvent

if TYPE_CHECKING:
    from collections.abc import Mapping

#: Namespace for deriving aggregate ids from the ids sources use.
ID_NAMESPACE = uuid.UUID("6f0b1c52-6a4e-4d7e-9d1b-2f5c3f0e8a11")

ENVELOPE_FIELDS = ("event_id", "customer_id", "occurred_at", "source", "actor", "correlation_id")


class Subject(Enum):
    """Which kind of aggregate a touchpoint's ``customer_id`` names."""

    CUSTOMER = "customer"
    ORGANISATION = "organisation"
    INITIATIVE = "initiative"


#: The catalogue: every event type the ledger accepts, and what its subject id names.
CATALOGUE: dict[str, Subject] = {
    "CustomerRegistered": Subject.CUSTOMER,
    "ProfileUpdated": Subject.CUSTOMER,
    "IdentityLinked": Subject.CUSTOMER,
    "CustomersMerged": Subject.CUSTOMER,
    "CustomersUnmerged": Subject.CUSTOMER,
    "ConsentChanged": Subject.CUSTOMER,
    "InteractionRecorded": Subject.CUSTOMER,
    "OrderPlaced": Subject.CUSTOMER,
    "OrderRefunded": Subject.CUSTOMER,
    "SubscriptionStarted": Subject.CUSTOMER,
    "SubscriptionCancelled": Subject.CUSTOMER,
    "SupportTicketOpened": Subject.CUSTOMER,
    "SupportTicketResolved": Subject.CUSTOMER,
    "ContactLinkedToOrganisation": Subject.CUSTOMER,
    "CustomerErased": Subject.CUSTOMER,
    "OrganisationRegistered": Subject.ORGANISATION,
    "InitiativeStarted": Subject.INITIATIVE,
    "InitiativeEnded": Subject.INITIATIVE,
}

#: Fields holding personal data, per event type (the schemas mark the same with "personal").
PERSONAL_FIELDS: dict[str, tuple[str, ...]] = {
    "CustomerRegistered": ("name", "email", "phone", "address"),
    "ProfileUpdated": ("name", "email", "phone", "address"),
    "IdentityLinked": ("value",),
    "InteractionRecorded": ("note",),
    "SupportTicketOpened": ("subject",),
    "SupportTicketResolved": ("resolution",),
}

CONSENT_PURPOSES = frozenset({"marketing", "analytics", "profiling", "third_party", "service"})
#: Bounds of the contract's numbers, chosen so that the read side can hold any sum of them:
#: money in minor units up to 10^12 (ten billion in a two-decimal currency), so even 9 million
#: orders at the maximum add up within a signed 64-bit integer.
MAX_AMOUNT_MINOR = 10**12
MAX_ITEMS = 1_000_000
MAX_SCORE = 10
MAX_ID_LENGTH = 200
EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Touchpoint:
    """One event of the catalogue: the shared envelope plus its type's own fields in ``data``."""

    event_type: str
    event_id: uuid.UUID
    customer_id: str
    occurred_at: datetime
    source: str
    actor: str | None = None
    correlation_id: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)

    @property
    def subject(self) -> Subject:
        """The kind of aggregate ``customer_id`` names."""
        return CATALOGUE[self.event_type]

    def personal_values(self) -> dict[str, Any]:
        """The personal fields of this event that carry a value."""
        names = PERSONAL_FIELDS.get(self.event_type, ())
        return {n: self.data[n] for n in names if self.data.get(n) is not None}

    def fingerprint(self, *, unknown: frozenset[str] = frozenset()) -> str:
        """SHA-256 (hex) of the event's content: what a re-send must repeat to be a duplicate.

        Fields named in ``unknown`` are left out (say, personal data no longer readable).
        """
        content = {
            "type": self.event_type,
            "customer_id": self.customer_id,
            "occurred_at": self.occurred_at.astimezone(UTC).isoformat(),
            "source": self.source,
            "actor": self.actor,
            "correlation_id": self.correlation_id,
            "data": {k: v for k, v in self.data.items() if k not in unknown},
        }
        canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), default=_plain)
        return hashlib.sha256(canonical.encode()).hexdigest()


def _plain(value: Any) -> Any:
    """JSON for the values a touchpoint's fields can hold beyond JSON's own."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    return str(value)


def subject_uuid(subject: Subject, subject_id: str) -> uuid.UUID:
    """The aggregate id for a customer, organisation or initiative id used by sources."""
    if subject is Subject.CUSTOMER:
        return customer_uuid(subject_id)
    return _named_uuid(subject.value, subject_id)


@lru_cache(maxsize=65536)
def customer_uuid(customer_id: str) -> uuid.UUID:
    """The Customer aggregate id for a source's customer id (cached: on every event's path;
    one entry per customer, whichever of the two functions asked)."""
    return uuid.uuid5(ID_NAMESPACE, f"customer:{customer_id}")


@lru_cache(maxsize=8192)
def _named_uuid(kind: str, subject_id: str) -> uuid.UUID:
    """Organisations' and initiatives' ids (fewer, in a cache of their own)."""
    return uuid.uuid5(ID_NAMESPACE, f"{kind}:{subject_id}")


def check_touchpoint(
    tp: Touchpoint, *, now: datetime, max_future: timedelta = timedelta(days=1)
) -> None:
    """Raise InvalidEvent naming the field and problem when ``tp`` breaks a contract rule."""
    if tp.event_type not in CATALOGUE:
        raise InvalidEvent("type", f"unknown event type {tp.event_type!r}")
    _check_envelope(tp, now, max_future)
    for rule in _RULES.get(tp.event_type, ()):
        rule(tp)


def _fail(tp: Touchpoint, name: str, problem: str) -> InvalidEvent:
    return InvalidEvent(name, problem, event_type=tp.event_type)


def _check_envelope(tp: Touchpoint, now: datetime, max_future: timedelta) -> None:
    _check_id(tp, "customer_id", tp.customer_id)
    _check_id(tp, "source", tp.source)
    occurred_at = tp.occurred_at
    if occurred_at.tzinfo is None:
        raise _fail(tp, "occurred_at", "must carry a time zone")
    if occurred_at - now > max_future:
        raise _fail(tp, "occurred_at", f"{occurred_at.isoformat()} is in the future")
    if occurred_at < EARLIEST:
        raise _fail(tp, "occurred_at", f"{occurred_at.isoformat()} is before 1900")


def _check_id(tp: Touchpoint, name: str, value: str) -> None:
    if value and not value[0].isspace() and not value[-1].isspace():
        if len(value) > MAX_ID_LENGTH:
            raise _fail(tp, name, f"longer than {MAX_ID_LENGTH} characters")
        return
    if not value.strip():
        raise _fail(tp, name, "must not be empty")
    raise _fail(tp, name, "must not start or end with white space")


def _money(amount_field: str, *, optional: bool = False) -> Any:
    def rule(tp: Touchpoint) -> None:
        amount = tp.data.get(amount_field)
        currency = tp.data.get("currency")
        if amount is None and optional:
            return
        if amount is None or isinstance(amount, bool) or not isinstance(amount, int):
            raise _fail(tp, amount_field, "must be a whole number of minor units")
        if amount < 0:
            raise _fail(tp, amount_field, f"must not be negative, got {amount}")
        if amount > MAX_AMOUNT_MINOR:
            raise _fail(tp, amount_field, f"must be at most {MAX_AMOUNT_MINOR:,}, got {amount:,}")
        if not isinstance(currency, str) or currency not in CURRENCIES:
            shown = repr(currency)[:40]
            raise _fail(tp, "currency", f"must be an ISO 4217 code like EUR, got {shown}")

    return rule


def _score(name: str) -> Any:
    def rule(tp: Touchpoint) -> None:
        score = tp.data.get(name)
        if score is not None and not 0 <= score <= MAX_SCORE:
            raise _fail(tp, name, f"must be between 0 and {MAX_SCORE}, got {score}")

    return rule


def _bounded(name: str, low: int, high: int) -> Any:
    def rule(tp: Touchpoint) -> None:
        value = tp.data.get(name)
        if value is not None and not low <= value <= high:
            raise _fail(tp, name, f"must be between {low:,} and {high:,}, got {value:,}")

    return rule


def _other_customer(tp: Touchpoint) -> None:
    survivor = tp.data.get("survivor_id") or ""
    _check_id(tp, "survivor_id", survivor)
    if survivor == tp.customer_id:
        raise _fail(tp, "survivor_id", "a customer cannot be merged with itself")


def _purpose(tp: Touchpoint) -> None:
    purpose = tp.data.get("purpose")
    if purpose not in CONSENT_PURPOSES:
        allowed = ", ".join(sorted(CONSENT_PURPOSES))
        raise _fail(tp, "purpose", f"must be one of {allowed}, got {purpose!r}")


def _organisation(tp: Touchpoint) -> None:
    _check_id(tp, "organisation_id", tp.data.get("organisation_id") or "")


_RULES: dict[str, tuple[Any, ...]] = {
    "OrderPlaced": (
        _money("amount_minor"),
        _bounded("margin_minor", -MAX_AMOUNT_MINOR, MAX_AMOUNT_MINOR),
        _bounded("items", 0, MAX_ITEMS),
    ),
    "OrderRefunded": (_money("amount_minor"),),
    "SubscriptionStarted": (_money("amount_minor", optional=True),),
    "InteractionRecorded": (_score("score"),),
    "SupportTicketResolved": (_score("satisfaction"),),
    "CustomersMerged": (_other_customer,),
    "CustomersUnmerged": (_other_customer,),
    "ConsentChanged": (_purpose,),
    "ContactLinkedToOrganisation": (_organisation,),
}
