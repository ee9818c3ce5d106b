#!/usr/bin/env python3
"""Find, list and export at scale: a ledger of a synthetic history plus a million extra
orders (about 1.4M events), then, each as a new `crm-ledger` process (median of --repeats):

* find_email_s, find_name_s: ``customer find`` by e-mail and by a name prefix;
* list_s, list_deep_s: ``customer list --region north`` from the start and from the middle
  (``--after``): keyset pages cost the same wherever they start;
* show_s: ``customer show`` of the same customer, the baseline a lookup is compared with
  (find_ratio = find_email_s / show_s);
* export_orders_s, export_orders_rss_mb: ``export orders --out orders.parquet`` (every order)
  and the export process's peak RSS; export_rows; export_csv_s for the same rows as CSV.

SQLite, in a temporary folder (or --keep DIR). The last line is a JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

from crm_ledger import bootstrap
from crm_ledger.aggregates import Touchpoint
from crm_ledger.config import Settings
from crm_ledger.sources.synthetic import START, WEEKS, generate


def extra_orders(customers: list[str], count: int, seed: int) -> list[Touchpoint]:
    """``count`` store orders spread over the history of ``customers``."""
    rng = random.Random(seed)
    span = WEEKS * 7 * 86400
    orders = []
    for i in range(count):
        at = START + timedelta(seconds=rng.randrange(span))
        data = {
            "order_id": f"X{i:08d}",
            "amount_minor": rng.randrange(500, 20_000),
            "currency": "EUR",
            "margin_minor": None,
            "items": 1,
            "channel": "store",
        }
        about = rng.choice(customers)
        orders.append(
            Touchpoint(
                "OrderPlaced",
                uuid.UUID(int=rng.getrandbits(128), version=4),
                about,
                at,
                "pos",
                None,
                None,
                data,
            )
        )
    return orders


def build(folder: Path, customers: int, orders: int) -> tuple[int, dict[str, str]]:
    """The ledger: the generator's history, then the extra orders; caught up."""
    settings = Settings.from_env({}, data_dir=folder)
    bootstrap.tune_for_throughput()
    events, truth = generate(5, customers=customers)
    ids = sorted(
        {e.customer_id for e in events if e.event_type == "CustomerRegistered"} - set(truth.erased)
    )
    events += extra_orders(ids, orders, 5)
    started = time.perf_counter()
    with bootstrap.build(settings, create=True) as services:
        for start in range(0, len(events), 10_000):
            services.ledger.record_many(events[start : start + 10_000])
        print(
            f"imported {len(events):,} events in {time.perf_counter() - started:.0f} s", flush=True
        )
        started = time.perf_counter()
        services.read_models.catch_up()
        print(f"read models caught up in {time.perf_counter() - started:.0f} s", flush=True)
        one = services.ledger.customer(ids[len(ids) // 3])
    sample = {
        "id": one.customer_id,
        "email": one.profile["email"],
        "name": one.profile["name"].split(" ")[-1][:4],
        "middle": ids[len(ids) // 2],
    }
    return len(events), sample


def cli(folder: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "crm_ledger.cli", "--data-dir", str(folder), *args]


def median_s(command: list[str], repeats: int) -> float:
    subprocess.run(command, check=True, capture_output=True)  # warm the page cache
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        samples.append(time.perf_counter() - started)
    return round(statistics.median(samples), 3)


def main() -> None:
    """Build, measure, print."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--orders", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--keep", type=Path, help="Build the ledger here and keep it.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp) / "ledger"
        events, sample = build(folder, args.customers, args.orders)
        out = Path(tmp) / "orders.parquet"
        # Peak RSS of the export process alone: /usr/bin/time reports it (a child forked from
        # this process would count the pages it shared with us before exec).
        started = time.perf_counter()
        export = cli(folder, "--format", "json", "export", "orders", "--out", str(out))
        done = subprocess.run(
            ["/usr/bin/time", "-f", "%M", *export], check=True, capture_output=True, text=True
        )
        export_s = time.perf_counter() - started
        rss_mb = int(done.stderr.strip().splitlines()[-1]) / 1024
        rows = json.loads(done.stdout)["rows"]
        started = time.perf_counter()
        subprocess.run(
            cli(folder, "export", "orders", "--out", str(Path(tmp) / "o.csv")),
            check=True,
            capture_output=True,
        )
        csv_s = time.perf_counter() - started
        figures = {
            "events": events,
            "export_rows": rows,
            "export_orders_s": round(export_s, 2),
            "export_orders_rss_mb": round(rss_mb, 1),
            "export_csv_s": round(csv_s, 2),
            "show_s": median_s(cli(folder, "customer", "show", sample["id"]), args.repeats),
            "find_email_s": median_s(
                cli(folder, "customer", "find", sample["email"]), args.repeats
            ),
            "find_name_s": median_s(cli(folder, "customer", "find", sample["name"]), args.repeats),
            "list_s": median_s(cli(folder, "customer", "list", "--region", "north"), args.repeats),
            "list_deep_s": median_s(
                cli(folder, "customer", "list", "--region", "north", "--after", sample["middle"]),
                args.repeats,
            ),
        }
        figures["find_ratio"] = round(figures["find_email_s"] / figures["show_s"], 2)
        for name, value in figures.items():
            print(f"{name}: {value}")
        print(json.dumps(figures))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
