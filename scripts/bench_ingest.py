#!/usr/bin/env python3
"""Benchmark the Kafka path: publish N events with the Publisher, ingest them into SQLite with
the exactly-once worker, and measure in the same run the baselines over the same bytes:

* raw_produce_eps: a plain kafka-python KafkaProducer (same acks, idempotence and batching)
  sending the already-encoded messages;
* raw_consume_eps: a plain KafkaConsumer reading the published topic;
* record_many_eps: the ledger's batch path on the same events, without Kafka.

The ingest workers run as separate processes in one consumer group (--workers, default 1:
SQLite has a single writer, and a second worker measured slower); each samples its RSS as it
goes, and the first worker's RSS at a quarter, half, three quarters and all of its messages is
reported to show whether memory stays flat. Uses the broker at
--bootstrap (or KAFKA_BOOTSTRAP_SERVERS), else starts one with scripts/kafka_server.sh.
The last line is a JSON object: events, publish_eps, raw_produce_eps, publish_ratio,
ingest_eps, raw_consume_eps, record_many_eps, max_rss_mb.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
KAFKA_SCRIPT = ROOT / "scripts" / "kafka_server.sh"


def rss_mb() -> float:
    """This process's current resident memory, in MiB."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def child_ingest(args: argparse.Namespace) -> None:
    """One ingest worker of the group; print one JSON line of its figures."""
    from crm_ledger import bootstrap
    from crm_ledger.adapters.avro import Codec, SchemaRegistry
    from crm_ledger.adapters.eventstore import sqlite_env
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

    with Ledger(sqlite_env(str(Path(args.data_dir) / "ingest.sqlite"))) as ledger:
        codec = Codec(SchemaRegistry(ROOT / "schemas"))
        worker = IngestWorker(
            ledger,
            codec,
            settings,
            max_batch=args.batch_size,
            on_batch=on_batch,
            poll_timeout_ms=200,
        )
        started = time.time()
        stats = worker.run(until_caught_up=True)
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
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=5_000)
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"))
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="ingest worker processes in one group; on SQLite one is fastest (a second "
        "contends for the single writer: 12.8k vs 14.8k ev/s measured at 200k events)",
    )
    parser.add_argument("--child-ingest", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--group", help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_ingest:
        child_ingest(args)
        return

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
    from crm_ledger import bootstrap
    from crm_ledger.adapters.avro import Codec, SchemaRegistry
    from crm_ledger.adapters.eventstore import sqlite_env
    from crm_ledger.adapters.kafka import KafkaSettings, Publisher, ensure_topics
    from crm_ledger.application import Ledger
    from crm_ledger.sources.synthetic import generate
    from kafka import KafkaConsumer, KafkaProducer

    n = args.events
    print(f"bench_ingest: generating {n:,} synthetic events", flush=True)
    events, _ = generate(args.seed, customers=n * 2500 // 54000 + 100)
    events = events[:n]
    n = len(events)
    codec = Codec(SchemaRegistry(ROOT / "schemas"))
    keys = [e.customer_id.encode() for e in events]
    values = [codec.encode(e) for e in events]
    print(f"bench_ingest: {n:,} events, {sum(map(len, values)) / n:.0f} bytes each on average")
    # The harness's own million input events are not the ledger's work: keep the collector
    # from rescanning them (it cut record_many to a quarter of its speed at 1M events).
    gc.freeze()

    name = uuid.uuid4().hex[:8]
    raw_topic, topic = f"bench-raw-{name}", f"bench-{name}"
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

    # Raw producer over the same bytes.
    raw = KafkaProducer(bootstrap_servers=args.bootstrap, **producer_config)
    t = time.perf_counter()
    for key, value in zip(keys, values, strict=True):
        raw.send(raw_topic, key=key, value=value)
    raw.flush()
    raw_produce = n / (time.perf_counter() - t)
    raw.close()
    print(f"  raw producer     {raw_produce:>10,.0f} msg/s")

    # The Publisher: validates, encodes, keys, sends; waits for every acknowledgement.
    settings = KafkaSettings(args.bootstrap, topic=topic, dlq_topic=f"{topic}.dlq")
    with Publisher(settings, codec) as publisher:
        t = time.perf_counter()
        results = publisher.publish_many(events)
        publish = n / (time.perf_counter() - t)
    failures = sum(1 for r in results if r.error)
    del results
    print(
        f"  Publisher        {publish:>10,.0f} ev/s  ({publish / raw_produce:.2f} of raw; "
        f"{failures} failed)"
    )

    # Raw consumer over the published topic.
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

    # The ingest workers: one process per core, one consumer group, one SQLite ledger.
    with tempfile.TemporaryDirectory() as folder:
        with Ledger(sqlite_env(str(Path(folder) / "ingest.sqlite"))):
            pass  # create the tables before the workers race to
        group = f"bench-{uuid.uuid4().hex[:8]}"
        children = [
            subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--child-ingest",
                    "--bootstrap",
                    args.bootstrap,
                    "--topic",
                    topic,
                    "--group",
                    group,
                    "--data-dir",
                    folder,
                    "--batch-size",
                    str(args.batch_size),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(args.workers)
        ]
        outputs = [child.communicate() for child in children]
        if any(child.returncode for child in children):
            raise SystemExit(f"bench_ingest: a worker failed:\n{outputs[0][1][-3000:]}")
        reports = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
        consumed = sum(r["consumed"] for r in reports)
        seconds = max(r["last_batch"] for r in reports) - min(r["started"] for r in reports)
        ingest_eps = consumed / seconds
        with Ledger(sqlite_env(str(Path(folder) / "ingest.sqlite"))) as ledger:
            stored = ledger.count_events()
        flat = _rss_profile(reports)
        print(
            f"  ingest workers   {ingest_eps:>10,.0f} ev/s  ({args.workers} processes; "
            f"stored {stored:,} of {n:,}; worker RSS {flat})"
        )
        if stored != n:
            raise SystemExit(f"bench_ingest: {stored:,} stored, expected {n:,}")

        # The ledger's batch path alone, on the same events and batch size.
        bootstrap.tune_for_throughput()
        with Ledger(sqlite_env(str(Path(folder) / "record_many.sqlite"))) as ledger:
            t = time.perf_counter()
            for start in range(0, n, args.batch_size):
                ledger.record_many(events[start : start + args.batch_size])
            record_many = n / (time.perf_counter() - t)
    print(f"  record_many      {record_many:>10,.0f} ev/s  (same events, no Kafka)")

    return {
        "events": n,
        "publish_eps": round(publish),
        "raw_produce_eps": round(raw_produce),
        "publish_ratio": round(publish / raw_produce, 3),
        "ingest_eps": round(ingest_eps),
        "raw_consume_eps": round(raw_consume),
        "record_many_eps": round(record_many),
        "max_rss_mb": max(r["max_rss_mb"] for r in reports),
        "ingest_workers": args.workers,
        "ingest_seconds": round(seconds, 1),
        "worker_rss_mb_quartiles": flat,
    }


def _rss_profile(reports: list[dict[str, Any]]) -> list[float]:
    """The first worker's RSS at a quarter, half, three quarters and all of its messages."""
    samples = reports[0]["rss"]
    if not samples:
        return []
    total = samples[-1][0]
    return [next(mb for done, mb in samples if done >= total * q / 4) for q in (1, 2, 3, 4)]


if __name__ == "__main__":
    main()
