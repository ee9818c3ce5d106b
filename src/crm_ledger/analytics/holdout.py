"""Predicted against actual repeat purchases: per-customer predictions of a fitted model, the
tracking curve per period and the comparison by calibration frequency (numpy only here)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np

from crm_ledger.analytics import clv
from crm_ledger.analytics.clv import DAY_MICROS

if TYPE_CHECKING:
    from collections.abc import Mapping

#: One year, in days, for turning an annual discount rate into one per step.
YEAR_DAYS = 365.25

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Period:
    """One period of a tracking comparison: actual and predicted repeat purchases."""

    start: datetime
    holdout: bool
    actual: int
    predicted: float
    cumulative_actual: int
    cumulative_predicted: float


@dataclass(frozen=True, slots=True)
class FrequencyGroup:
    """Customers with the same calibration frequency: mean holdout purchases, both ways."""

    frequency: str
    customers: int
    actual: float
    predicted: float


def predict(
    summary: clv.Summary,
    bgnbd: clv.Fit,
    gamma_gamma: clv.Fit,
    horizon: float,
    annual_discount: float,
) -> list[dict[str, Any]]:
    """Every customer's summary with P(alive), expected purchases, spend and discounted value."""
    x, t_x, t = summary.frequency, summary.recency, summary.age
    alive = clv.probability_alive(bgnbd.params, x, t_x, t)
    purchases = clv.expected_purchases(bgnbd.params, horizon, x, t_x, t)
    if gamma_gamma.params:
        spend = clv.expected_spend(gamma_gamma.params, x, summary.monetary)
        step = 4.0 * 7.0 / clv.UNITS[summary.unit]  # four weeks
        per_step = (1 + annual_discount) ** (step * clv.UNITS[summary.unit] / YEAR_DAYS) - 1
        value = clv.discounted_value(
            bgnbd.params, gamma_gamma.params, summary,
            horizon=horizon, step=step, discount_per_step=per_step,
        )  # fmt: skip
    else:
        spend = value = np.full_like(x, np.nan)
    return [
        {
            "customer_id": c,
            "frequency": float(x[i]),
            "recency": float(t_x[i]),
            "age": float(t[i]),
            "monetary": float(summary.monetary[i]),
            "p_alive": float(alive[i]),
            "expected_purchases": float(purchases[i]),
            "expected_spend": float(spend[i]),
            "clv": float(value[i]),
        }
        for i, c in enumerate(summary.customers)
    ]


@dataclass(frozen=True, slots=True)
class Comparison:
    """A calibration fit's predictions against the holdout's actual repeat purchases."""

    customers: int
    actual: int
    predicted: float
    periods: list[Period]
    by_frequency: list[FrequencyGroup]


def compare(
    fit: clv.Fit,
    calibration: clv.Summary,
    days: Mapping[str, Mapping[int, float]],
    end_day: int,
    holdout_day: int,
    scale: float,
) -> Comparison:
    """Repeat purchases in (``end_day``, ``holdout_day``] against the fit's predictions."""
    firsts = calibration.first_purchase // DAY_MICROS
    cohort = dict(zip(calibration.customers, firsts.tolist(), strict=True))
    start = int(firsts.min())
    periods = _tracking(fit.params, days, cohort, start, end_day, holdout_day, scale)
    span = (holdout_day - end_day) / scale
    predicted = clv.expected_purchases(
        fit.params, span, calibration.frequency, calibration.recency, calibration.age
    )
    actual = np.array(
        [sum(1 for d in days[c] if end_day < d <= holdout_day) for c in calibration.customers]
    )
    return Comparison(
        customers=len(calibration.customers),
        actual=int(actual.sum()),
        predicted=float(predicted.sum()),
        periods=periods,
        by_frequency=_by_frequency(calibration.frequency, actual, predicted),
    )


def _tracking(
    params: dict[str, float],
    days: Mapping[str, Mapping[int, float]],
    cohort: dict[str, int],
    start: int,
    end_day: int,
    holdout_day: int,
    scale: float,
) -> list[Period]:
    """Repeat purchases per period of ``scale`` days from the cohort's first purchase."""
    length = int(scale)
    edges = list(range(start, holdout_day + 1, length))
    counts = np.zeros(len(edges))
    for customer, first in cohort.items():
        for d in days[customer]:
            if first < d <= holdout_day:
                counts[(d - start) // length] += 1
    firsts = np.array(list(cohort.values()), dtype=np.float64)
    cumulative_predicted = [
        float(
            clv.expected_repeat_purchases_since_first(params, (e + length - firsts) / scale).sum()
        )
        for e in edges
    ]
    periods, total_actual, previous = [], 0, 0.0
    for k, e in enumerate(edges):
        total_actual += int(counts[k])
        periods.append(
            Period(
                start=_EPOCH + timedelta(days=e),
                holdout=e > end_day,
                actual=int(counts[k]),
                predicted=cumulative_predicted[k] - previous,
                cumulative_actual=total_actual,
                cumulative_predicted=cumulative_predicted[k],
            )
        )
        previous = cumulative_predicted[k]
    return periods


def _by_frequency(
    frequency: np.ndarray[Any, Any], actual: np.ndarray[Any, Any], predicted: np.ndarray[Any, Any]
) -> list[FrequencyGroup]:
    groups = []
    for x in range(8):
        chosen = frequency == x if x < 7 else frequency >= 7
        if chosen.any():
            groups.append(
                FrequencyGroup(
                    frequency=str(x) if x < 7 else "7+",
                    customers=int(chosen.sum()),
                    actual=float(actual[chosen].mean()),
                    predicted=float(predicted[chosen].mean()),
                )
            )
    return groups
