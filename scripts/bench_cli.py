#!/usr/bin/env python3
"""How long the CLI takes to answer, end to end (a new process each time), on the demo ledger.

* help_s: ``crm-ledger --help``;
* query_s: ``crm-ledger ltv C000142``, a simple query over read models already caught up;
* show_s: ``crm-ledger customer show C000142``: the 360 view, which also opens the ledger (the
  personal profile is decrypted with the customer's data key) and appends the read to the
  access log;
* find_s / list_s: ``customer find "eva mu"`` and ``customer list --region north`` (where the
  code measured has them; both read the names of what they show from the ledger).

Each figure is the median of ``--repeats`` runs (10 by default), after one untimed run.
``--src DIR`` measures another checkout's ``src`` (for example a worktree of an earlier commit)
with the same interpreter and ledger, so a before/after pair comes from one machine in one
session. Each checkout's bytecode is compiled first, as installing a package does: with
PYTHONDONTWRITEBYTECODE set, as on some machines, every run would otherwise compile the package
from source. The last line is a JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

COMMANDS = {
    "help_s": ["--help"],
    "query_s": ["ltv", "C000142"],
    "show_s": ["customer", "show", "C000142"],
    "find_s": ["customer", "find", "eva mu"],
    "list_s": ["customer", "list", "--region", "north"],
}


def timed(args: list[str], env: dict[str, str], repeats: int) -> float | None:
    """Median seconds of ``python -m crm_ledger.cli ARGS``; None if the command fails."""
    command = [sys.executable, "-m", "crm_ledger.cli", *args]
    if subprocess.run(command, env=env, capture_output=True, check=False).returncode != 0:
        return None  # also the warm-up: the read models are caught up by now
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(command, env=env, capture_output=True, check=True)
        samples.append(time.perf_counter() - started)
    return round(statistics.median(samples), 3)


def main() -> None:
    """Measure each command, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", type=Path, default=ROOT / ".demo")
    parser.add_argument("--src", type=Path, default=ROOT / "src")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    if not (args.data_dir / "ledger.sqlite").is_file():
        sys.exit(f"no ledger in {args.data_dir}: run `make demo` first")
    env = {
        **os.environ,
        "PYTHONPATH": str(args.src.resolve()),
        "CRM_LEDGER_DATA_DIR": str(args.data_dir),
    }
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(args.src)], check=True)
    figures: dict[str, object] = {"src": str(args.src), "repeats": args.repeats}
    for name, command in COMMANDS.items():
        figures[name] = timed(command, env, args.repeats)
        print(f"{name}: {figures[name]} s (median of {args.repeats})", flush=True)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
