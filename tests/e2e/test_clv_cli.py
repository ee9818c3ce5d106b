"""Predictive lifetime value through the CLI, on the CDNOW 1/10 sample imported through the
ledger: the published BG/NBD and Gamma-Gamma fits, predictions, the holdout and bad input."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

from tests.e2e.test_cli import cdnow_dir, run  # noqa: F401  (cdnow_dir is a fixture)

if TYPE_CHECKING:
    from pathlib import Path

    from click.testing import CliRunner


def three_figures(value: float) -> float:
    return float(f"{value:.3g}")


@pytest.fixture(scope="module")
def sample_ledger(tmp_path_factory: pytest.TempPathFactory, cdnow_dir: Path) -> Path:  # noqa: F811
    """The CDNOW 1/10 sample imported with `crm-ledger import --cdnow`."""
    from click.testing import CliRunner

    data = tmp_path_factory.mktemp("cdnow") / "ledger"
    assert run(CliRunner(), data, "init").exit_code == 0
    result = run(
        CliRunner(),
        data,
        "--format",
        "json",
        "import",
        "--cdnow",
        str(cdnow_dir / "CDNOW_sample.txt"),
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["recorded"] == 6_919
    return data


@pytest.fixture(scope="module")
def fitted(sample_ledger: Path) -> dict[str, Any]:
    from click.testing import CliRunner

    result = run(
        CliRunner(),
        sample_ledger,
        "--format",
        "json",
        "clv",
        "fit",
        "--calibration-end",
        "1997-09-30",
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_bgnbd_reproduces_the_published_cdnow_fit(fitted: dict[str, Any]) -> None:
    bgnbd = fitted["bgnbd"]
    params = {k: three_figures(v) for k, v in bgnbd["params"].items()}
    assert params == {"r": 0.243, "alpha": 4.41, "a": 0.793, "b": 2.43}
    # Fader, Hardie & Lee (2005): r = 0.243, alpha = 4.414, a = 0.793, b = 2.426.
    assert round(bgnbd["params"]["alpha"], 3) == 4.414
    assert round(bgnbd["params"]["b"], 3) == 2.426
    assert bgnbd["log_likelihood"] == pytest.approx(-9582.4, abs=0.05)
    assert bgnbd["customers"] == 2357
    assert bgnbd["converged"] is True
    assert fitted["unit"] == "weeks"
    assert fitted["currency"] == "USD"


def test_gamma_gamma_reproduces_the_published_cdnow_fit(fitted: dict[str, Any]) -> None:
    gg = fitted["gamma_gamma"]
    assert gg["customers"] == 946
    assert {k: three_figures(v) for k, v in gg["params"].items()} == {
        "p": 6.25,
        "q": 3.74,
        "gamma": 15.4,
    }
    assert round(gg["params"]["gamma"], 2) == 15.44
    assert gg["converged"] is True


def test_predictions_per_customer(runner: CliRunner, sample_ledger: Path) -> None:
    top = json.loads(run(runner, sample_ledger, "--format", "json", "clv", "top", "5").stdout)
    values = [c["clv"] for c in top]
    assert values == sorted(values, reverse=True)
    assert all(0 <= c["p_alive"] <= 1 for c in top)
    best = top[0]
    shown = run(runner, sample_ledger, "--format", "json", "clv", "show", best["customer_id"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout) == best
    # A customer without a repeat purchase: alive by definition, the population's spend.
    everyone = run(runner, sample_ledger, "--format", "json", "clv", "top", "5000")
    once = next(c for c in json.loads(everyone.stdout) if c["frequency"] == 0)
    assert once["p_alive"] == 1.0
    assert once["expected_spend"] == pytest.approx(6.25 * 15.44 / (3.74 - 1), rel=0.01)
    assert len(json.loads(everyone.stdout)) == 2357


def test_holdout_tracks_actual_repeat_purchases(
    runner: CliRunner, sample_ledger: Path, tmp_path: Path
) -> None:
    chart = tmp_path / "tracking.png"
    result = run(
        runner,
        sample_ledger,
        "--format",
        "json",
        "clv",
        "holdout",
        "--calibration-end",
        "1997-09-30",
        "--holdout-end",
        "1998-06-30",
        "--chart",
        str(chart),
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["customers"] == 2357
    # 1,882 repeat purchase days in weeks 40-78, counted from the file independently.
    assert report["actual"] == 1882
    # The tracking plot: cumulative repeat purchases by week 78 within 5% (Fader, Hardie &
    # Lee 2005, figure 3: the model runs slightly below the actual curve).
    last = report["periods"][-1]
    assert last["cumulative_predicted"] == pytest.approx(last["cumulative_actual"], rel=0.05)
    # Conditional expectations under-predict by about a tenth here (BTYD shows the same).
    assert report["predicted"] == pytest.approx(report["actual"], rel=0.15)
    holdout = [p for p in report["periods"] if p["holdout"]]
    assert 38 <= len(holdout) <= 40
    assert sum(p["actual"] for p in holdout) == report["actual"]
    assert report["by_frequency"][0]["frequency"] == "0"
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["clv", "fit", "--calibration-end", "1990-01-01"], "no purchases by the calibration end"),
        (
            ["clv", "fit", "--calibration-end", "1997-09-30", "--currency", "EUR"],
            "no purchases by the calibration end",
        ),
        (["clv", "show", "nobody"], "customer 'nobody' not found"),
        (["clv", "show", "4", "--model", "99"], "no CLV model 99"),
        (
            ["clv", "holdout", "--calibration-end", "1997-09-30", "--holdout-end", "1997-01-01"],
            "holdout must end after",
        ),
    ],
)
def test_bad_input_is_one_line(
    runner: CliRunner, sample_ledger: Path, fitted: dict[str, Any], args: list[str], message: str
) -> None:
    result = run(runner, sample_ledger, *args)
    assert result.exit_code == 1, result.output
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
