"""PNG charts (matplotlib, drawn off-screen)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import matplotlib as mpl

mpl.use("Agg")  # no display: files only

import matplotlib.pyplot as plt

from crm_ledger.analytics.impact import CONTROL, EXPOSED
from crm_ledger.errors import InvalidInput
from crm_ledger.projections.contributions import week_start

if TYPE_CHECKING:
    from pathlib import Path

    from crm_ledger.services.predictions import Holdout
    from crm_ledger.services.read_models import Comparison


def impact_chart(result: Comparison, path: Path) -> None:
    """Weekly value per customer-week for the exposed and control groups, with the
    initiative's window shaded and the estimate in the title."""
    impact = result.impact
    dates = [week_start(w) for w in impact.weeks]
    figure, axes_ = plt.subplots(figsize=(10, 4.8), dpi=110)
    axes: Any = axes_  # matplotlib's stubs take no datetimes, matplotlib itself does
    try:
        for group, colour in ((EXPOSED, "tab:orange"), (CONTROL, "tab:blue")):
            series = [float("nan") if v is None else v for v in impact.weekly[group]]
            axes.plot(dates, series, label=group, color=colour, linewidth=1.4)
        end = week_start(impact.end_week) if impact.end_week is not None else dates[-1]
        start = week_start(impact.start_week)
        axes.axvspan(start, end, color="grey", alpha=0.15, label="initiative window")
        unit = f"{result.currency} minor units" if result.currency else impact.metric
        axes.set_ylabel(f"{impact.metric} per customer-week ({unit})")
        during = next((e for e in impact.estimates if e.period == "during"), None)
        title = f"{result.initiative}: {result.name or ''}"
        if during is not None and during.estimate is not None:
            title += (
                f"\nDiD during: {during.estimate:,.1f} "
                f"(95% CI {during.ci_low:,.1f} to {during.ci_high:,.1f})"
            )
        axes.set_title(title, fontsize=10)
        axes.legend(loc="upper left")
        axes.grid(alpha=0.3)
        figure.autofmt_xdate()
        figure.tight_layout()
        _save(figure, path)
    finally:
        plt.close(figure)


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
        for axes in (weekly, cumulative):
            axes.axvline(result.calibration_end, color="grey", linestyle=":")
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

    def tracking(self, result: Holdout, path: Path) -> None:
        """A CLV holdout's tracking curves."""
        tracking_chart(result, path)


def _save(figure: Any, path: Path) -> None:
    try:
        figure.savefig(path, format="png")
    except OSError as e:
        msg = f"cannot write the chart to {path}: {e.strerror}"
        raise InvalidInput(msg) from None
