"""PNG charts (matplotlib, drawn off-screen)."""

from __future__ import annotations

import io
import math
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import matplotlib as mpl

mpl.use("Agg")  # no display: files only

import matplotlib.pyplot as plt

from crm_ledger.analytics.impact import CONTROL, EXPOSED
from crm_ledger.errors import InvalidInput
from crm_ledger.projections.contributions import week_start
from crm_ledger.projections.lifetime_value import minor_unit_exponent

if TYPE_CHECKING:
    from pathlib import Path

    from crm_ledger.services.predictions import Holdout
    from crm_ledger.services.read_models import Comparison


def impact_chart(result: Comparison, path: Path | io.BytesIO, fmt: str = "png") -> None:
    """Top: weekly value per customer-week, exposed and control, in major units, with the
    initiative's window shaded and labelled. Bottom: the weekly difference (exposed minus
    control) against its level before the window, and each difference-in-differences
    estimate drawn over its period with its 95% interval as a band. A last week the data
    does not cover in full is left out (and said so)."""
    impact = result.impact
    scale, unit = _unit(result)
    weeks, partial = _whole_weeks(impact.weeks, result.data_end)
    dates = [week_start(w) for w in weeks]
    series = {
        g: [_scaled(v, scale) for v in impact.weekly[g][: len(weeks)]] for g in (EXPOSED, CONTROL)
    }
    figure, (top_, bottom_) = plt.subplots(
        2, 1, figsize=(10, 7.5), dpi=110, sharex=True, height_ratios=(3, 2)
    )
    top: Any = top_  # matplotlib's stubs take no datetimes, matplotlib itself does
    bottom: Any = bottom_
    try:
        for group, colour in ((EXPOSED, "tab:orange"), (CONTROL, "tab:blue")):
            top.plot(dates, series[group], label=group, color=colour, linewidth=1.4)
        start = week_start(impact.start_week)
        end = week_start(impact.end_week) if impact.end_week is not None else dates[-1]
        window = f"initiative window, {start:%Y-%m-%d} to {end:%Y-%m-%d}"
        top.axvspan(start, end, color="grey", alpha=0.15, label=window)
        bottom.axvspan(start, end, color="grey", alpha=0.15)
        for axes in (top, bottom):
            axes.grid(alpha=0.3)
        top.set_ylabel(f"{impact.metric} per customer-week ({unit})")
        top.legend(loc="upper left")
        top.set_title(_impact_title(result, unit, partial), fontsize=10)
        _difference_panel(bottom, result, weeks, dates, series, scale, unit)
        figure.autofmt_xdate()
        figure.tight_layout()
        _save(figure, path, fmt)
    finally:
        plt.close(figure)


def _difference_panel(
    axes: Any,
    result: Comparison,
    weeks: list[int],
    dates: list[Any],
    series: dict[str, list[float]],
    scale: float,
    unit: str,
) -> None:
    impact = result.impact
    gap = [e - c for e, c in zip(series[EXPOSED], series[CONTROL], strict=True)]
    axes.plot(dates, gap, color="black", linewidth=1.0, label="exposed minus control")
    before = [
        g for w, g in zip(weeks, gap, strict=True) if w < impact.start_week and not math.isnan(g)
    ]
    base = sum(before) / len(before) if before else 0.0
    axes.axhline(base, color="grey", linestyle=":", label="level before the window")
    for estimate in impact.estimates:
        if estimate.estimate is None or estimate.ci_low is None or estimate.ci_high is None:
            continue
        span = _period_dates(estimate.period, impact, dates)
        if span is None:
            continue
        low, high = base + estimate.ci_low / scale, base + estimate.ci_high / scale
        axes.fill_between(span, [low, low], [high, high], color="tab:green", alpha=0.25)
        level = base + estimate.estimate / scale
        axes.plot(span, [level, level], color="tab:green", linewidth=2)
        axes.text(span[0], high, f" {estimate.period}: {estimate.estimate / scale:+,.2f} "
                  f"(95% CI {estimate.ci_low / scale:+,.2f} to {estimate.ci_high / scale:+,.2f})",
                  fontsize=8, va="bottom")  # fmt: skip
    axes.set_ylabel(f"difference ({unit})")
    axes.legend(loc="lower left", fontsize=8)


def _period_dates(period: str, impact: Any, dates: list[Any]) -> list[Any] | None:
    start = week_start(impact.start_week)
    end = week_start(impact.end_week) if impact.end_week is not None else dates[-1]
    if period == "during":
        return [start, end]
    if period == "after" and impact.end_week is not None and dates and dates[-1] > end:
        return [end, dates[-1]]
    return None


def _impact_title(result: Comparison, unit: str, partial: bool) -> str:
    title = f"{result.initiative}: {result.name or ''} ({unit})"
    if partial:
        title += "\n(weeks after the data's last full week are left out)"
    return title


def _unit(result: Comparison) -> tuple[float, str]:
    """Money in major units of its currency; counts as they are."""
    if result.currency:
        return 10.0 ** minor_unit_exponent(result.currency), result.currency
    return 1.0, result.impact.metric


def _whole_weeks(weeks: list[int], data_end: Any) -> tuple[list[int], bool]:
    """The weeks the data covers in full (a week ending after the last active touch is
    partial, and the weeks after it hold only trailing refunds and resolutions)."""
    if not weeks or data_end is None:
        return weeks, False
    whole = [w for w in weeks if week_start(w) + timedelta(days=7) <= data_end]
    return (whole, True) if whole and len(whole) < len(weeks) else (weeks, False)


def _scaled(value: float | None, scale: float) -> float:
    return float("nan") if value is None else value / scale


def tracking_chart(result: Holdout, path: Path) -> None:
    """Actual and predicted repeat purchases per period and cumulatively, with the end of
    the calibration period marked (the tracking plots of Fader, Hardie & Lee 2005)."""
    dates = [p.start for p in result.periods]
    figure, (weekly_, cumulative_) = plt.subplots(2, 1, figsize=(10, 7), dpi=110, sharex=True)
    weekly: Any = weekly_
    cumulative: Any = cumulative_
    try:
        weekly.plot(dates, [p.actual for p in result.periods], label="actual", color="black")
        weekly.plot(
            dates,
            [p.predicted for p in result.periods],
            label="BG/NBD",
            color="tab:red",
            linestyle="--",
        )
        cumulative.plot(
            dates, [p.cumulative_actual for p in result.periods], label="actual", color="black"
        )
        cumulative.plot(
            dates,
            [p.cumulative_predicted for p in result.periods],
            label="BG/NBD",
            color="tab:red",
            linestyle="--",
        )
        holdout = f"holdout, after the calibration end {result.calibration_end:%Y-%m-%d}"
        for axes in (weekly, cumulative):
            axes.axvline(result.calibration_end, color="grey", linestyle=":")
            axes.axvspan(result.calibration_end, dates[-1], color="grey", alpha=0.1, label=holdout)
            axes.grid(alpha=0.3)
            axes.legend(loc="upper left")
        weekly.set_ylabel(f"repeat purchases per {result.unit[:-1]}")
        cumulative.set_ylabel("cumulative repeat purchases")
        weekly.set_title(
            f"{result.customers:,} customers ({result.currency}); calibration to "
            f"{result.calibration_end:%Y-%m-%d}, holdout to {result.holdout_end:%Y-%m-%d}",
            fontsize=10,
        )
        figure.autofmt_xdate()
        figure.tight_layout()
        _save(figure, path)
    finally:
        plt.close(figure)


class MatplotlibCharts:
    """The services' charts, drawn with matplotlib into PNG files."""

    def impact(self, result: Comparison, path: Path) -> None:
        """An initiative's weekly series and window."""
        impact_chart(result, path)

    def impact_svg(self, result: Comparison) -> bytes:
        """The same chart as SVG, for a page to show."""
        buffer = io.BytesIO()
        impact_chart(result, buffer, "svg")
        return buffer.getvalue()

    def tracking(self, result: Holdout, path: Path) -> None:
        """A CLV holdout's tracking curves."""
        tracking_chart(result, path)


def _save(figure: Any, path: Path | io.BytesIO, fmt: str = "png") -> None:
    try:
        figure.savefig(path, format=fmt)
    except OSError as e:
        msg = f"cannot write the chart to {path}: {e.strerror}"
        raise InvalidInput(msg) from None
