"""Journey timeline: every touch of a customer, across channels, in business-time order."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from crm_ledger.projections.contributions import Column, Rule, Table, moment, week_of

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from datetime import datetime

    from crm_ledger.application import LogRecord

TOUCHES = Table(
    "touches",
    (
        Column("stream", "text", Rule.KEY),
        Column("occurred", "int", Rule.KEY),
        Column("event_id", "text", Rule.KEY),
        Column("recorded", "int"),
        Column("week", "int"),
        Column("kind", "text"),
        Column("channel", "text"),
        Column("device", "text"),
        Column("detail", "text"),
        Column("direction", "text"),
        Column("campaign", "text"),
        Column("amount_minor", "int"),
        Column("currency", "text"),
        Column("score", "int"),
        Column("granted", "int"),  # consent changes: 1 granted, 0 withdrawn
    ),
    key=("stream", "occurred", "event_id"),
    append_only=True,
)

#: The ledger's own bookkeeping: not something the customer did or received.
NOT_TOUCHES = frozenset({"Opened", "CustomerAbsorbed", "CustomerReleased"})

#: Which field of each event type says more about the touch.
_DETAIL = {
    "InteractionRecorded": "kind",
    "OrderPlaced": "order_id",
    "OrderRefunded": "order_id",
    "SupportTicketOpened": "ticket_id",
    "SupportTicketResolved": "ticket_id",
    "SubscriptionStarted": "plan",
    "SubscriptionCancelled": "subscription_id",
    "ConsentChanged": "purpose",
    "ContactLinkedToOrganisation": "organisation_id",
    "IdentityLinked": "system",
    "CustomersMerged": "survivor_id",
    "CustomersUnmerged": "survivor_id",
}


class JourneyTimeline:
    """One row per touch: when, which channel and device, what kind, money moved, score."""

    name: str = "journey_timeline"
    tables: tuple[Table, ...] = (TOUCHES,)
    kinds: frozenset[str] | None = None  # every touch; bookkeeping is skipped in contribute

    def contribute(self, record: LogRecord) -> Sequence[tuple[str, tuple[Any, ...]]]:
        """The touch ``record`` is (a row of TOUCHES' columns), unless it is bookkeeping."""
        kind = record.kind
        if kind in NOT_TOUCHES:
            return ()
        get = record.data.get
        amount = get("amount_minor")
        if kind == "OrderRefunded" and amount is not None:
            amount = -amount
        detail = _DETAIL.get(kind)
        occurred = record.occurred
        row = (
            record.stream,
            occurred,
            record.event_id,
            record.recorded,
            week_of(occurred) if occurred is not None else None,
            kind,
            get("channel"),
            get("device"),
            get(detail) if detail else None,
            get("direction"),
            get("campaign"),
            amount,
            get("currency"),
            get("score", get("satisfaction")),
            None if (granted := get("granted")) is None else int(granted),
        )
        return (("touches", row),)


@dataclass(frozen=True, slots=True)
class Touch:
    """One step of a journey, with the gap since the previous touch and channel switches."""

    occurred_at: datetime
    recorded_at: datetime
    kind: str
    channel: str | None
    device: str | None
    detail: str | None
    direction: str | None
    campaign: str | None
    amount_minor: int | None
    currency: str | None
    score: int | None
    gap_seconds: float | None
    channel_switch: bool
    event_id: str
    consent_violation: bool = False


def journey(rows: Iterable[dict[str, Any]]) -> list[Touch]:
    """Touch rows as a journey in business-time order (ties by event id)."""
    ordered = sorted(rows, key=lambda r: (r["occurred"], r["event_id"]))
    violations = consent_violations(ordered)
    steps: list[Touch] = []
    previous_at: int | None = None
    previous_channel: str | None = None
    for row in ordered:
        channel = row["channel"]
        switch = channel is not None and previous_channel not in (None, channel)
        steps.append(
            Touch(
                occurred_at=moment(row["occurred"]),
                recorded_at=moment(row["recorded"]),
                kind=row["kind"],
                channel=channel,
                device=row["device"],
                detail=row["detail"],
                direction=row["direction"],
                campaign=row["campaign"],
                amount_minor=row["amount_minor"],
                currency=row["currency"],
                score=row["score"],
                gap_seconds=(
                    (row["occurred"] - previous_at) / 1e6 if previous_at is not None else None
                ),
                channel_switch=switch,
                event_id=row["event_id"],
                consent_violation=row["event_id"] in violations,
            )
        )
        previous_at = row["occurred"]
        if channel is not None:
            previous_channel = channel
    return steps


def is_marketing(row: dict[str, Any]) -> bool:
    """An outbound touch from a campaign: what marketing consent governs."""
    return (
        row["kind"] == "InteractionRecorded"
        and row["direction"] == "outbound"
        and row["campaign"] is not None
    )


def consent_violations(rows: Iterable[dict[str, Any]]) -> dict[str, int]:
    """Marketing touches that occurred while marketing consent for their channel stood
    withdrawn: event id -> when that withdrawal occurred. The latest decision by business
    time counts, whether for the channel or for every channel, whatever the arrival order."""
    ordered = sorted(rows, key=lambda r: (r["occurred"], r["event_id"]))
    decisions: dict[str | None, tuple[int, bool]] = {}  # channel (None: all) -> (when, granted)
    found: dict[str, int] = {}
    for row in ordered:
        if row["kind"] == "ConsentChanged" and row["detail"] == "marketing":
            decisions[row["channel"]] = (row["occurred"], bool(row["granted"]))
        elif is_marketing(row):
            applicable = [d for d in (decisions.get(row["channel"]), decisions.get(None)) if d]
            if applicable:
                when, granted = max(applicable)
                if not granted:
                    found[row["event_id"]] = when
    return found
