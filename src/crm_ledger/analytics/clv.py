"""Predictive customer lifetime value: BG/NBD (Fader, Hardie & Lee 2005) for repeat purchasing
and Gamma-Gamma (Fader & Hardie 2013) for spend per purchase, on numpy and scipy.

The models read a per-customer summary of purchases up to a calibration end: ``frequency`` (x,
the number of repeat purchase days), ``recency`` (t_x, the time of the last purchase after the
first), ``age`` (T, the time from the first purchase to the calibration end) and ``monetary``
(the mean spend of the repeat purchase days). Purchases on the same day count once (their spend
summed), as in the published analyses. Times are in a configurable unit, weeks by default.

Log-likelihoods are written with log-gamma and log-sum-exp terms so that large frequencies and
long histories do not overflow; fits are bounded L-BFGS-B in log-parameter space on the
distinct (x, t_x, T) rows with their counts, and report whether they converged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import optimize, special

from crm_ledger.errors import InvalidInput

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from numpy.typing import NDArray

UNITS = {"days": 1.0, "weeks": 7.0}
DAY_MICROS = 86_400 * 1_000_000
#: Log-parameter bounds: every parameter stays within [e^-12, e^12].
_BOUND = 12.0


@dataclass(frozen=True, slots=True)
class Purchase:
    """One purchase: who, when (microseconds since the epoch) and how much (major units)."""

    customer: str
    at: int
    amount: float


@dataclass(frozen=True, slots=True)
class Summary:
    """Per-customer frequency, recency, age and mean repeat spend, in ``unit``."""

    customers: list[str]
    frequency: NDArray[np.float64]
    recency: NDArray[np.float64]
    age: NDArray[np.float64]
    monetary: NDArray[np.float64]
    first_purchase: NDArray[np.int64]
    unit: str


@dataclass(frozen=True, slots=True)
class Fit:
    """A fitted model: parameters, log-likelihood, and how the optimiser ended."""

    model: str
    params: dict[str, float]
    log_likelihood: float
    customers: int
    converged: bool
    message: str
    iterations: int


def summarise(
    purchases: Iterable[Purchase], *, calibration_end: int, unit: str = "weeks"
) -> Summary:
    """The summary of every customer with a purchase by ``calibration_end`` (microseconds;
    the whole of that day counts)."""
    if unit not in UNITS:
        raise InvalidInput(f"unit must be one of {', '.join(UNITS)}, got {unit!r}")
    end_day = calibration_end // DAY_MICROS
    days: dict[str, dict[int, float]] = {}
    for p in purchases:
        day = p.at // DAY_MICROS
        if day <= end_day:
            spend = days.setdefault(p.customer, {})
            spend[day] = spend.get(day, 0.0) + p.amount
    if not days:
        raise InvalidInput("no purchases by the calibration end; choose a later date")
    customers = sorted(days)
    scale = UNITS[unit]
    n = len(customers)
    frequency, recency, age, monetary = (np.zeros(n) for _ in range(4))
    first_purchase = np.zeros(n, dtype=np.int64)
    for i, c in enumerate(customers):
        ordered = sorted(days[c])
        first, last = ordered[0], ordered[-1]
        frequency[i] = len(ordered) - 1
        recency[i] = (last - first) / scale
        age[i] = (end_day - first) / scale
        repeats = [days[c][d] for d in ordered[1:]]
        monetary[i] = sum(repeats) / len(repeats) if repeats else 0.0
        first_purchase[i] = first * DAY_MICROS
    return Summary(customers, frequency, recency, age, monetary, first_purchase, unit)


# BG/NBD.


def bgnbd_log_likelihood(
    params: Sequence[float],
    x: NDArray[np.float64],
    t_x: NDArray[np.float64],
    t: NDArray[np.float64],
) -> NDArray[np.float64]:
    """Each customer's BG/NBD log-likelihood for parameters (r, alpha, a, b)."""
    r, alpha, a, b = params
    a1 = special.gammaln(r + x) - special.gammaln(r) + r * np.log(alpha)
    a2 = (
        special.gammaln(a + b)
        + special.gammaln(b + x)
        - special.gammaln(b)
        - special.gammaln(a + b + x)
    )
    a3 = -(r + x) * np.log(alpha + t)
    repeat = x > 0
    a4 = np.full_like(x, -np.inf)
    a4[repeat] = (
        np.log(a) - np.log(b + x[repeat] - 1) - (r + x[repeat]) * np.log(alpha + t_x[repeat])
    )
    return np.asarray(a1 + a2 + np.logaddexp(a3, a4), dtype=np.float64)


def fit_bgnbd(summary: Summary) -> Fit:
    """Maximum-likelihood BG/NBD parameters r, alpha, a, b."""
    rows, counts = _distinct(summary.frequency, summary.recency, summary.age)
    x, t_x, t = rows.T

    def negative(log_params: NDArray[np.float64]) -> float:
        params = [float(v) for v in np.exp(log_params)]
        return -float(np.dot(counts, bgnbd_log_likelihood(params, x, t_x, t)))

    start = np.log([1.0, max(1e-3, float(np.mean(summary.age))), 1.0, 1.0])
    return _fit("bgnbd", ("r", "alpha", "a", "b"), negative, start, len(summary.customers))


def probability_alive(
    params: dict[str, float],
    x: NDArray[np.float64],
    t_x: NDArray[np.float64],
    t: NDArray[np.float64],
) -> NDArray[np.float64]:
    """P(still active | x, t_x, T) under BG/NBD."""
    r, alpha, a, b = (params[k] for k in ("r", "alpha", "a", "b"))
    log_ratio = (
        np.log(a)
        - np.log(np.maximum(b + x - 1, 1e-300))
        + (r + x) * (np.log(alpha + t) - np.log(alpha + t_x))
    )
    return np.where(x > 0, special.expit(-log_ratio), 1.0)


def expected_purchases(
    params: dict[str, float],
    horizon: float,
    x: NDArray[np.float64],
    t_x: NDArray[np.float64],
    t: NDArray[np.float64],
) -> NDArray[np.float64]:
    """Expected purchases in the next ``horizon`` time units, given each history."""
    r, alpha, a, b = (params[k] for k in ("r", "alpha", "a", "b"))
    hyp = special.hyp2f1(r + x, b + x, a + b + x - 1, horizon / (alpha + t + horizon))
    first = (a + b + x - 1) / (a - 1)
    second = 1 - ((alpha + t) / (alpha + t + horizon)) ** (r + x) * hyp
    log_ratio = (
        np.log(a)
        - np.log(np.maximum(b + x - 1, 1e-300))
        + (r + x) * (np.log(alpha + t) - np.log(alpha + t_x))
    )
    denominator = 1 + np.where(x > 0, np.exp(log_ratio), 0.0)
    return np.asarray(first * second / denominator, dtype=np.float64)


def expected_repeat_purchases_since_first(
    params: dict[str, float], elapsed: NDArray[np.float64]
) -> NDArray[np.float64]:
    """E[X(t)]: expected repeat purchases ``elapsed`` time units after a first purchase."""
    r, alpha, a, b = (params[k] for k in ("r", "alpha", "a", "b"))
    t = np.maximum(elapsed, 0.0)
    hyp = special.hyp2f1(r, b, a + b - 1, t / (alpha + t))
    return np.asarray((a + b - 1) / (a - 1) * (1 - (alpha / (alpha + t)) ** r * hyp))


# Gamma-Gamma.


def gamma_gamma_log_likelihood(
    params: Sequence[float], x: NDArray[np.float64], m: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Each repeat customer's Gamma-Gamma log-likelihood of mean spend ``m`` over ``x``
    purchases, for parameters (p, q, gamma)."""
    p, q, v = params
    return np.asarray(
        special.gammaln(p * x + q)
        - special.gammaln(p * x)
        - special.gammaln(q)
        + q * np.log(v)
        + (p * x - 1) * np.log(m)
        + p * x * np.log(x)
        - (p * x + q) * np.log(x * m + v)
    )


def fit_gamma_gamma(summary: Summary) -> Fit:
    """Maximum-likelihood Gamma-Gamma parameters p, q, gamma over the customers with repeat
    purchases and positive spend."""
    keep = (summary.frequency > 0) & (summary.monetary > 0)
    if not keep.any():
        return Fit("gamma_gamma", {}, float("nan"), 0, False, "no repeat purchases", 0)
    rows, counts = _distinct(summary.frequency[keep], summary.monetary[keep])
    x, m = rows.T

    def negative(log_params: NDArray[np.float64]) -> float:
        params = [float(v) for v in np.exp(log_params)]
        return -float(np.dot(counts, gamma_gamma_log_likelihood(params, x, m)))

    start = np.log([1.0, 1.0, max(1e-3, float(np.mean(m)))])
    return _fit("gamma_gamma", ("p", "q", "gamma"), negative, start, int(keep.sum()))


def expected_spend(
    params: dict[str, float], x: NDArray[np.float64], m: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Expected spend per future purchase: each customer's mean shrunk to the population's."""
    p, q, v = params["p"], params["q"], params["gamma"]
    population = p * v / (q - 1) if q > 1 else float("nan")
    with np.errstate(invalid="ignore", divide="ignore"):
        individual = (v + x * m) * p / (p * x + q - 1)
    return np.asarray(np.where(x > 0, individual, population), dtype=np.float64)


def discounted_value(
    bgnbd: dict[str, float],
    gamma_gamma: dict[str, float],
    summary: Summary,
    *,
    horizon: float,
    step: float,
    discount_per_step: float,
) -> NDArray[np.float64]:
    """Discounted expected spend over ``horizon`` (purchases expected in each step, times the
    expected spend, discounted per step)."""
    x, t_x, t = summary.frequency, summary.recency, summary.age
    spend = expected_spend(gamma_gamma, x, summary.monetary)
    value = np.zeros_like(x)
    previous = np.zeros_like(x)
    steps = max(1, round(horizon / step))
    for k in range(1, steps + 1):
        cumulative = expected_purchases(bgnbd, k * step, x, t_x, t)
        value += (cumulative - previous) * spend / (1 + discount_per_step) ** k
        previous = cumulative
    return value


# Helpers.


def _distinct(*columns: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The distinct rows of ``columns`` and how often each occurs (customers with the same
    history contribute the same likelihood)."""
    rows, counts = np.unique(np.column_stack(columns), axis=0, return_counts=True)
    return rows, counts.astype(np.float64)


def _fit(
    model: str, names: tuple[str, ...], negative: Any, start: NDArray[np.float64], customers: int
) -> Fit:
    result = optimize.minimize(
        negative,
        start,
        method="L-BFGS-B",
        bounds=[(-_BOUND, _BOUND)] * len(names),
        options={"maxiter": 2000, "ftol": 1e-12, "gtol": 1e-8},
    )
    params = {n: float(v) for n, v in zip(names, np.exp(result.x), strict=True)}
    at_bound = bool(np.any(np.abs(result.x) >= _BOUND - 1e-6))
    message = str(result.message)
    if at_bound:
        message += "; a parameter reached its bound"
    return Fit(
        model=model,
        params=params,
        log_likelihood=-float(result.fun),
        customers=customers,
        converged=bool(result.success) and not at_bound,
        message=message,
        iterations=int(result.nit),
    )
