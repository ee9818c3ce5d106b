"""Builders for valid touchpoints of every catalogue type, for tests."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from crm_ledger.aggregates import Touchpoint

AT = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)

DATA: dict[str, dict[str, Any]] = {
    "CustomerRegistered": {
        "name": "Ada Meyer",
        "email": "ada@example.org",
        "phone": "+49 30 1234",
        "address": None,
        "country": "DE",
        "region": "north",
        "segment": "retail",
        "lifecycle_stage": "lead",
    },
    "ProfileUpdated": {
        "name": None,
        "email": "ada.m@example.org",
        "phone": None,
        "address": "Hauptstr. 1",
        "country": None,
        "region": None,
        "segment": "smb",
        "lifecycle_stage": None,
    },
    "IdentityLinked": {"system": "loyalty", "value": "L-0001"},
    "CustomersMerged": {"survivor_id": "S1", "reason": "same email"},
    "CustomersUnmerged": {"survivor_id": "S1", "reason": "different people"},
    "ConsentChanged": {"purpose": "marketing", "channel": "email", "granted": True, "method": None},
    "InteractionRecorded": {
        "channel": "web",
        "device": "desktop",
        "direction": "inbound",
        "kind": "page_view",
        "score": None,
        "campaign": None,
        "note": None,
    },
    "OrderPlaced": {
        "order_id": "O1",
        "amount_minor": 1299,
        "currency": "EUR",
        "margin_minor": 300,
        "items": 2,
        "channel": "web",
    },
    "OrderRefunded": {"order_id": "O1", "amount_minor": 500, "currency": "EUR", "reason": None},
    "SubscriptionStarted": {
        "subscription_id": "S-1",
        "plan": "plus",
        "amount_minor": 999,
        "currency": "EUR",
        "period": "month",
    },
    "SubscriptionCancelled": {"subscription_id": "S-1", "reason": None},
    "SupportTicketOpened": {
        "ticket_id": "T1",
        "channel": "phone",
        "priority": "high",
        "subject": "broken parcel",
    },
    "SupportTicketResolved": {"ticket_id": "T1", "resolution": "refunded", "satisfaction": 8},
    "OrganisationRegistered": {
        "name": "Acme BV",
        "industry": "retail",
        "country": "NL",
        "size": "mid",
    },
    "ContactLinkedToOrganisation": {"organisation_id": "ORG1", "role": "buyer"},
    "InitiativeStarted": {"name": "Loyalty", "scope": {"region": "north"}, "description": None},
    "InitiativeEnded": {"outcome": None},
    "CustomerErased": {"reason": "request"},
}


def tp(
    event_type: str,
    customer_id: str = "C1",
    *,
    at: datetime = AT,
    event_id: uuid.UUID | None = None,
    source: str = "test",
    actor: str | None = None,
    **data: Any,
) -> Touchpoint:
    """A valid touchpoint of ``event_type``; keyword arguments override its fields."""
    return Touchpoint(
        event_type=event_type,
        event_id=event_id or uuid.uuid4(),
        customer_id=customer_id,
        occurred_at=at,
        source=source,
        actor=actor,
        correlation_id=None,
        data={**DATA[event_type], **data},
    )


def spy_on_key_look_ups(ledger: Any) -> tuple[list[list[bytes]], list[bytes]]:
    """Record the ledger's data-key look-ups from now on: the streams of each batched one
    (``load_keys``) and each stream asked for one at a time."""
    recorder = ledger.ledger_recorder
    batched: list[list[bytes]] = []
    one_by_one: list[bytes] = []
    load_keys, load_key = recorder.load_keys, recorder.load_key
    recorder.load_keys = lambda streams: batched.append(streams) or load_keys(streams)
    recorder.data_keys.load = lambda stream: one_by_one.append(stream) or load_key(stream)
    return batched, one_by_one
