#!/usr/bin/env python3
"""Benchmark the CLV fit (BG/NBD + Gamma-Gamma) against lifetimes 0.11.3 on the same summary.

CDNOW_master (23,570 customers) is imported through the ledger (``crm-ledger import --cdnow``),
the projections are built, and the per-customer summary (calibration end 1997-09-30, weeks) is
taken from the ledger's purchases. Then, in the same run:

* fit_s: ``clv.fit_bgnbd`` + ``clv.fit_gamma_gamma`` on that summary (best of --repeats);
* lifetimes_fit_s: lifetimes' BetaGeoFitter + GammaGammaFitter on the same numbers, in its own
  throwaway virtualenv (``.cache/bench-lifetimes``, lifetimes==0.11.3 with pandas<3, created on
  first use; lifetimes is never a dependency of the project), best of --repeats.

Parameters of both are printed side by side. The last line is a JSON object with the keys
customers, fit_s, lifetimes_fit_s, ratio (ours / lifetimes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from crm_ledger import bootstrap
from crm_ledger.analytics import clv
from crm_ledger.config import Settings

ROOT = Path(__file__).resolve().parents[1]
LIFETIMES_ENV = ROOT / ".cache" / "bench-lifetimes"
LIFETIMES_REQUIREMENTS = ["lifetimes==0.11.3", "pandas<3"]

LIFETIMES_FIT = """
import json, sys, time
import pandas as pd
from lifetimes import BetaGeoFitter, GammaGammaFitter
data = pd.read_csv(sys.argv[1])
repeats = int(sys.argv[2])
best = float("inf")
for _ in range(repeats):
    started = time.perf_counter()
    bg = BetaGeoFitter().fit(data["frequency"], data["recency"], data["T"])
    buyers = data[(data["frequency"] > 0) & (data["monetary_value"] > 0)]
    gg = GammaGammaFitter().fit(buyers["frequency"], buyers["monetary_value"])
    best = min(best, time.perf_counter() - started)
print(json.dumps({
    "seconds": best,
    "bgnbd": {k: float(v) for k, v in bg.params_.items()},
    "gamma_gamma": {k: float(v) for k, v in gg.params_.items()},
}))
"""


def lifetimes_python() -> Path:
    """The throwaway environment's interpreter, created on first use."""
    python = LIFETIMES_ENV / "bin" / "python"
    if not python.exists():
        print("creating the lifetimes environment (once)", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(LIFETIMES_ENV)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", *LIFETIMES_REQUIREMENTS], check=True
        )
    return python


def build_summary(folder: Path, master: Path) -> clv.Summary:
    """Import the master file with the CLI, then summarise the ledger's purchases."""
    started = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "crm_ledger.cli",
            "--data-dir",
            str(folder),
            "import",
            "--cdnow",
            str(master),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    print(f"imported CDNOW_master in {time.perf_counter() - started:.1f} s", flush=True)
    settings = Settings.from_env({}, data_dir=folder)
    with bootstrap.build(settings) as services:
        end = datetime(1997, 9, 30, tzinfo=UTC)
        started = time.perf_counter()
        summary = services.predictions.summary(end, currency="USD")
        print(f"summary from the ledger in {time.perf_counter() - started:.2f} s", flush=True)
    return summary


def main() -> None:
    """Import, summarise, fit both ways, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--cdnow-dir",
        type=Path,
        default=Path(os.environ.get("CRM_LEDGER_CDNOW_DIR", ROOT / ".cache/cdnow")),
    )
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    master = args.cdnow_dir / "CDNOW_master.txt"
    if not master.is_file():
        sys.exit(f"{master} is missing: run `make cdnow` first")
    python = lifetimes_python()

    with tempfile.TemporaryDirectory(prefix="bench-clv-") as tmp:
        folder = Path(tmp)
        summary = build_summary(folder / "ledger", master)
        fit_s = float("inf")
        for _ in range(args.repeats):
            started = time.perf_counter()
            bgnbd, gamma_gamma = clv.fit_bgnbd(summary), clv.fit_gamma_gamma(summary)
            fit_s = min(fit_s, time.perf_counter() - started)
        table = folder / "summary.csv"
        with table.open("w") as f:
            f.write("frequency,recency,T,monetary_value\n")
            for row in zip(
                summary.frequency, summary.recency, summary.age, summary.monetary, strict=True
            ):
                f.write(",".join(repr(float(v)) for v in row) + "\n")
        done = subprocess.run(
            [str(python), "-c", LIFETIMES_FIT, str(table), str(args.repeats)],
            check=True,
            capture_output=True,
            text=True,
        )
        theirs = json.loads(done.stdout.strip().splitlines()[-1])

    customers = len(summary.customers)
    print(f"customers: {customers:,}; repeat buyers: {int((summary.frequency > 0).sum()):,}")
    print(
        f"crm-ledger  BG/NBD {_fmt(bgnbd.params)} LL {bgnbd.log_likelihood:.2f} "
        f"converged={bgnbd.converged}; Gamma-Gamma {_fmt(gamma_gamma.params)}"
    )
    theirs_ll = float(
        clv.bgnbd_log_likelihood(
            [theirs["bgnbd"][k] for k in ("r", "alpha", "a", "b")],
            summary.frequency,
            summary.recency,
            summary.age,
        ).sum()
    )
    print(
        f"lifetimes   BG/NBD {_fmt(theirs['bgnbd'])} LL {theirs_ll:.2f}; "
        f"Gamma-Gamma {_fmt(theirs['gamma_gamma'])}"
    )
    ratio = fit_s / theirs["seconds"]
    print(f"fit: crm-ledger {fit_s:.3f} s, lifetimes {theirs['seconds']:.3f} s, ratio {ratio:.3f}")
    print(
        json.dumps(
            {
                "customers": customers,
                "fit_s": round(fit_s, 4),
                "lifetimes_fit_s": round(theirs["seconds"], 4),
                "ratio": round(ratio, 4),
                "log_likelihood": round(bgnbd.log_likelihood, 2),
                "lifetimes_log_likelihood": round(theirs_ll, 2),
            }
        )
    )


def _fmt(params: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in params.items())


if __name__ == "__main__":
    main()
