#!/usr/bin/env python3
"""Benchmark `crm-ledger audit verify` over 1,000,000 events, in one run with its baseline.

Builds a SQLite ledger of --events synthetic events (the write path keeps the hash chain),
signs a checkpoint, then times:

* raw_scan_eps: every stored event read in stream order and hashed once (SHA-256 of its
  bytes), the least any verification must do;
* verify_eps: ``Auditor.verify`` as the CLI runs it: content and chain hashes recomputed,
  compared with the stored chain and the checkpoint's signed heads.

The last line is a JSON object with the keys events, verify_eps (and raw_scan_eps, ratio,
checkpoint_s).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_replay import grow
from crm_ledger import bootstrap
from crm_ledger.config import Settings


def main() -> None:
    """Build the ledger, checkpoint, verify, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-audit-") as tmp:
        settings = Settings.from_env({}, data_dir=Path(tmp))
        bootstrap.tune_for_throughput()
        bootstrap.create_signing_key(settings)
        with bootstrap.open_ledger(settings, create=True) as ledger:
            grow(ledger, args.events, [], "building")
            auditor = bootstrap.open_auditor(settings, ledger)
            started = time.perf_counter()
            auditor.checkpoint()
            checkpoint_s = time.perf_counter() - started

            store: Any = auditor.store
            started, events = time.perf_counter(), 0
            for record in store.stored_records():
                hashlib.sha256(record.state).digest()
                events += 1
            raw_eps = events / (time.perf_counter() - started)

            started = time.perf_counter()
            result = auditor.verify()
            verify_s = time.perf_counter() - started
    assert result.ok, result.findings[:5]
    verify_eps = result.events / verify_s
    print(
        f"{result.events:,} events in {result.streams:,} streams; checkpoint {checkpoint_s:.2f} s"
    )
    print(
        f"raw scan and hash: {raw_eps:,.0f} events/s; audit verify: {verify_eps:,.0f} events/s "
        f"({verify_s:.1f} s), ratio {verify_eps / raw_eps:.2f}"
    )
    print(
        json.dumps(
            {
                "events": result.events,
                "verify_eps": round(verify_eps),
                "raw_scan_eps": round(raw_eps),
                "ratio": round(verify_eps / raw_eps, 3),
                "checkpoint_s": round(checkpoint_s, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
