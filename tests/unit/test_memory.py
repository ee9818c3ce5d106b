"""A bulk process gives the memory its batches freed back to the system."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from crm_ledger.adapters.memory import _glibc

# Fragments glibc's heap the way batches do: 150 MB of 1 KiB blocks (glibc's, not Python's
# small-object allocator), one in twenty kept, so no free stretch reaches the heap's top.
# Prints the resident MB given back at once, and (giving back) once the trimming thread ran.
PROGRAM = textwrap.dedent(
    """
    import sys, threading, time
    from crm_ledger.adapters.memory import TRIM_EVERY_S, give_back_free_memory

    def resident_mb():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2**20

    if sys.argv[1] == "give-back":
        assert give_back_free_memory()
    blocks = [bytes(1024) + bytes([i % 256]) for i in range(150_000)]
    kept = blocks[::20]
    before = resident_mb()
    del blocks
    at_once = before - resident_mb()
    given_back, deadline = at_once, time.monotonic() + TRIM_EVERY_S * 3
    while sys.argv[1] == "give-back" and given_back < 100 and time.monotonic() < deadline:
        threading.Event().wait(0.1)  # polls for the trimming thread's next round
        given_back = before - resident_mb()
    print(at_once, given_back, len(kept))
    """
)


def _given_back(mode: str) -> tuple[float, float]:
    run = subprocess.run(
        [sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, check=True
    )
    at_once, later, _ = run.stdout.split()
    return float(at_once), float(later)


@pytest.mark.skipif(_glibc() is None, reason="glibc's allocator only (this is a no-op elsewhere)")
def test_freed_memory_goes_back_to_the_system_within_the_trim_period() -> None:
    kept, _ = _given_back("keep")
    _, given_back = _given_back("give-back")

    # Without it, glibc keeps the freed blocks resident; with it, most of 150 MB goes back
    # within a few trimming rounds.
    assert kept < 30
    assert given_back > 100
