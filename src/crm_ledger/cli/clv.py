"""Predictive lifetime value: fit, show, top, holdout."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from crm_ledger.cli.base import (
    Context,
    cli,
    emit,
    emit_record,
    json_default,
    note,
    open_services,
    parse_moment,
    pass_context,
    recorded_by,
)
from crm_ledger.services.ports import LIVE

if TYPE_CHECKING:
    from collections.abc import Iterator

    from crm_ledger.services.predictions import ClvModel, Holdout, Predictions


@cli.group("clv")
def clv_() -> None:
    """Predictive lifetime value: BG/NBD (repeat purchasing) and Gamma-Gamma (spend) fitted
    on the ledger's own purchases."""


@contextlib.contextmanager
def _predictions(ctx: Context) -> Iterator[Predictions]:
    with open_services(ctx, "projecting") as services:
        yield services.predictions


_UNIT_OPTION = click.option(
    "--unit",
    type=click.Choice(("weeks", "days")),
    default="weeks",
    show_default=True,
    help="Time unit of frequency, recency, age and the horizon.",
)
_CURRENCY_OPTION = click.option(
    "--currency", metavar="CODE", help="Purchases in this currency [the most used]."
)


@clv_.command("fit")
@click.option(
    "--calibration-end",
    "calibration_end",
    metavar="DATE",
    required=True,
    help="Use purchases up to and including this day.",
)
@click.option(
    "--as-of",
    "as_of",
    metavar="TIME",
    help="Only purchases recorded by TIME (ISO 8601 or checkpoint:N).",
)
@_CURRENCY_OPTION
@_UNIT_OPTION
@click.option(
    "--horizon",
    type=click.FloatRange(min=0, min_open=True),
    default=52.0,
    show_default=True,
    help="Predict this many time units ahead.",
)
@click.option(
    "--discount",
    type=click.FloatRange(min=0),
    default=0.10,
    show_default=True,
    help="Annual discount rate for the discounted CLV.",
)
@pass_context
def clv_fit(
    ctx: Context,
    calibration_end: str,
    as_of: str | None,
    currency: str | None,
    unit: str,
    horizon: float,
    discount: float,
) -> None:
    """Fit both models on purchases up to --calibration-end, store them with their data
    window, and materialise each customer's predictions (clv show, clv top)."""
    as_of_time = recorded_by(ctx, as_of)
    with _predictions(ctx) as predictions:
        model = predictions.fit(
            parse_moment(calibration_end),
            as_of=as_of_time,
            currency=currency,
            unit=unit,
            horizon=horizon,
            annual_discount=discount,
        )
        message = predictions.models.currency_note(LIVE, currency)
    if message:
        note(ctx, f"{message} (--currency chooses)")
    _emit_model(ctx, model)


def _emit_model(ctx: Context, model: ClvModel) -> None:
    rows = []
    for fit in (model.bgnbd, model.gamma_gamma):
        for name, value in fit.params.items():
            rows.append({"model": fit.model, "parameter": name, "value": round(value, 6)})
        rows.append(
            {
                "model": fit.model,
                "parameter": "log_likelihood",
                "value": round(fit.log_likelihood, 4),
            }
        )
        rows.append({"model": fit.model, "parameter": "customers", "value": fit.customers})
        rows.append({"model": fit.model, "parameter": "converged", "value": fit.converged})
    if ctx.output == "json":
        click.echo(json.dumps(dataclasses.asdict(model), default=json_default, indent=2))
        return
    emit(
        ctx,
        rows,
        title=f"CLV model {model.model_id}: purchases in {model.currency} to "
        f"{model.calibration_end:%Y-%m-%d}, {model.unit}, horizon {model.horizon:g}",
    )
    for fit in (model.bgnbd, model.gamma_gamma):
        if not fit.converged and ctx.output == "table":
            ctx.err.print(f"warning: {fit.model} did not converge: {fit.message}")


@clv_.command("show")
@click.argument("customer_id")
@click.option("--model", "model_id", type=int, help="A stored model [the latest].")
@pass_context
def clv_show(ctx: Context, customer_id: str, model_id: int | None) -> None:
    """CUSTOMER_ID's frequency, recency, age, mean spend, probability of being alive,
    expected purchases and spend over the horizon, and discounted CLV."""
    with _predictions(ctx) as predictions:
        model = predictions.model(model_id)
        value = predictions.show(customer_id, model.model_id)
    emit_record(
        ctx,
        dataclasses.asdict(value),
        title=f"CLV of {customer_id} (model {model.model_id}, {model.currency})",
    )


@clv_.command("top")
@click.argument("limit", type=click.IntRange(1), default=10)
@click.option("--model", "model_id", type=int, help="A stored model [the latest].")
@pass_context
def clv_top(ctx: Context, limit: int, model_id: int | None) -> None:
    """The LIMIT customers with the highest predicted (discounted) lifetime value."""
    with _predictions(ctx) as predictions:
        model = predictions.model(model_id)
        values = predictions.top(limit, model.model_id)
    rows = [dataclasses.asdict(c) for c in values]
    if ctx.output == "table":
        rows = [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in rows]
    emit(
        ctx,
        rows,
        title=f"top {limit} by predicted CLV (model {model.model_id}, "
        f"{model.currency}, horizon {model.horizon:g} {model.unit})",
    )


@clv_.command("holdout")
@click.option("--calibration-end", "calibration_end", metavar="DATE", required=True)
@click.option("--holdout-end", "holdout_end", metavar="DATE", required=True)
@_CURRENCY_OPTION
@_UNIT_OPTION
@click.option(
    "--chart",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Draw the tracking chart (weekly and cumulative) into this PNG file.",
)
@pass_context
def clv_holdout(
    ctx: Context,
    calibration_end: str,
    holdout_end: str,
    currency: str | None,
    unit: str,
    chart: Path | None,
) -> None:
    """Fit BG/NBD on the calibration period and compare predicted with actual repeat
    purchases per period through the holdout, and per calibration frequency."""
    start, end = parse_moment(calibration_end), parse_moment(holdout_end)
    with open_services(ctx, "projecting") as services:
        result = services.predictions.holdout(start, end, currency=currency, unit=unit)
    if chart:
        services.charts.tracking(result, chart)
    if ctx.output == "json":
        click.echo(json.dumps(dataclasses.asdict(result), default=json_default, indent=2))
        return
    rows = [
        {
            "period": f"{p.start:%Y-%m-%d}",
            "holdout": p.holdout,
            "actual": p.actual,
            "predicted": round(p.predicted, 2),
            "cumulative_actual": p.cumulative_actual,
            "cumulative_predicted": round(p.cumulative_predicted, 2),
        }
        for p in result.periods
    ]
    emit(ctx, rows, title=f"repeat purchases per {unit[:-1]}: {result.customers} customers")
    if ctx.output == "table":
        _emit_by_frequency(ctx, result)
        error = (result.predicted - result.actual) / max(1, result.actual)
        ctx.out.print(
            f"holdout {result.calibration_end:%Y-%m-%d} to {result.holdout_end:%Y-%m-%d}: "
            f"actual {result.actual:,} repeat purchases, predicted {result.predicted:,.1f} "
            f"({error:+.1%})"
        )
        if chart:
            ctx.out.print(f"chart written to {chart}")


def _emit_by_frequency(ctx: Context, result: Holdout) -> None:
    rows = [
        {
            "frequency": g.frequency,
            "customers": g.customers,
            "actual": round(g.actual, 3),
            "predicted": round(g.predicted, 3),
        }
        for g in result.by_frequency
    ]
    emit(ctx, rows, title="holdout purchases per customer by calibration frequency")
