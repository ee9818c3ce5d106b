"""`crm-ledger` run in a new process, reporting which modules the command loaded (for tests
that hold a command to importing only what it needs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

#: Runs the CLI with the arguments given; stderr's last line is [exit code, the loaded modules
#: whose names start with one of the prefixes in CRM_LEDGER_TEST_PREFIXES].
_LOADED = """
import json, os, sys
from crm_ledger.cli.base import main
prefixes = tuple(json.loads(os.environ["CRM_LEDGER_TEST_PREFIXES"]))
sys.argv = ["crm-ledger", *sys.argv[1:]]
code = 0
try:
    main()
except SystemExit as e:
    code = e.code or 0
print(json.dumps([code, sorted(m for m in sys.modules if m.startswith(prefixes))]),
      file=sys.stderr)
"""


def cli_loading(
    args: list[str], prefixes: tuple[str, ...], env: dict[str, str] | None = None
) -> tuple[int, str, str, list[str]]:
    """Run ``crm-ledger args`` in a new process (in ``env``, by default this one's): its exit
    code, stdout, stderr, and the modules it loaded whose names start with ``prefixes``."""
    done = subprocess.run(
        [sys.executable, "-c", _LOADED, *args],
        env={
            **(os.environ if env is None else env),
            "CRM_LEDGER_TEST_PREFIXES": json.dumps(prefixes),
        },
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    code, loaded = json.loads(done.stderr.splitlines()[-1])
    return code, done.stdout, done.stderr, loaded
