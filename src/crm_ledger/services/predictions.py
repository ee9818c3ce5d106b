"""Predictive lifetime value from the ledger's own purchases: fit, store, show, hold out.

Purchases come from the journey timeline (every OrderPlaced, in its currency; refunds are
not purchases), grouped by the surviving customer of any merge, in major units of the
currency. A fitted model is stored with its data window, and its per-customer predictions
form the ``clv`` read model that ``clv show`` and ``clv top`` answer from.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from crm_ledger.analytics import clv, holdout
from crm_ledger.analytics.clv import DAY_MICROS
from crm_ledger.errors import InvalidInput, NotFound
from crm_ledger.projections.contributions import micros, moment
from crm_ledger.projections.journey_timeline import TOUCHES
from crm_ledger.projections.lifetime_value import LTV, minor_unit_exponent
from crm_ledger.services.ports import LIVE, ClvStore

if TYPE_CHECKING:
    from datetime import datetime

    from crm_ledger.analytics.holdout import FrequencyGroup, Period
    from crm_ledger.services.read_models import ReadModels


@dataclass(frozen=True, slots=True)
class ClvModel:
    """A stored fit: when, on which data, and both models' parameters."""

    model_id: int
    fitted_at: datetime
    calibration_end: datetime
    as_of: datetime | None
    currency: str
    unit: str
    horizon: float
    annual_discount: float
    bgnbd: clv.Fit
    gamma_gamma: clv.Fit


@dataclass(frozen=True, slots=True)
class CustomerValue:
    """One customer's summary and predictions under a model (money in major units)."""

    customer_id: str
    frequency: float
    recency: float
    age: float
    monetary: float
    p_alive: float
    expected_purchases: float
    expected_spend: float
    clv: float


@dataclass(frozen=True, slots=True)
class Holdout:
    """Predicted against actual repeat purchases after a calibration period."""

    fit: clv.Fit
    currency: str
    unit: str
    calibration_end: datetime
    holdout_end: datetime
    customers: int
    actual: int
    predicted: float
    periods: list[Period]
    by_frequency: list[FrequencyGroup]


class Predictions:
    """Fits and answers of the predictive lifetime value models."""

    def __init__(self, models: ReadModels, store: ClvStore) -> None:
        self.models = models
        self.store = store

    def fit(
        self,
        calibration_end: datetime,
        *,
        as_of: datetime | None = None,
        currency: str | None = None,
        unit: str = "weeks",
        horizon: float = 52.0,
        annual_discount: float = 0.10,
    ) -> ClvModel:
        """Fit BG/NBD and Gamma-Gamma on purchases up to ``calibration_end`` (as recorded
        by ``as_of``), store the model and each customer's predictions."""
        if horizon <= 0 or annual_discount < 0:
            raise InvalidInput("--horizon must be positive and --discount not negative")
        currency = self._currency(currency)
        summary = self.summary(calibration_end, as_of=as_of, currency=currency, unit=unit)
        bgnbd, gamma_gamma = clv.fit_bgnbd(summary), clv.fit_gamma_gamma(summary)
        rows = holdout.predict(summary, bgnbd, gamma_gamma, horizon, annual_discount)
        model = {
            "fitted_at": time.time_ns() // 1000,
            "calibration_end": _day_end(calibration_end),
            "as_of": _micros_or_none(as_of),
            "currency": currency,
            "unit": unit,
            "horizon": horizon,
            "annual_discount": annual_discount,
            "fits": json.dumps({"bgnbd": _fit_json(bgnbd), "gamma_gamma": _fit_json(gamma_gamma)}),
        }
        return self._model(self.store.clv_model(self.store.save_clv(model, rows)))

    def model(self, model_id: int | None = None) -> ClvModel:
        """A stored model, the latest by default."""
        return self._model(self.store.clv_model(model_id), model_id)

    def show(self, customer_id: str, model_id: int | None = None) -> CustomerValue:
        """One customer's predictions under a model."""
        model = self.model(model_id)
        rows = self.store.clv_rows(model.model_id, customers=[customer_id])
        if not rows:
            self.models.ledger.customer(customer_id)  # CustomerNotFound if unknown
            msg = (
                f"{customer_id} has no purchase in {model.currency} by "
                f"{model.calibration_end:%Y-%m-%d}, the data model {model.model_id} was "
                "fitted on: it predicts nothing for them"
            )
            raise NotFound(msg)
        return _customer(rows[0])

    def top(self, limit: int, model_id: int | None = None) -> list[CustomerValue]:
        """The customers with the highest predicted value."""
        model = self.model(model_id)
        return [_customer(r) for r in self.store.clv_rows(model.model_id, top=limit)]

    def holdout(
        self,
        calibration_end: datetime,
        holdout_end: datetime,
        *,
        currency: str | None = None,
        unit: str = "weeks",
    ) -> Holdout:
        """Fit on the calibration period, then compare predicted with actual repeat purchases
        per period and per calibration frequency through the holdout period."""
        if holdout_end <= calibration_end:
            raise InvalidInput("the holdout must end after the calibration end")
        currency = self._currency(currency)
        days = self._purchase_days(holdout_end, None, currency)
        calibration = clv.summarise(
            (clv.Purchase(c, d * DAY_MICROS, 0.0) for c, ds in days.items() for d in ds),
            calibration_end=_day_end(calibration_end),
            unit=unit,
        )
        fit = clv.fit_bgnbd(calibration)
        end_day, holdout_day = _day_end(calibration_end) // DAY_MICROS, _day(holdout_end)
        result = holdout.compare(fit, calibration, days, end_day, holdout_day, clv.UNITS[unit])
        return Holdout(
            fit=fit,
            currency=currency,
            unit=unit,
            calibration_end=calibration_end,
            holdout_end=holdout_end,
            customers=result.customers,
            actual=result.actual,
            predicted=result.predicted,
            periods=result.periods,
            by_frequency=result.by_frequency,
        )

    # Helpers.

    def _currency(self, currency: str | None) -> str:
        if currency:
            return currency
        sets = self.models.sets(LIVE)
        found = self.models.store.currencies((LTV, sets["lifetime_value"].label))
        if not found:
            raise InvalidInput("the ledger holds no orders yet")
        return found[0][0]

    def _purchase_days(
        self, until: datetime, as_of: datetime | None, currency: str
    ) -> dict[str, dict[int, float]]:
        """Per surviving customer: purchase day -> spend (major units) up to ``until``."""
        sets = self.models.sets(LIVE)
        canonical = self.models.canonical_ids(sets)
        scale = 10 ** minor_unit_exponent(currency)
        rows = self.store.purchases(
            (TOUCHES, sets["journey_timeline"].label),
            currency,
            until=_day_end(until) + 1,
            as_of=_micros_or_none(as_of),
        )
        days: dict[str, dict[int, float]] = {}
        for stream, occurred, amount in rows:
            customer = canonical.get(stream, stream)
            spend = days.setdefault(customer, {})
            day = occurred // DAY_MICROS
            spend[day] = spend.get(day, 0.0) + amount / scale
        return days

    def summary(
        self,
        calibration_end: datetime,
        *,
        as_of: datetime | None = None,
        currency: str | None = None,
        unit: str = "weeks",
    ) -> clv.Summary:
        """Frequency, recency, age and mean repeat spend of every customer with a purchase
        in ``currency`` by ``calibration_end`` (as recorded by ``as_of``)."""
        currency = self._currency(currency)
        days = self._purchase_days(calibration_end, as_of, currency)
        purchases = (
            clv.Purchase(c, d * DAY_MICROS, spend)
            for c, ds in days.items()
            for d, spend in ds.items()
        )
        return clv.summarise(purchases, calibration_end=_day_end(calibration_end), unit=unit)

    def _model(self, row: dict[str, Any] | None, model_id: int | None = None) -> ClvModel:
        if row is None:
            which = f"model {model_id}" if model_id else "model"
            raise NotFound(f"no CLV {which} yet; run `crm-ledger clv fit --calibration-end DATE`")
        fits = json.loads(row["fits"])
        return ClvModel(
            model_id=row["model_id"],
            fitted_at=moment(row["fitted_at"]),
            calibration_end=moment(row["calibration_end"]),
            as_of=moment(row["as_of"]) if row["as_of"] is not None else None,
            currency=row["currency"],
            unit=row["unit"],
            horizon=row["horizon"],
            annual_discount=row["annual_discount"],
            bgnbd=clv.Fit(**fits["bgnbd"]),
            gamma_gamma=clv.Fit(**fits["gamma_gamma"]),
        )


def _customer(row: dict[str, Any]) -> CustomerValue:
    return CustomerValue(**{k: row[k] for k in CustomerValue.__dataclass_fields__})


def _fit_json(fit: clv.Fit) -> dict[str, Any]:
    return {
        "model": fit.model,
        "params": fit.params,
        "log_likelihood": fit.log_likelihood,
        "customers": fit.customers,
        "converged": fit.converged,
        "message": fit.message,
        "iterations": fit.iterations,
    }


def _day(value: datetime) -> int:
    return micros(value) // DAY_MICROS


def _day_end(value: datetime) -> int:
    """The calibration end is a whole day: its last microsecond."""
    return (_day(value) + 1) * DAY_MICROS - 1


def _micros_or_none(value: datetime | None) -> int | None:
    return None if value is None else micros(value)
