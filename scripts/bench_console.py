#!/usr/bin/env python3
"""The console under load: a synthetic SQLite ledger of about --events events, `crm-ledger
serve`, and --clients concurrent clients for --seconds over HTTP on a realistic mix (search by
e-mail, the 360, a journey page, the value list, a 360 as of a past moment), against the same
service calls made in-process in the same run (the baseline).

With --access-log both (the default) the same load runs twice, the access log off then on;
the last line is a JSON object: events, requests, rps, errors (with the access log on; the
same with an _access_off suffix), per page kind p50_ms, p95_ms, p99_ms (both ways),
inprocess_p95_ms and access_log_p95_ratio (on / off), and access_log_p95_ratio_max.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from crm_ledger import bootstrap
from crm_ledger.config import Settings
from crm_ledger.services.ports import Moment
from crm_ledger.sources.synthetic import generate

PASSWORD = "correct horse battery"
KINDS = ("search", "customer", "journey", "value", "customer_as_of")


def build(folder: Path, events: int) -> tuple[Settings, list[dict[str, str]], str, int]:
    """The ledger, caught up; a sample of customers (id and e-mail); a moment between two
    deliveries (the first 80% of the events, then the rest)."""
    settings = Settings.from_env({}, data_dir=folder)
    bootstrap.tune_for_throughput()
    history, _ = generate(11, customers=max(100, events * 2500 // 54_000))
    cut = len(history) * 4 // 5
    with bootstrap.build(settings, create=True) as services:
        for start in range(0, cut, 10_000):
            services.ledger.record_many(history[start : min(start + 10_000, cut)])
        between = datetime.now(UTC).isoformat()
        for start in range(cut, len(history), 10_000):
            services.ledger.record_many(history[start : start + 10_000])
        services.read_models.catch_up()
        count = services.ledger.count_events()
    sample = [
        {"id": e.customer_id, "email": str(e.data["email"])}
        for e in history
        if e.event_type == "CustomerRegistered" and e.data.get("email")
    ]
    users = bootstrap.open_users(settings)
    users.add("bench", "admin", PASSWORD)
    return settings, random.Random(1).sample(sample, 500), between, count


def built(folder: Path, events: int) -> tuple[Settings, list[dict[str, str]], str, int]:
    """build(), or what an earlier run with --keep left in ``folder``."""
    saved = folder.with_suffix(".json")
    if saved.exists():
        meta = json.loads(saved.read_text())
        return (
            Settings.from_env({}, data_dir=folder),
            meta["sample"],
            meta["between"],
            meta["events"],
        )
    settings, sample, between, count = build(folder, events)
    meta = {"sample": sample, "between": between, "events": count}
    saved.write_text(json.dumps(meta))
    return settings, sample, between, count


def path_of(kind: str, who: dict[str, str], between: str) -> str:
    if kind == "search":
        return "/api/customers?" + urllib.parse.urlencode({"q": who["email"]})
    if kind == "customer":
        return f"/api/customers/{who['id']}"
    if kind == "journey":
        return f"/api/customers/{who['id']}/journey"
    if kind == "value":
        return "/api/value?limit=25"
    return f"/api/customers/{who['id']}?" + urllib.parse.urlencode({"as_of": between})


class Client:
    """One signed-in HTTP client (its own connection and session cookie)."""

    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        page, cookie = self.request("GET", "/signin")
        token = re.search(r'name="csrf" value="([^"]+)"', page)
        form = urllib.parse.urlencode(
            {"name": "bench", "password": PASSWORD, "csrf": token.group(1) if token else ""}
        )
        _, self.cookie = self.request("POST", "/signin", form, cookie)

    def request(
        self, method: str, path: str, body: str | None = None, cookie: str = ""
    ) -> tuple[str, str]:
        headers = {"Cookie": cookie} if cookie else {}
        if body is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        self.connection.request(method, path, body=body, headers=headers)
        response = self.connection.getresponse()
        text = response.read().decode()
        self.status = response.status
        set_cookie = response.getheader("set-cookie") or ""
        return text, set_cookie.split(";")[0] or cookie


def load(
    port: int, seconds: float, clients: int, sample: list[dict[str, str]], between: str
) -> tuple[dict[str, list[float]], int]:
    timings: dict[str, list[float]] = {k: [] for k in KINDS}
    errors = [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def run(seed: int) -> None:
        rng = random.Random(seed)
        client = Client(port)
        while time.monotonic() < stop:
            kind = rng.choice(KINDS)
            started = time.perf_counter()
            client.request("GET", path_of(kind, rng.choice(sample), between), cookie=client.cookie)
            took = (time.perf_counter() - started) * 1000
            with lock:
                timings[kind].append(took)
                errors[0] += client.status != 200

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return timings, errors[0]


def in_process(
    settings: Settings, sample: list[dict[str, str]], between: str, repeats: int
) -> dict[str, float]:
    at = Moment(as_of=datetime.fromisoformat(between))
    calls = {
        "search": lambda s, w: s.directory.find(w["email"]),
        "customer": lambda s, w: s.read_models.view(w["id"], last=10),
        "journey": lambda s, w: s.read_models.timeline(w["id"]),
        "value": lambda s, w: s.read_models.top(25),
        "customer_as_of": lambda s, w: s.read_models.view(w["id"], at, last=10),
    }
    p95 = {}
    with bootstrap.build(settings) as services:
        for kind, call in calls.items():
            samples = []
            for who in sample[:repeats]:
                started = time.perf_counter()
                call(services, who)
                samples.append((time.perf_counter() - started) * 1000)
            p95[kind] = round(statistics.quantiles(samples, n=20)[-1], 1)
    return p95


#: `crm-ledger serve` with the access log's records dropped (the product has no switch).
WITHOUT_ACCESS_LOG = (
    "import sys; from crm_ledger.services.access import AccessLog; "
    "AccessLog.record = lambda *a, **k: None; from crm_ledger.cli import main; main()"
)


def serve_and_load(
    folder: Path, mode: str, args: argparse.Namespace, sample: list[dict[str, str]], between: str
) -> tuple[dict[str, list[float]], int]:
    """Serve the ledger (access log ``mode`` on or off) and load it for --seconds."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launcher = ["-m", "crm_ledger.cli"] if mode == "on" else ["-c", WITHOUT_ACCESS_LOG]
    server = subprocess.Popen(
        [sys.executable, *launcher, "--data-dir", str(folder), "serve", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    sys.exit("crm-ledger serve did not start")
                time.sleep(0.1)
        print(f"access log {mode}: loading for {args.seconds:.0f} s")
        return load(port, args.seconds, args.clients, sample, between)
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    """Build, serve, load, compare, print."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument(
        "--access-log",
        choices=("on", "off", "both"),
        default="both",
        help="serve with the access log on, off (its records dropped), or both in turn "
        "(off first), to measure what it costs",
    )
    parser.add_argument(
        "--keep",
        type=Path,
        help="build the ledger in this folder and keep it; a later run with the same folder "
        "and --events reuses it (building a million events takes minutes)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = (args.keep or Path(tmp)) / f"ledger-{args.events}"
        started = time.perf_counter()
        settings, sample, between, events = built(folder, args.events)
        print(f"ledger of {events:,} events ready in {time.perf_counter() - started:.0f} s")
        inproc = in_process(settings, sample, between, 100)
        runs = {
            mode: serve_and_load(folder, mode, args, sample, between)
            for mode in (["off", "on"] if args.access_log == "both" else [args.access_log])
        }
    figures: dict[str, Any] = {"events": events, "clients": args.clients}
    for mode, (timings, errors) in runs.items():
        requests = sum(len(v) for v in timings.values())
        suffix = "" if mode == "on" else "_access_off"
        figures[f"requests{suffix}"] = requests
        figures[f"rps{suffix}"] = round(requests / args.seconds, 1)
        figures[f"errors{suffix}"] = errors
        for kind, samples in timings.items():
            q = statistics.quantiles(samples, n=100) if len(samples) > 1 else samples * 100
            row = figures.setdefault(kind, {"inprocess_p95_ms": inproc[kind]})
            row[f"requests{suffix}"] = len(samples)
            row[f"p50_ms{suffix}"] = round(q[49], 1)
            row[f"p95_ms{suffix}"] = round(q[94], 1)
            row[f"p99_ms{suffix}"] = round(q[98], 1)
    if len(runs) == 2:
        for kind in KINDS:
            row = figures[kind]
            row["access_log_p95_ratio"] = round(row["p95_ms"] / row["p95_ms_access_off"], 3)
        figures["access_log_p95_ratio_max"] = max(
            figures[kind]["access_log_p95_ratio"] for kind in KINDS
        )
    for kind in KINDS:
        print(f"{kind}: {figures[kind]}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
