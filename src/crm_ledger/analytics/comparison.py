"""The shapes of an initiative comparison (groups, periods, metrics, weekly activity, the
result), without numpy: what callers name before any statistics run."""

from __future__ import annotations

from dataclasses import dataclass

PERIODS = ("before", "during", "after")
METRICS = ("net_revenue", "orders", "interactions")
EXPOSED, CONTROL = "exposed", "control"

#: Touch kinds that do not show a customer being active.
PASSIVE = frozenset(
    {
        "OrderRefunded",
        "SupportTicketResolved",
        "CustomerErased",
        "CustomersMerged",
        "CustomersUnmerged",
    }
)


@dataclass(frozen=True, slots=True)
class Activity:
    """One customer's activity in one week: the three metrics."""

    customer: str
    week: int
    net_revenue: int
    orders: int
    interactions: int
    active: bool = True


@dataclass(frozen=True, slots=True)
class GroupPeriod:
    """One group's value per customer-week in one period."""

    group: str
    period: str
    customers: int
    customer_weeks: int
    total: float
    per_customer_week: float | None


@dataclass(frozen=True, slots=True)
class Estimate:
    """A difference-in-differences against the before period, with its bootstrap interval."""

    period: str
    estimate: float | None
    ci_low: float | None
    ci_high: float | None


@dataclass(frozen=True, slots=True)
class Impact:
    """The whole comparison: means per group and period, the estimates, the weekly series."""

    metric: str
    start_week: int
    end_week: int | None
    groups: list[GroupPeriod]
    estimates: list[Estimate]
    weeks: list[int]
    weekly: dict[str, list[float | None]]
    resamples: int


def period_of(week: int, start_week: int, end_week: int | None) -> int:
    """0 before the window, 1 during it, 2 after it."""
    if week < start_week:
        return 0
    return 1 if end_week is None or week < end_week else 2
