"""Analysis commands: time travel into snapshots, the read models, initiative impact."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from crm_ledger.analytics.comparison import METRICS
from crm_ledger.cli.base import (
    Context,
    as_dict,
    catch_up_bar,
    cli,
    emit,
    emit_record,
    fields_of,
    json_default,
    logged,
    note,
    open_services,
    pass_context,
)
from crm_ledger.cli.customers import moment_from_options
from crm_ledger.errors import UnreadableFile
from crm_ledger.services.operations import ProjectionRow
from crm_ledger.services.ports import Moment

if TYPE_CHECKING:
    from collections.abc import Sequence

    from crm_ledger.services.read_models import Comparison


@cli.command()
@click.option(
    "--as-of",
    "as_of",
    metavar="TIME",
    help="Only events recorded by TIME (ISO 8601 or checkpoint:N).",
)
@click.option("--valid-at", "valid_at", metavar="TIME", help="Only events that occurred by TIME.")
@click.option("--into", "into", metavar="NAME", required=True, help="Name of the snapshot.")
@pass_context
def replay(ctx: Context, as_of: str | None, valid_at: str | None, into: str) -> None:
    """Materialise every projection as it stood at a moment into the read-only snapshot NAME.

    Query it with --snapshot NAME on customer show, ltv, timeline and compare; an
    interrupted replay, run again, carries on.
    """
    if not as_of and not valid_at:
        raise click.UsageError("give --as-of, --valid-at or both")
    at = moment_from_options(ctx, as_of, valid_at, None)
    with open_services(ctx) as services, catch_up_bar(ctx, "replaying") as bar:
        made = services.projections.replay(into, as_of=at.as_of, valid_at=at.valid_at, progress=bar)
    emit_record(ctx, as_dict(made), title="snapshot ready")


@cli.group()
def projections() -> None:
    """The read models: where they are, catching up, rebuilding, snapshots."""


@projections.command("status")
@pass_context
def projections_status(ctx: Context) -> None:
    """Each projection's table sets (live, rebuilding, snapshots), position and lag."""
    with open_services(ctx) as services:
        rows = services.projections.status()
    emit(ctx, [as_dict(r) for r in rows], title="projections", columns=fields_of(ProjectionRow))


@projections.command("run")
@pass_context
def projections_run(ctx: Context) -> None:
    """Catch every live projection up with the ledger (queries also do this first)."""
    with open_services(ctx) as services, catch_up_bar(ctx) as bar:
        applied = services.projections.catch_up(bar)
    emit_record(ctx, {"records_applied": applied}, title="caught up")


_BATCH_OPTION = click.option(
    "--batch-size",
    type=click.IntRange(1, 200_000),
    help="Log entries per read-model transaction [20,000].",
)


@projections.command("rebuild")
@click.argument("names", nargs=-1)
@_BATCH_OPTION
@click.option(
    "--workers",
    type=click.IntRange(1, 16),
    help="Processes to rebuild with [one per core, at most one per projection].",
)
@pass_context
def projections_rebuild(
    ctx: Context, names: tuple[str, ...], batch_size: int | None, workers: int | None
) -> None:
    """Rebuild projections NAMES (all when none are given) into fresh tables, swapped in
    when caught up. Queries keep using the old tables meanwhile; an interrupted rebuild, run
    again, carries on where it stopped. The heaviest projection gets a process of its own
    when the machine has more than one core. Role: admin (recorded in the access log); on a
    shared PostgreSQL store, a login in the owner role (`crm-ledger db --help`)."""
    from crm_ledger import bootstrap

    bootstrap.tune_for_throughput()
    started = time.perf_counter()
    with (
        open_services(ctx) as services,
        logged(services, "rebuild", None),
        catch_up_bar(ctx, "rebuilding") as bar,
    ):
        live = services.projections.rebuild(
            names, workers=workers, batch_size=batch_size, progress=bar
        )
    seconds = time.perf_counter() - started
    emit(ctx, [as_dict(s) for s in live], title=f"rebuilt in {seconds:.1f} s")


@projections.command("drop")
@click.argument("snapshot")
@pass_context
def projections_drop(ctx: Context, snapshot: str) -> None:
    """Drop the snapshot SNAPSHOT and its tables."""
    with open_services(ctx) as services:
        services.projections.drop(snapshot)
    emit_record(ctx, {"dropped": snapshot}, title="snapshot dropped")


@cli.command()
@click.argument("initiative_id")
@click.option(
    "--control",
    "control",
    metavar="KEY=VALUE",
    multiple=True,
    help="Control group by profile (region, segment, country); repeat to narrow. "
    "Default: every customer outside the initiative's scope.",
)
@click.option("--metric", type=click.Choice(METRICS), default="net_revenue", show_default=True)
@click.option("--currency", metavar="CODE", help="Currency of net_revenue [the most used].")
@click.option(
    "--resamples",
    type=click.IntRange(100, 100_000),
    default=2000,
    show_default=True,
    help="Bootstrap resamples for the 95% interval.",
)
@click.option(
    "--chart",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also draw the weekly series and the window into this PNG file.",
)
@click.option(
    "--truth",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="The NAME.truth.json `generate` wrote: print the true uplift beside the estimate.",
)
@click.option("--snapshot", metavar="NAME", help="Compare within a replayed snapshot.")
@pass_context
def compare(
    ctx: Context,
    initiative_id: str,
    control: tuple[str, ...],
    metric: str,
    currency: str | None,
    resamples: int,
    chart: Path | None,
    truth: Path | None,
    snapshot: str | None,
) -> None:
    """Did INITIATIVE raise value? Value per customer-week before, during and after its
    window, for the customers in its scope and a control group, and the
    difference-in-differences with a bootstrap 95% confidence interval."""
    chosen = _pairs(control)
    expected = _truth(truth, metric) if truth else None
    with open_services(ctx, "projecting") as services:
        result = services.read_models.compare(
            initiative_id,
            Moment(snapshot=snapshot),
            control=chosen or None,
            metric=metric,
            currency=currency,
            resamples=resamples,
        )
        if chart:
            services.charts.impact(result, chart)
    _emit_comparison(ctx, result, expected, chart)


def _pairs(values: Sequence[str]) -> dict[str, str]:
    pairs = {}
    for value in values:
        key, sep, wanted = value.partition("=")
        if not sep or not key or not wanted:
            raise click.BadParameter(f"{value!r}: use KEY=VALUE, e.g. region=south")
        pairs[key.strip()] = wanted.strip()
    return pairs


_TRUTH_KEYS = {
    "net_revenue": "expected_uplift_net_revenue_minor_per_customer_week",
    "orders": "expected_uplift_orders_per_customer_week",
}


def _truth(path: Path, metric: str) -> float | None:
    try:
        facts = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UnreadableFile(f"{path}: not a truth file ({e})") from None
    key = _TRUTH_KEYS.get(metric)
    return float(facts[key]) if key and key in facts else None


def _emit_comparison(
    ctx: Context, result: Comparison, expected: float | None, chart: Path | None
) -> None:
    impact = result.impact
    unit = f"{result.currency} minor units" if result.currency else impact.metric
    for message in result.notes:
        note(ctx, f"{message} (--currency chooses)")
    if ctx.output == "json":
        click.echo(
            json.dumps(
                _comparison_document(result, unit, expected, chart),
                default=json_default,
                indent=2,
            )
        )
        return
    scope = ", ".join(f"{k}={v}" for k, v in result.scope.items())
    control = ", ".join(f"{k}={v}" for k, v in (result.control or {}).items()) or "the rest"
    emit(
        ctx,
        _comparison_rows(result, expected),
        title=f"{result.initiative}: {impact.metric} per customer-week ({unit}), "
        f"exposed {scope} vs control {control}",
    )
    if ctx.output == "table":
        line = _uplift_line(result, expected)
        if line:
            ctx.out.print(line)
        if chart:
            ctx.out.print(f"chart written to {chart}")


def _comparison_document(
    result: Comparison, unit: str, expected: float | None, chart: Path | None
) -> dict[str, Any]:
    impact = result.impact
    return {
        "initiative": result.initiative,
        "name": result.name,
        "scope": result.scope,
        "control": result.control or "everyone outside the scope",
        "metric": impact.metric,
        "unit": unit,
        "started_at": result.started_at,
        "ended_at": result.ended_at,
        "resamples": impact.resamples,
        "groups": [dataclasses.asdict(g) for g in impact.groups],
        "estimates": [dataclasses.asdict(e) for e in impact.estimates],
        "true_uplift": expected,
        "chart": str(chart) if chart else None,
        "notes": result.notes,
    }


def _comparison_rows(result: Comparison, expected: float | None) -> list[dict[str, Any]]:
    """Each group and period, then each difference-in-differences estimate (and the truth)."""
    empty = {"customers": None, "customer_weeks": None, "total": None}
    rows: list[dict[str, Any]] = [
        {
            "group": g.group,
            "period": g.period,
            "customers": g.customers,
            "customer_weeks": g.customer_weeks,
            "total": round(g.total, 2),
            "per_customer_week": _round(g.per_customer_week),
            "ci_low": None,
            "ci_high": None,
        }
        for g in result.impact.groups
    ]
    rows += [
        {"group": "difference-in-differences", "period": e.period, **empty}
        | {"per_customer_week": _round(e.estimate)}
        | {"ci_low": _round(e.ci_low), "ci_high": _round(e.ci_high)}
        for e in result.impact.estimates
    ]
    if expected is not None:
        rows.append(
            {"group": "true uplift (generator)", "period": "during", **empty}
            | {"per_customer_week": _round(expected), "ci_low": None, "ci_high": None}
        )
    return rows


def _uplift_line(result: Comparison, expected: float | None) -> str | None:
    during = next((e for e in result.impact.estimates if e.period == "during"), None)
    if during is None or during.estimate is None:
        return None
    line = (
        f"estimated uplift during the initiative: {during.estimate:,.2f} per "
        f"customer-week (95% CI {during.ci_low:,.2f} to {during.ci_high:,.2f})"
    )
    if expected is not None:
        inside = during.ci_low <= expected <= during.ci_high  # type: ignore[operator]
        line += f"; true uplift {expected:,.2f} ({'inside' if inside else 'outside'} the CI)"
    return line


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
