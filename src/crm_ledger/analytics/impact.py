"""Initiative impact: value per customer-week before, during and after, and the
difference-in-differences between the exposed customers and a control group.

A customer counts for the weeks from their first to their last active touch (their observed
active span), so customers who joined late or went quiet do not dilute the averages. Touches
that follow from earlier activity or from the back office (a refund, a resolved ticket, an
erasure, a merge) do not extend the span, though their value still counts. Each group's
value per customer-week in a period is its total value over its total customer-weeks. The
95% interval comes from a cluster bootstrap: customers (with all their weeks) are resampled
within each group, which keeps each customer's weeks together as the data were generated.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from crm_ledger.analytics.comparison import (
    CONTROL,
    EXPOSED,
    METRICS,
    PASSIVE,
    PERIODS,
    Activity,
    Estimate,
    GroupPeriod,
    Impact,
    period_of,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from numpy.typing import NDArray


__all__ = [
    "CONTROL",
    "EXPOSED",
    "METRICS",
    "PASSIVE",
    "PERIODS",
    "Activity",
    "Estimate",
    "GroupPeriod",
    "Impact",
    "measure",
    "period_of",
]


def measure(
    activity: Iterable[Activity],
    groups: Mapping[str, str],
    *,
    metric: str,
    start_week: int,
    end_week: int | None,
    resamples: int = 2000,
    seed: int = 0,
) -> Impact:
    """Compare the customers ``groups`` puts in EXPOSED with those in CONTROL."""
    by_customer: dict[str, list[Activity]] = {}
    for a in activity:
        if a.customer in groups:
            by_customer.setdefault(a.customer, []).append(a)
    first_week = min((a.week for acts in by_customer.values() for a in acts), default=start_week)
    last_week = max((a.week for acts in by_customer.values() for a in acts), default=start_week)
    weeks = list(range(first_week, last_week + 1))
    sums: dict[str, tuple[NDArray[np.float64], NDArray[np.float64]]] = {}
    weekly: dict[str, list[float | None]] = {}
    for group in (EXPOSED, CONTROL):
        members = {c: acts for c, acts in by_customer.items() if groups[c] == group}
        sums[group], weekly[group] = _group_sums(
            members, metric, weeks, start_week=start_week, end_week=end_week
        )
    rng = np.random.default_rng(seed)
    boot = {g: _bootstrap(*sums[g], resamples, rng) for g in sums}
    return Impact(
        metric=metric,
        start_week=start_week,
        end_week=end_week,
        groups=[_group_period(g, p, *sums[g]) for g in sums for p in range(3)],
        estimates=[_estimate(p, sums, boot) for p in (1, 2)],
        weeks=weeks,
        weekly=weekly,
        resamples=resamples,
    )


def _group_sums(
    members: Mapping[str, list[Activity]],
    metric: str,
    weeks: list[int],
    *,
    start_week: int,
    end_week: int | None,
) -> tuple[tuple[NDArray[np.float64], NDArray[np.float64]], list[float | None]]:
    """Per member and period: the metric's total and the active weeks; and per week, the
    metric per active member."""
    first_week = weeks[0]
    value = np.zeros((len(members), 3))
    span = np.zeros((len(members), 3))
    week_value = np.zeros(len(weeks))
    week_count = np.zeros(len(weeks))
    for i, acts in enumerate(members.values()):
        active = [a.week for a in acts if a.active]
        if active:
            lo, hi = min(active), max(active)
            for w in range(lo, hi + 1):
                span[i, period_of(w, start_week, end_week)] += 1
            week_count[lo - first_week : hi - first_week + 1] += 1
        for a in acts:
            v = getattr(a, metric)
            value[i, period_of(a.week, start_week, end_week)] += v
            week_value[a.week - first_week] += v
    weekly = [float(v / n) if n else None for v, n in zip(week_value, week_count, strict=True)]
    return (value, span), weekly


def _group_period(
    group: str, period: int, value: NDArray[np.float64], span: NDArray[np.float64]
) -> GroupPeriod:
    weeks = span[:, period].sum()
    total = value[:, period].sum()
    return GroupPeriod(
        group=group,
        period=PERIODS[period],
        customers=int((span[:, period] > 0).sum()),
        customer_weeks=int(weeks),
        total=float(total),
        per_customer_week=float(total / weeks) if weeks else None,
    )


def _rates(value: NDArray[np.float64], span: NDArray[np.float64]) -> NDArray[np.float64]:
    """Value per customer-week per period (NaN where a period has no weeks)."""
    totals, weeks = value.sum(axis=0), span.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(weeks > 0, totals / np.where(weeks > 0, weeks, 1), np.nan)


def _bootstrap(
    value: NDArray[np.float64], span: NDArray[np.float64], resamples: int, rng: np.random.Generator
) -> NDArray[np.float64]:
    """Per-period rates of ``resamples`` resamples of the customers (resamples x 3)."""
    n = len(value)
    if n == 0:
        return np.full((resamples, 3), np.nan)
    out = np.empty((resamples, 3))
    step = max(1, 2_000_000 // n)  # bounded memory: count matrices of at most ~16 MB
    for start in range(0, resamples, step):
        size = min(step, resamples - start)
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=size).astype(np.float64)
        totals, weeks = counts @ value, counts @ span
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start : start + size] = np.where(weeks > 0, totals / weeks, np.nan)
    return out


def _estimate(
    period: int,
    sums: Mapping[str, tuple[NDArray[np.float64], NDArray[np.float64]]],
    boot: Mapping[str, NDArray[np.float64]],
) -> Estimate:
    exposed, control = _rates(*sums[EXPOSED]), _rates(*sums[CONTROL])
    point = (exposed[period] - exposed[0]) - (control[period] - control[0])
    draws = (boot[EXPOSED][:, period] - boot[EXPOSED][:, 0]) - (
        boot[CONTROL][:, period] - boot[CONTROL][:, 0]
    )
    draws = draws[~np.isnan(draws)]
    if np.isnan(point) or len(draws) == 0:
        return Estimate(PERIODS[period], None, None, None)
    low, high = np.percentile(draws, [2.5, 97.5])
    return Estimate(PERIODS[period], float(point), float(low), float(high))
