"""Moments between writes, without sleeping: the wall clock is waited on, not slept past."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def moment_between() -> datetime:
    """A moment at or after everything recorded before the call and before anything recorded
    after it returns: the clock is read, then waited on (bounded) until it has moved past."""
    moment = datetime.now(UTC)
    deadline = time.monotonic() + 5
    while datetime.now(UTC) <= moment:
        if time.monotonic() > deadline:
            raise AssertionError("the wall clock did not move for 5 s")
    return moment
