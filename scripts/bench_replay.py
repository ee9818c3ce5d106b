#!/usr/bin/env python3
"""Benchmark projection replay against the raw read of the notification log, in one run.

* raw_read_eps: every notification read (eventsourcing's ``select_notifications``) and decoded
  into its domain event (the ledger's mapper): what reading the log costs any consumer.
* replay_eps: a rebuild of all projections (customer_360, lifetime_value, journey_timeline)
  from position 0 into fresh tables, as ``crm-ledger projections rebuild`` runs it by default
  (one worker process per core, at most one per projection group; the heaviest projection has
  its own), started from a fresh process; the peak RSS of the largest process is recorded:
  max_rss_mb_1m, then max_rss_mb_3m after the ledger has grown to three times the events.
  The same rebuild in one process is reported as replay_eps_one_worker.
* read_log_eps: the projections' own read path (``Ledger.read_log``), for reference.
* asof_p95_ms: one customer with 1,000 events, lifetime value as of the moment their last event
  was recorded (``crm-ledger ltv ID --as-of T``: all 1,000 count, while the ledger holds later
  events of others), 200 times; also the 360 view's p95 (view_asof_p95_ms).

SQLite, in a temporary folder. The last output line is a JSON object with the keys events,
replay_eps, raw_read_eps, ratio, asof_p95_ms, max_rss_mb_1m, max_rss_mb_3m.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crm_ledger import bootstrap
from crm_ledger.aggregates import Touchpoint
from crm_ledger.config import Settings
from crm_ledger.services.read_models import Moment
from crm_ledger.sources.synthetic import generate

if TYPE_CHECKING:
    from crm_ledger.application import Ledger

HEAVY = "BENCH-HEAVY"

REBUILD = """
import json, resource, sys, time
from pathlib import Path
from crm_ledger import bootstrap
from crm_ledger.config import Settings
settings = Settings.from_env({}, data_dir=Path(sys.argv[1]))
workers = int(sys.argv[2])
bootstrap.tune_for_throughput()
with bootstrap.open_ledger(settings) as ledger:
    head = ledger.log_head()
started = time.perf_counter()
bootstrap.rebuild_projections(settings, workers=workers)
seconds = time.perf_counter() - started
status = Path("/proc/self/status").read_text()
own_kb = int(next(l for l in status.splitlines() if l.startswith("VmHWM")).split()[1])
children_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"notifications": head, "seconds": seconds,
                  "peak_mb": max(own_kb, children_kb) / 1024}))
"""


def chunk(seed: int, events: int) -> list[Touchpoint]:
    """About ``events`` synthetic events whose customer ids are unique to ``seed``."""
    customers = max(50, events * 2500 // 54_000)
    touchpoints, _ = generate(seed, customers=customers)
    prefix = f"K{seed}-"
    renamed = []
    for tp in touchpoints:
        data = dict(tp.data)
        if "survivor_id" in data:
            data["survivor_id"] = prefix + data["survivor_id"]
        subject = tp.customer_id if tp.subject.value != "customer" else prefix + tp.customer_id
        renamed.append(dataclasses.replace(tp, customer_id=subject, data=data))
    return renamed


def heavy_customer(count: int) -> list[Touchpoint]:
    """``count`` orders and interactions of one customer, six hours apart."""
    start = datetime(2024, 1, 1, tzinfo=UTC)
    out = [
        _tp(
            "CustomerRegistered",
            start,
            region="north",
            segment="retail",
            country="NL",
            name=None,
            email=None,
            phone=None,
            address=None,
            lifecycle_stage=None,
        )
    ]
    for i in range(1, count):
        at = start + timedelta(hours=6 * i)
        if i % 3 == 0:
            out.append(
                _tp(
                    "OrderPlaced",
                    at,
                    order_id=f"H{i}",
                    amount_minor=1000 + i,
                    currency="EUR",
                    margin_minor=None,
                    items=1,
                    channel="web",
                )
            )
        else:
            out.append(
                _tp(
                    "InteractionRecorded",
                    at,
                    channel=("web", "email")[i % 2],
                    device=None,
                    direction="inbound",
                    kind="page_view",
                    score=None,
                    campaign=None,
                    note=None,
                )
            )
    return out


def _tp(event_type: str, at: datetime, **data: Any) -> Touchpoint:
    return Touchpoint(event_type, uuid.uuid4(), HEAVY, at, "bench", None, None, data)


_SEEDS = itertools.count(1001)


def grow(ledger: Ledger, target: int, heavy: list[Touchpoint], progress: str) -> None:
    """Record synthetic chunks until the log holds ``target`` notifications; the heavy
    customer's events are spread over the batches of the first chunk."""
    while ledger.log_head() < target:
        events = chunk(next(_SEEDS), min(500_000, target))
        step = max(1, len(events) // max(1, len(heavy)))
        mixed: list[Touchpoint] = []
        for i, e in enumerate(events):
            mixed.append(e)
            if heavy and i % step == 0:
                mixed.append(heavy.pop(0))
        mixed.extend(heavy)
        heavy.clear()
        for start in range(0, len(mixed), 10_000):
            ledger.record_many(mixed[start : start + 10_000])
            if ledger.log_head() >= target:
                break
        print(f"{progress}: {ledger.log_head():,} notifications", file=sys.stderr, flush=True)


def raw_read(ledger: Ledger) -> tuple[float, float, int]:
    """(library read-and-decode rate, the projections' read rate, notifications)."""
    recorder, mapper = ledger.recorder, ledger.mapper
    started, count, position = time.perf_counter(), 0, 1
    while True:
        notifications = recorder.select_notifications(position, 20_000)
        if not notifications:
            break
        for n in notifications:
            mapper.to_domain_event(n)
        count += len(notifications)
        position = notifications[-1].id + 1
    library = count / (time.perf_counter() - started)
    started, after = time.perf_counter(), 0
    while True:
        page = ledger.read_log(after, 20_000)
        if page.last == after:
            break
        after = page.last
    return library, after / (time.perf_counter() - started), count


def rebuild(folder: Path, workers: int) -> dict[str, Any]:
    """A full rebuild of all projections, as ``crm-ledger projections rebuild --workers N``
    runs it, started from a fresh process; the peak RSS is the largest process's."""
    (folder / "projections.sqlite").unlink(missing_ok=True)
    for suffix in ("-wal", "-shm"):
        (folder / f"projections.sqlite{suffix}").unlink(missing_ok=True)
    done = subprocess.run(
        [sys.executable, "-c", REBUILD, str(folder), str(workers)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def as_of_times(folder: Path, settings: Settings, repeats: int) -> tuple[float, float, int]:
    """p95 of the heavy customer's lifetime value and 360 view as of the moment their last
    event was recorded, in milliseconds, and how many of their events that moment covers."""
    with bootstrap.build(settings) as services:
        models = services.read_models
        stream = services.ledger.read_stream(HEAVY)
        last = stream[-1].recorded
        at = Moment(as_of=datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=last))
        values, views = [], []
        for _ in range(repeats):
            started = time.perf_counter()
            models.values(HEAVY, at)
            values.append((time.perf_counter() - started) * 1000)
        for _ in range(max(20, repeats // 10)):
            started = time.perf_counter()
            models.view(HEAVY, at)
            views.append((time.perf_counter() - started) * 1000)
    covered = sum(1 for r in stream if at.counts(r))
    return _p95(values), _p95(views), covered


def _p95(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=20)[-1]


def main() -> None:
    """Build the ledger, measure at 1M and 3M events, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--grow-to", type=int, default=3_000_000)
    parser.add_argument("--heavy-events", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-replay-") as tmp:
        folder = Path(tmp)
        settings = Settings.from_env({}, data_dir=folder)
        bootstrap.tune_for_throughput()
        with bootstrap.open_ledger(settings, create=True) as ledger:
            grow(ledger, args.events, heavy_customer(args.heavy_events), "building")
            library_eps, read_log_eps, notifications = raw_read(ledger)
        print(
            f"raw read and decode: {library_eps:,.0f} notifications/s "
            f"(projections' read path {read_log_eps:,.0f}/s) over {notifications:,}"
        )

        workers = max(1, min(3, os.cpu_count() or 1))
        single = rebuild(folder, 1)
        single_eps = single["notifications"] / single["seconds"]
        print(
            f"replay, one process: {single_eps:,.0f} notifications/s, "
            f"{single['seconds']:.1f} s, peak RSS {single['peak_mb']:.0f} MB"
        )
        first = rebuild(folder, workers)
        replay_eps = first["notifications"] / first["seconds"]
        print(
            f"replay (crm-ledger projections rebuild, {workers} workers): "
            f"{replay_eps:,.0f} notifications/s, {first['seconds']:.1f} s, "
            f"peak RSS {first['peak_mb']:.0f} MB"
        )
        asof_p95, view_p95, covered = as_of_times(folder, settings, args.repeats)
        print(
            f"ltv as of T for a customer with {args.heavy_events} events ({covered} by T): "
            f"p95 {asof_p95:.2f} ms; 360 view as of T p95 {view_p95:.2f} ms"
        )

        with bootstrap.open_ledger(settings) as ledger:
            grow(ledger, args.grow_to, [], "growing")
        third = rebuild(folder, workers)
        replay_eps_3m = third["notifications"] / third["seconds"]
        print(
            f"replay at {third['notifications']:,}: {replay_eps_3m:,.0f} notifications/s, "
            f"peak RSS {third['peak_mb']:.0f} MB"
        )

    ratio = replay_eps / library_eps
    print(f"ratio replay / raw read = {ratio:.3f}")
    print(
        json.dumps(
            {
                "events": first["notifications"],
                "replay_eps": round(replay_eps),
                "raw_read_eps": round(library_eps),
                "ratio": round(ratio, 3),
                "asof_p95_ms": round(asof_p95, 2),
                "max_rss_mb_1m": round(first["peak_mb"], 1),
                "max_rss_mb_3m": round(third["peak_mb"], 1),
                "events_3m": third["notifications"],
                "replay_eps_3m": round(replay_eps_3m),
                "read_log_eps": round(read_log_eps),
                "workers": workers,
                "replay_eps_one_worker": round(single_eps),
                "max_rss_mb_1m_one_worker": round(single["peak_mb"], 1),
                "view_asof_p95_ms": round(view_p95, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
