"""Lifetime value: what each customer has bought, per currency, in minor units.

Everything is a sum, minimum or maximum over orders and refunds, so a customer's value does
not depend on the order events arrive in; roll-ups (merged customers, organisations) combine
rows with the same rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from crm_ledger.projections.contributions import Column, Rule, Table, moment

if TYPE_CHECKING:
    from collections.abc import Iterator
    from datetime import datetime

    from crm_ledger.application import LogRecord

LTV = Table(
    "ltv",
    (
        Column("stream", "text", Rule.KEY),
        Column("currency", "text", Rule.KEY),
        Column("orders", "int", Rule.SUM),
        Column("gross_minor", "int", Rule.SUM),
        Column("refunds", "int", Rule.SUM),
        Column("refunded_minor", "int", Rule.SUM),
        Column("margin_minor", "int", Rule.SUM),
        Column("margin_orders", "int", Rule.SUM),
        Column("items", "int", Rule.SUM),
        Column("first_order_at", "int", Rule.MIN),
        Column("last_order_at", "int", Rule.MAX),
    ),
    key=("stream", "currency"),
)

DAYS_PER_MONTH = 30.4375

#: ISO 4217 currencies without minor units (all others used here have two decimals).
ZERO_DECIMAL = frozenset({"JPY", "KRW", "ISK", "CLP", "VND", "HUF", "XOF", "XAF", "UGX"})


def minor_unit_exponent(currency: str) -> int:
    """How many decimals the currency's minor unit has (100 cents to the euro: 2)."""
    return 0 if currency in ZERO_DECIMAL else 2


class LifetimeValue:
    """Per customer stream and currency: orders, gross, refunds, margin, first and last order."""

    name: str = "lifetime_value"
    tables: tuple[Table, ...] = (LTV,)
    kinds: frozenset[str] | None = frozenset({"OrderPlaced", "OrderRefunded"})

    def contribute(self, record: LogRecord) -> Iterator[tuple[str, dict[str, Any]]]:
        """The value ``record`` adds."""
        if record.kind == "OrderPlaced":
            data = record.data
            margin = data.get("margin_minor")
            yield (
                "ltv",
                {
                    "stream": record.stream,
                    "currency": data["currency"],
                    "orders": 1,
                    "gross_minor": data["amount_minor"],
                    "margin_minor": margin or 0,
                    "margin_orders": 0 if margin is None else 1,
                    "items": data.get("items", 1),
                    "first_order_at": record.occurred,
                    "last_order_at": record.occurred,
                },
            )
        elif record.kind == "OrderRefunded":
            yield (
                "ltv",
                {
                    "stream": record.stream,
                    "currency": record.data["currency"],
                    "refunds": 1,
                    "refunded_minor": record.data["amount_minor"],
                },
            )


@dataclass(frozen=True, slots=True)
class Value:
    """A lifetime value in one currency, with the figures analysts derive from it."""

    subject: str
    currency: str
    orders: int
    gross_minor: int
    refunds: int
    refunded_minor: int
    net_minor: int
    margin_minor: int | None
    items: int
    first_order_at: datetime | None
    last_order_at: datetime | None
    average_order_minor: int | None
    tenure_days: int | None  # from the first order to the reference time
    orders_per_month: float | None  # between the first and the last order

    @classmethod
    def of(cls, subject: str, row: dict[str, Any], reference: datetime) -> Value:
        """The value of an ``ltv`` row (or roll-up), with tenure measured to ``reference``."""
        orders = row["orders"]
        first = moment(row["first_order_at"]) if row["first_order_at"] is not None else None
        tenure = max(0, (reference - first).days) if first else None
        return cls(
            subject=subject,
            currency=row["currency"],
            orders=orders,
            gross_minor=row["gross_minor"],
            refunds=row["refunds"],
            refunded_minor=row["refunded_minor"],
            net_minor=row["gross_minor"] - row["refunded_minor"],
            margin_minor=row["margin_minor"] if row["margin_orders"] else None,
            items=row["items"],
            first_order_at=first,
            last_order_at=moment(row["last_order_at"]) if row["last_order_at"] else None,
            average_order_minor=round(row["gross_minor"] / orders) if orders else None,
            tenure_days=tenure,
            orders_per_month=_per_month(orders, row["first_order_at"], row["last_order_at"]),
        )


def _per_month(orders: int, first: int | None, last: int | None) -> float | None:
    """Orders a month between the first and the last order (at least one month)."""
    if first is None or last is None:
        return None
    months = (last - first) / 1e6 / 86_400 / DAYS_PER_MONTH
    return round(orders / max(1.0, months), 3)
