#!/usr/bin/env python3
"""Benchmark the ledger's write paths on the same synthetic events, in one run.

* record_many: batches of many customers' events, one transaction per batch;
* naive: the get + command + save path, one transaction per event (``Ledger.record``) on
  eventsourcing's default repository (no aggregate cache), timed over the complete histories
  of a sample of the customers (``--naive-share``), so streams grow as they do in real use.

Both run with the process tuning the CLI uses for bulk work (``bootstrap.tune_for_throughput``:
a larger first-generation GC threshold); record_many is also timed with Python's default GC.

SQLite always; PostgreSQL too when --database-url (or CRM_LEDGER_BENCH_DATABASE_URL) is given.
The last output line is a JSON object: events, store, record_many_eps, naive_eps, ratio (for
SQLite), with a nested "postgres" object of the same figures when PostgreSQL was measured.

With several sizes (``--events 100000,1000000,3000000``) each store also records the largest
number of events into one ledger, with the chain and sealing on, and reports per size
record_many_eps_100k, _1m, _3m (the average rate over the first N events, as the ledger
grows), marginal_eps_* (the rate over the last tenth before N: what an append costs at that
size), flatness (the largest size's average rate / the smallest's) and marginal_flatness.
The sweep runs again with each batch committed in the background while the next is
prepared (``record_many(wait=False)``, as the ingest worker stores): background_eps_*,
background_marginal_eps_*, background_flatness, and background_ratio_* (÷ record_many_eps_*
of the same size, same run).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crm_ledger import bootstrap
from crm_ledger.adapters.eventstore import drop_postgres_schema, postgres_env, sqlite_env
from crm_ledger.application import Ledger
from crm_ledger.sources.synthetic import generate

if TYPE_CHECKING:
    from crm_ledger.aggregates import Touchpoint


def synthetic_events(count: int, seed: int) -> list[Touchpoint]:
    """``count`` events of a synthetic history, in business-time order."""
    customers = max(50, count * 2500 // 54000 + 50)
    events, _ = generate(seed, customers=customers)
    while len(events) < count:
        customers = customers * 3 // 2
        events, _ = generate(seed, customers=customers)
    return events[:count]


def time_record_many(env: dict[str, str], events: list[Touchpoint], batch: int) -> float:
    with Ledger(env) as ledger:
        started = time.perf_counter()
        for start in range(0, len(events), batch):
            result = ledger.record_many(events[start : start + batch])
            if result.rejected:
                raise SystemExit(f"bench: unexpected rejections: {result.rejected[:3]}")
        elapsed = time.perf_counter() - started
        if ledger.count_events() != len(events):
            raise SystemExit("bench: record_many did not store every event")
    return len(events) / elapsed


def time_naive(env: dict[str, str], events: list[Touchpoint]) -> float:
    with Ledger({**env, "AGGREGATE_CACHE_MAXSIZE": ""}) as ledger:
        started = time.perf_counter()
        for tp in events:
            ledger.record(tp)
        elapsed = time.perf_counter() - started
        if ledger.count_events() != len(events):
            raise SystemExit("bench: the naive path did not store every event")
    return len(events) / elapsed


def size_name(size: int) -> str:
    """100k, 1m, 3m, 2.5m."""
    if size >= 1_000_000:
        return f"{size / 1_000_000:g}m"
    return f"{size / 1000:g}k"


def time_sweep(
    env: dict[str, str], events: list[Touchpoint], batch: int, sizes: list[int], prefix: str
) -> dict[str, Any]:
    """Record every event into one ledger; the average and marginal rate at each size.
    ``prefix`` "background" commits each batch in the background while the next is
    prepared (``record_many(wait=False)``, as the ingest worker does on SQLite)."""
    wait = prefix != "background"
    reached: dict[int, float] = {}
    marks = sorted({*sizes, *(n - n // 10 for n in sizes)})
    with Ledger(env) as ledger:
        started = time.perf_counter()
        done = 0
        for start in range(0, len(events), batch):
            chunk = events[start : start + batch]
            if ledger.record_many(chunk, wait=wait).rejected:
                raise SystemExit("bench: unexpected rejections in the sweep")
            done += len(chunk)
            for mark in marks:
                if mark not in reached and done >= mark:
                    ledger.flush()  # a size is reached once its events are stored
                    reached[mark] = time.perf_counter() - started
            if done in sizes or any(done >= n > done - len(chunk) for n in sizes):
                rate = done / reached[max(m for m in reached)]
                print(f"    {prefix:>10} {done:>10,} events: {rate:,.0f} ev/s")
    figures: dict[str, Any] = {}
    for n in sizes:
        name = size_name(n)
        window = n // 10
        figures[f"{prefix}_eps_{name}"] = round(n / reached[n])
        figures[f"{prefix}_marginal_eps_{name}"] = round(
            window / (reached[n] - reached[n - window])
        )
    low, high = size_name(min(sizes)), size_name(max(sizes))
    figures[f"{prefix}_flatness"] = round(
        figures[f"{prefix}_eps_{high}"] / figures[f"{prefix}_eps_{low}"], 3
    )
    figures[f"{prefix}_marginal_flatness"] = round(
        figures[f"{prefix}_marginal_eps_{high}"] / figures[f"{prefix}_marginal_eps_{low}"], 3
    )
    return figures


def sweep(
    store: str, make_env: Any, events: list[Touchpoint], batch: int, sizes: list[int]
) -> dict[str, Any]:
    """Both sweeps on fresh ledgers: each batch committed before the next is prepared
    (record_many_eps_*, flatness, ...), then committed in the background (background_eps_*,
    background_flatness, ...: by the commit process on SQLite, the commit thread on
    PostgreSQL), and their ratio at each size (background_ratio_*)."""
    bootstrap.tune_for_throughput()
    print(f"{store:>8}: sweep to {max(sizes):,} events, each batch committed before the next")
    waited = time_sweep(make_env(), events, batch, sizes, "record_many")
    figures = {
        "store": store,
        **waited,
        "flatness": waited["record_many_flatness"],
        "marginal_flatness": waited["record_many_marginal_flatness"],
    }
    for n in sizes:
        figures[f"marginal_eps_{size_name(n)}"] = figures.pop(
            f"record_many_marginal_eps_{size_name(n)}"
        )
    del figures["record_many_flatness"], figures["record_many_marginal_flatness"]
    print(f"{store:>8}: sweep to {max(sizes):,} events, committed in the background")
    background = time_sweep(make_env(), events, batch, sizes, "background")
    figures.update(background)
    for n in sizes:
        name = size_name(n)
        figures[f"background_ratio_{name}"] = round(
            background[f"background_eps_{name}"] / waited[f"record_many_eps_{name}"], 3
        )
    return figures


def sample_of_customers(events: list[Touchpoint], share: float) -> list[Touchpoint]:
    """The complete histories of every k-th subject, in the original order."""
    subjects = sorted({e.customer_id for e in events})
    step = max(1, round(1 / share))
    chosen = set(subjects[::step])
    return [e for e in events if e.customer_id in chosen]


def measure(
    store: str,
    make_env: Any,
    events: list[Touchpoint],
    naive_share: float,
    batch: int,
    sizes: list[int],
) -> dict[str, Any]:
    if len(sizes) > 1:
        return sweep(store, make_env, events, batch, sizes)
    naive_sample = sample_of_customers(events, naive_share)
    gc_default = gc.get_threshold()
    fast_default_gc = time_record_many(make_env(), events, batch)
    bootstrap.tune_for_throughput()
    try:
        naive = time_naive(make_env(), naive_sample)
        fast = time_record_many(make_env(), events, batch)
    finally:
        gc.set_threshold(*gc_default)
    figures = {
        "events": len(events),
        "store": store,
        "record_many_eps": round(fast),
        "naive_eps": round(naive, 1),
        "ratio": round(fast / naive, 1),
        "record_many_eps_default_gc": round(fast_default_gc),
        "naive_events": len(naive_sample),
        "batch_size": batch,
    }
    print(
        f"{store:>8}: record_many {fast:>9,.0f} ev/s over {len(events):,} events "
        f"(batches of {batch:,}; {fast_default_gc:,.0f} ev/s with default GC) | naive "
        f"{naive:>7,.0f} ev/s over {len(naive_sample):,} events | ratio {fast / naive:,.1f}x"
    )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--events",
        type=lambda text: sorted(int(n) for n in text.split(",")),
        default=[100_000],
        help="events to record; a comma list (100000,1000000,3000000) sweeps the sizes",
    )
    parser.add_argument(
        "--naive-share",
        type=float,
        default=0.1,
        help="share of customers whose full histories the naive path records",
    )
    parser.add_argument("--batch-size", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--database-url", default=os.environ.get("CRM_LEDGER_BENCH_DATABASE_URL"))
    args = parser.parse_args()

    sizes: list[int] = args.events
    events = synthetic_events(max(sizes), args.seed)
    gc.freeze()  # the harness's input events are not the ledger's work: do not rescan them
    print(
        f"bench_ledger: {len(events):,} synthetic events of "
        f"{len({e.customer_id for e in events}):,} subjects"
    )
    with tempfile.TemporaryDirectory() as folder:

        def sqlite() -> dict[str, str]:
            return sqlite_env(str(Path(folder) / f"{uuid.uuid4().hex}.sqlite"))

        result = measure("sqlite", sqlite, events, args.naive_share, args.batch_size, sizes)

    if args.database_url:
        schemas: list[str] = []

        def postgres() -> dict[str, str]:
            schemas.append(f"bench_{uuid.uuid4().hex[:10]}")
            return postgres_env(args.database_url, schemas[-1])

        try:
            result["postgres"] = measure(
                "postgres", postgres, events, args.naive_share, args.batch_size, sizes
            )
        finally:
            for schema in schemas:
                drop_postgres_schema(args.database_url, schema)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
