#!/usr/bin/env python3
"""Check the initiative-impact estimate against the truth on many synthetic histories.

For each seed: generate the demo's history (2,500 customers, the loyalty-north initiative with
a known uplift), record it in a fresh SQLite ledger, build the projections and run the same
comparison `crm-ledger compare loyalty-north` runs. Counts how often the true uplift per exposed
customer-week lies inside the reported 95% interval. The last output line is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from crm_ledger import bootstrap
from crm_ledger.config import Settings
from crm_ledger.sources.synthetic import generate


def one_seed(seed: int, customers: int, metric: str, resamples: int) -> dict[str, float]:
    """Estimate, interval and truth for one synthetic history."""
    events, truth = generate(seed, customers=customers)
    with tempfile.TemporaryDirectory() as folder:
        settings = Settings.from_env({}, data_dir=Path(folder))
        with bootstrap.build(settings, create=True) as services:
            for start in range(0, len(events), 10_000):
                services.ledger.record_many(events[start : start + 10_000])
            result = services.read_models.compare(
                truth.initiative_id, metric=metric, resamples=resamples
            )
    during = result.impact.estimates[0]
    expected = (
        truth.expected_uplift_net_revenue_minor_per_customer_week
        if metric == "net_revenue"
        else truth.expected_uplift_orders_per_customer_week
    )
    return {
        "seed": seed,
        "events": len(events),
        "estimate": round(during.estimate or 0.0, 3),
        "ci_low": round(during.ci_low or 0.0, 3),
        "ci_high": round(during.ci_high or 0.0, 3),
        "truth": round(expected, 3),
        "inside": bool(during.ci_low <= expected <= during.ci_high),  # type: ignore[operator]
    }


def main() -> None:
    """Run the seeds and print one line each, then the JSON summary."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--customers", type=int, default=2500)
    parser.add_argument("--metric", choices=("net_revenue", "orders"), default="net_revenue")
    parser.add_argument("--resamples", type=int, default=2000)
    args = parser.parse_args()
    started = time.perf_counter()
    results = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        r = one_seed(seed, args.customers, args.metric, args.resamples)
        results.append(r)
        mark = "inside " if r["inside"] else "OUTSIDE"
        print(
            f"seed {seed:3d}: estimate {r['estimate']:10.3f}  95% CI [{r['ci_low']:10.3f}, "
            f"{r['ci_high']:10.3f}]  truth {r['truth']:10.3f}  {mark}",
            flush=True,
        )
    inside = sum(r["inside"] for r in results)
    summary = {
        "seeds": len(results),
        "inside": inside,
        "coverage": round(inside / len(results), 3),
        "metric": args.metric,
        "customers": args.customers,
        "mean_estimate": round(sum(r["estimate"] for r in results) / len(results), 3),
        "mean_truth": round(sum(r["truth"] for r in results) / len(results), 3),
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
