"""The CLV models' numerics: the summary, stable likelihoods, predictions at the edges."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from crm_ledger.analytics import clv
from crm_ledger.errors import InvalidInput
from crm_ledger.projections.contributions import micros

START = datetime(2024, 1, 1, tzinfo=UTC)
PARAMS = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}


def at(days: float) -> int:
    return micros(START + timedelta(days=days))


def test_summary_merges_same_day_purchases_and_stops_at_the_calibration_end() -> None:
    purchases = [
        clv.Purchase("A", at(0), 10.0),
        clv.Purchase("A", at(0.5), 5.0),  # same day: one purchase of 15
        clv.Purchase("A", at(14), 20.0),
        clv.Purchase("A", at(21), 40.0),
        clv.Purchase("A", at(70), 99.0),  # after the calibration end
        clv.Purchase("B", at(7), 8.0),
    ]
    s = clv.summarise(purchases, calibration_end=at(28) + 10, unit="weeks")
    assert s.customers == ["A", "B"]
    assert s.frequency.tolist() == [2.0, 0.0]
    assert s.recency.tolist() == [3.0, 0.0]
    assert s.age.tolist() == [4.0, 3.0]
    assert s.monetary.tolist() == [30.0, 0.0]  # mean of the repeat purchases only
    days = clv.summarise(purchases, calibration_end=at(28), unit="days")
    assert days.age.tolist() == [28.0, 21.0]


def test_summary_refuses_an_empty_window_and_an_unknown_unit() -> None:
    with pytest.raises(InvalidInput, match="no purchases"):
        clv.summarise([clv.Purchase("A", at(10), 1.0)], calibration_end=at(5))
    with pytest.raises(InvalidInput, match="unit"):
        clv.summarise([], calibration_end=at(5), unit="fortnights")


def naive_bgnbd(r: float, alpha: float, a: float, b: float, x: int, t_x: float, t: float) -> float:
    """The BG/NBD likelihood as printed in the paper, without logarithms (small x only)."""
    beta = math.gamma
    first = (beta(r + x) * alpha**r / (beta(r) * (alpha + t) ** (r + x))) * (
        beta(a + b) * beta(b + x) / (beta(b) * beta(a + b + x))
    )
    second = 0.0
    if x > 0:
        second = (beta(r + x) * alpha**r / (beta(r) * (alpha + t_x) ** (r + x))) * (
            beta(a + b) * beta(a + 1) * beta(b + x - 1) / (beta(a) * beta(b) * beta(a + b + x))
        )
    return math.log(first + second)


@pytest.mark.parametrize(("x", "t_x", "t"), [(0, 0.0, 30.0), (1, 5.0, 30.0), (4, 25.5, 38.9)])
def test_log_likelihood_matches_the_papers_formula(x: int, t_x: float, t: float) -> None:
    ours = clv.bgnbd_log_likelihood(
        list(PARAMS.values()), np.array([float(x)]), np.array([t_x]), np.array([t])
    )[0]
    assert ours == pytest.approx(naive_bgnbd(*PARAMS.values(), x, t_x, t), rel=1e-10)


def test_log_likelihoods_stay_finite_for_long_busy_histories() -> None:
    x, t_x, t = np.array([5000.0]), np.array([9000.0]), np.array([10000.0])
    assert np.isfinite(clv.bgnbd_log_likelihood(list(PARAMS.values()), x, t_x, t)).all()
    gg = clv.gamma_gamma_log_likelihood([6.25, 3.74, 15.44], x, np.array([1e6]))
    assert np.isfinite(gg).all()
    alive = clv.probability_alive(PARAMS, x, t_x, t)
    assert 0.0 <= alive[0] <= 1.0


def test_predictions_at_the_edges() -> None:
    zero = np.zeros(1)
    assert clv.probability_alive(PARAMS, zero, zero, np.array([50.0]))[0] == 1.0
    # A brand-new customer expects what the population expects from a first purchase.
    new = clv.expected_purchases(PARAMS, 10.0, zero, zero, zero)
    population = clv.expected_repeat_purchases_since_first(PARAMS, np.array([10.0]))
    assert new[0] == pytest.approx(population[0], rel=1e-9)
    # The longer a frequent buyer has been silent, the less likely they are alive.
    x, t_x = np.array([5.0, 5.0]), np.array([10.0, 10.0])
    quiet = clv.probability_alive(PARAMS, x, t_x, np.array([12.0, 40.0]))
    assert quiet[0] > quiet[1]
    spend = clv.expected_spend(
        {"p": 6.25, "q": 3.74, "gamma": 15.44}, np.array([0.0, 10.0]), np.array([0.0, 100.0])
    )
    assert spend[0] == pytest.approx(6.25 * 15.44 / 2.74)
    assert 35.2 < spend[1] < 100.0  # shrunk from the customer's own mean toward the population


def test_gamma_gamma_without_repeat_purchases_reports_it() -> None:
    s = clv.summarise([clv.Purchase("A", at(0), 3.0)], calibration_end=at(30))
    fit = clv.fit_gamma_gamma(s)
    assert (fit.converged, fit.customers, fit.message) == (False, 0, "no repeat purchases")
