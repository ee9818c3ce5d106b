#!/usr/bin/env python3
"""Benchmark the Kafka path: publish N events with the Publisher, ingest them with the
exactly-once worker (into SQLite, or PostgreSQL with --database-url), and measure in the same
run the baselines over the same bytes and events:

* raw_produce_eps: a plain kafka-python KafkaProducer (same acks, idempotence and batching)
  sending the already-encoded messages (publish_ratio = publish_eps / raw_produce_eps);
* raw_consume_eps: a plain KafkaConsumer reading the published topic;
* ingest_eps_waiting: one worker that commits each batch before it polls the next
  (``background=False``), where the product's worker commits in the background;
* record_many_eps: the ledger's batch path on the same events, without Kafka, each batch
  committed before the next (ingest_ratio = ingest_eps / record_many_eps), and
  record_many_background_eps, committed in the background as the worker does
  (ingest_ratio_background = ingest_eps / record_many_background_eps).

The ingest workers run as separate processes in one consumer group, one fresh ledger per
--workers count (default 1 on SQLite, which has a single writer; 1,2 on PostgreSQL):
ingest_eps_1w, ingest_eps_2w, and the CPU seconds per 1,000 events of the workers, the Kafka
broker and the PostgreSQL server (cpu_s_per_1k_worker_1w, _broker_1w, _database_1w, ...), so
the scaling to N machines can be projected (a worker's CPU and RSS include its SQLite commit
process). Each worker samples its RSS; the first one's RSS
at a quarter, half, three quarters and all of its messages shows whether memory stays flat
(max_rss_mb is the peak). Uses the broker at --bootstrap (or KAFKA_BOOTSTRAP_SERVERS), else
starts one with scripts/kafka_server.sh. The last line is a JSON object of every figure.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

ROOT = Path(__file__).resolve().parents[1]
KAFKA_SCRIPT = ROOT / "scripts" / "kafka_server.sh"


def rss_mb() -> float:
    """This process's current resident memory and its child processes' (the SQLite commit
    process), in MiB."""
    pids = ["self"]
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError):
            pids += (task / "children").read_text().split()
    pages = 0
    for pid in pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/statm") as f:
            pages += int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def child_ingest(args: argparse.Namespace) -> None:
    """One ingest worker of the group; print one JSON line of its figures."""
    from crm_ledger import bootstrap
    from crm_ledger.adapters.avro import Codec, SchemaRegistry
    from crm_ledger.adapters.kafka import IngestStats, IngestWorker, KafkaSettings
    from crm_ledger.application import Ledger

    bootstrap.tune_for_throughput()
    settings = KafkaSettings(
        bootstrap=args.bootstrap, topic=args.topic, dlq_topic=f"{args.topic}.dlq", group=args.group
    )
    rss: list[tuple[int, float]] = []
    last_batch = [0.0]
    # Peak RSS by sampling: getrusage's ru_maxrss survives exec on Linux, so a worker started
    # from this (large) benchmark process would report the parent's size, not its own.
    peak = [0.0]

    def sample() -> None:
        while True:
            peak[0] = max(peak[0], rss_mb())
            time.sleep(0.05)

    threading.Thread(target=sample, daemon=True).start()

    def on_batch(stats: IngestStats) -> None:
        last_batch[0] = time.time()
        rss.append((stats.consumed, round(rss_mb(), 1)))

    with Ledger(store_env(args.database_url, args.data_dir, args.store)) as ledger:
        codec = Codec(SchemaRegistry(ROOT / "schemas"))
        worker = IngestWorker(
            ledger,
            codec,
            settings,
            max_batch=args.batch_size,
            on_batch=on_batch,
            poll_timeout_ms=200,
            background=not args.wait,
        )
        started = time.time()
        stats = worker.run(until_caught_up=True)
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # the commit process, once closed
    print(
        json.dumps(
            {
                "consumed": stats.consumed,
                "recorded": stats.recorded,
                "dead_lettered": stats.dead_lettered,
                "started": started,
                "last_batch": last_batch[0],
                "max_rss_mb": round(max(peak[0], rss_mb()), 1),
                "rss": rss,
                "cpu_s": own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime,
            }
        )
    )


def store_env(url: str | None, folder: str, name: str) -> dict[str, str]:
    """The ledger ``name``: a SQLite file in ``folder``, or a PostgreSQL schema at ``url``."""
    from crm_ledger.adapters.eventstore import postgres_env, sqlite_env

    if url:
        return postgres_env(url, name)
    return sqlite_env(str(Path(folder) / f"{name}.sqlite"))


def cpu_seconds(match: Callable[[str, str], bool]) -> float:
    """CPU seconds (user + system) used so far by the processes ``match(comm, cmdline)``
    picks, with their children that exited (PostgreSQL's backends end with their
    connections, and the postmaster then holds their time)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            comm = stat.read_text().split("(", 1)[1].rsplit(")", 1)[0]
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError):
            continue  # the process ended meanwhile
        if match(comm, cmdline):
            total += sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    return total / os.sysconf("SC_CLK_TCK")


def broker_cpu() -> float:
    return cpu_seconds(lambda comm, cmdline: "kafka.Kafka" in cmdline)


def database_cpu() -> float:
    return cpu_seconds(lambda comm, cmdline: comm == "postgres")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=5_000)
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"))
    parser.add_argument(
        "--database-url",
        default=os.environ.get("CRM_LEDGER_BENCH_DATABASE_URL"),
        help="ingest into PostgreSQL (a fresh schema per run) instead of SQLite",
    )
    parser.add_argument(
        "--workers",
        type=lambda text: [int(n) for n in text.split(",")],
        default=None,
        help="ingest worker processes in one group, a comma list runs each in turn "
        "(default: 1 on SQLite, which has a single writer; 1,2 on PostgreSQL)",
    )
    parser.add_argument(
        "--no-waiting-baseline",
        action="store_true",
        help="skip the run of a worker that commits each batch before the next",
    )
    parser.add_argument("--wait", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-ingest", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--group", help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_ingest:
        child_ingest(args)
        return
    if args.workers is None:
        args.workers = [1, 2] if args.database_url else [1]

    started_broker = False
    if not args.bootstrap:
        run = subprocess.run(
            [str(KAFKA_SCRIPT), "start"], capture_output=True, text=True, check=True
        )
        args.bootstrap, started_broker = run.stdout.strip(), True
    try:
        figures = measure(args)
    finally:
        if started_broker:
            subprocess.run([str(KAFKA_SCRIPT), "stop"], check=False)
    print(json.dumps(figures))


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from crm_ledger.adapters.avro import Codec, SchemaRegistry
    from crm_ledger.sources.synthetic import generate

    n = args.events
    print(f"bench_ingest: generating {n:,} synthetic events", flush=True)
    events, _ = generate(args.seed, customers=n * 2500 // 54000 + 100)
    events = events[:n]
    n = len(events)
    codec = Codec(SchemaRegistry(ROOT / "schemas"))
    print(f"bench_ingest: {n:,} events, on {'PostgreSQL' if args.database_url else 'SQLite'}")
    # The harness's own million input events are not the ledger's work: keep the collector
    # from rescanning them (it cut record_many to a quarter of its speed at 1M events).
    gc.freeze()
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    figures: dict[str, Any] = {"events": n, **time_publishing(args, codec, events, topic)}
    figures["raw_consume_eps"] = time_raw_consumer(args, topic, n)
    schemas: list[str] = []
    with tempfile.TemporaryDirectory() as folder:
        try:
            for workers in args.workers:
                run = time_ingest(args, folder, topic, workers, schemas)
                figures[f"ingest_eps_{workers}w"] = run["ingest_eps"]
                figures.setdefault("ingest_eps", run["ingest_eps"])
                figures.setdefault("max_rss_mb", run["max_rss_mb"])
                figures.setdefault("worker_rss_mb_quartiles", run["rss_quartiles"])
                for part in ("worker", "broker", "database"):
                    figures[f"cpu_s_per_1k_{part}_{workers}w"] = run[f"cpu_s_per_1k_{part}"]
            if not args.no_waiting_baseline:
                run = time_ingest(args, folder, topic, 1, schemas, wait=True)
                figures["ingest_eps_waiting"] = run["ingest_eps"]
            record_many = time_record_many(args, folder, events, schemas, wait=True)
            background = time_record_many(args, folder, events, schemas, wait=False)
        finally:
            for schema in schemas:
                from crm_ledger.adapters.eventstore import drop_postgres_schema

                drop_postgres_schema(args.database_url, schema)
    figures["record_many_eps"] = round(record_many)
    figures["ingest_ratio"] = round(figures["ingest_eps"] / record_many, 3)
    figures["record_many_background_eps"] = round(background)
    figures["ingest_ratio_background"] = round(figures["ingest_eps"] / background, 3)
    return figures


def time_publishing(
    args: argparse.Namespace, codec: Any, events: list[Any], topic: str
) -> dict[str, Any]:
    """The Publisher against a plain kafka-python producer sending the same bytes."""
    from crm_ledger.adapters.kafka import KafkaSettings, Publisher, ensure_topics
    from kafka import KafkaProducer

    n = len(events)
    keys = [e.customer_id.encode() for e in events]
    values = [codec.encode(e) for e in events]
    raw_topic = f"{topic}-raw"
    producer_config = {
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 20,
        "batch_size": 512 * 1024,
        "max_in_flight_requests_per_connection": 5,
        "allow_auto_create_topics": False,
        "metrics_enabled": False,
    }
    ensure_topics(KafkaSettings(args.bootstrap, topic=raw_topic, dlq_topic=f"{raw_topic}.dlq"))
    raw = KafkaProducer(bootstrap_servers=args.bootstrap, **producer_config)
    t = time.perf_counter()
    for key, value in zip(keys, values, strict=True):
        raw.send(raw_topic, key=key, value=value)
    raw.flush()
    raw_produce = n / (time.perf_counter() - t)
    raw.close()
    print(f"  raw producer     {raw_produce:>10,.0f} msg/s ({sum(map(len, values)) / n:.0f} B)")
    settings = KafkaSettings(args.bootstrap, topic=topic, dlq_topic=f"{topic}.dlq")
    with Publisher(settings, codec) as publisher:
        t = time.perf_counter()
        results = publisher.publish_many(events)
        publish = n / (time.perf_counter() - t)
    failures = sum(1 for r in results if r.error)
    print(
        f"  Publisher        {publish:>10,.0f} ev/s  ({publish / raw_produce:.2f} of raw; "
        f"{failures} failed)"
    )
    return {
        "publish_eps": round(publish),
        "raw_produce_eps": round(raw_produce),
        "publish_ratio": round(publish / raw_produce, 3),
    }


def time_raw_consumer(args: argparse.Namespace, topic: str, n: int) -> int:
    """A plain kafka-python consumer reading the published topic."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=args.bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=8 * 1024 * 1024,
        metrics_enabled=False,
    )
    seen, t = 0, time.perf_counter()
    while seen < n:
        for batch in consumer.poll(timeout_ms=1000, max_records=args.batch_size).values():
            seen += len(batch)
    raw_consume = n / (time.perf_counter() - t)
    consumer.close()
    print(f"  raw consumer     {raw_consume:>10,.0f} msg/s")
    return round(raw_consume)


def time_ingest(
    args: argparse.Namespace,
    folder: str,
    topic: str,
    workers: int,
    schemas: list[str],
    *,
    wait: bool = False,
) -> dict[str, Any]:
    """``workers`` ingest processes in one group into a fresh ledger; their rate, RSS and the
    CPU seconds per 1,000 events of the workers, the broker and the database server."""
    from crm_ledger.application import Ledger

    name = f"bench_{uuid.uuid4().hex[:10]}"
    schemas += [name] if args.database_url else []
    with Ledger(store_env(args.database_url, folder, name)):
        pass  # create the tables before the workers race to
    group = f"bench-{uuid.uuid4().hex[:8]}"
    command = [sys.executable, __file__, "--child-ingest", "--bootstrap", args.bootstrap]
    command += ["--topic", topic, "--group", group, "--data-dir", folder, "--store", name]
    command += ["--batch-size", str(args.batch_size)] + (["--wait"] if wait else [])
    command += ["--database-url", args.database_url] if args.database_url else []
    broker, database = broker_cpu(), database_cpu()
    children = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(workers)
    ]
    outputs = [child.communicate() for child in children]
    broker, database = broker_cpu() - broker, database_cpu() - database
    if any(child.returncode for child in children):
        raise SystemExit(f"bench_ingest: a worker failed:\n{outputs[0][1][-3000:]}")
    reports = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    consumed = sum(r["consumed"] for r in reports)
    seconds = max(r["last_batch"] for r in reports) - min(r["started"] for r in reports)
    with Ledger(store_env(args.database_url, folder, name)) as ledger:
        stored = ledger.count_events()
    if stored != args.events:
        raise SystemExit(f"bench_ingest: {stored:,} stored, expected {args.events:,}")
    per_1k = 1000 / consumed
    run = {
        "ingest_eps": round(consumed / seconds),
        "max_rss_mb": max(r["max_rss_mb"] for r in reports),
        "rss_quartiles": _rss_profile(reports),
        "cpu_s_per_1k_worker": round(sum(r["cpu_s"] for r in reports) * per_1k, 4),
        "cpu_s_per_1k_broker": round(broker * per_1k, 4),
        "cpu_s_per_1k_database": round(database * per_1k, 4),
    }
    how = "each batch committed first" if wait else "committed in the background"
    print(
        f"  ingest {workers} worker{'s' if workers > 1 else ' '} {run['ingest_eps']:>10,} ev/s  "
        f"({how}; stored {stored:,}; worker RSS {run['rss_quartiles']} MB; "
        f"CPU s per 1k events: worker {run['cpu_s_per_1k_worker']}, broker "
        f"{run['cpu_s_per_1k_broker']}, database {run['cpu_s_per_1k_database']})"
    )
    return run


def time_record_many(
    args: argparse.Namespace, folder: str, events: list[Any], schemas: list[str], *, wait: bool
) -> float:
    """The ledger's batch path alone, on the same events and batch size (without ``wait``:
    committed in the background, until the last is stored)."""
    from crm_ledger import bootstrap
    from crm_ledger.application import Ledger

    bootstrap.tune_for_throughput()
    name = f"bench_{uuid.uuid4().hex[:10]}"
    schemas += [name] if args.database_url else []
    with Ledger(store_env(args.database_url, folder, name)) as ledger:
        t = time.perf_counter()
        for start in range(0, len(events), args.batch_size):
            ledger.record_many(events[start : start + args.batch_size], wait=wait)
        ledger.flush()
        record_many = len(events) / (time.perf_counter() - t)
    how = "each batch committed before the next" if wait else "committed in the background"
    print(f"  record_many      {record_many:>10,.0f} ev/s  (same events, no Kafka, {how})")
    return record_many


def _rss_profile(reports: list[dict[str, Any]]) -> list[float]:
    """The first worker's RSS at a quarter, half, three quarters and all of its messages."""
    samples = reports[0]["rss"]
    if not samples:
        return []
    total = samples[-1][0]
    return [next(mb for done, mb in samples if done >= total * q / 4) for q in (1, 2, 3, 4)]


if __name__ == "__main__":
    main()
