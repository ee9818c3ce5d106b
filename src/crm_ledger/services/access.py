"""Recording who looked and who acted: the access log's writer and readers.

A page view must not wait on a write, so the console queues its records and one thread
appends them every FLUSH_EVERY seconds (and at once when MAX_QUEUED are waiting); closing the
services appends what is queued. A clean shutdown loses nothing; a crash (kill -9) loses the
records of at most the last FLUSH_EVERY seconds. The CLI appends its record when the command
ends, before it exits.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from crm_ledger.application.access import AccessRecord

if TYPE_CHECKING:
    from collections.abc import Callable

    from crm_ledger.application import Ledger

#: Seconds between appends of the queued records (the most a crash can lose), by default
#: (CRM_LEDGER_ACCESS_FLUSH_SECONDS sets it).
FLUSH_EVERY = 1.0
#: Queued records that trigger an append before the second is up.
MAX_QUEUED = 500
CLIENTS = ("console", "api", "cli")
OUTCOMES = ("allowed", "refused", "not-found", "invalid", "failed")


class AccessLog:
    """Queue access records and append them to the ledger's access stream."""

    def __init__(self, ledger: Callable[[], Ledger], *, flush_every: float = FLUSH_EVERY) -> None:
        self._ledger = ledger
        self.flush_every = flush_every
        self._queued: list[AccessRecord] = []
        self._changed = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Append queued records from a thread of their own, every FLUSH_EVERY seconds (a
        server's way; without it, records are appended by ``flush`` and ``close``)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="access-log", daemon=True)
            self._thread.start()

    def record(
        self,
        *,
        actor: str,
        role: str,
        client: str,
        action: str,
        subject: str | None,
        outcome: str,
        as_of: datetime | None = None,
        valid_at: datetime | None = None,
    ) -> None:
        """Queue one record (appended within FLUSH_EVERY seconds, or when closed)."""
        entry = AccessRecord(
            datetime.now(UTC), actor, role, client, action, subject, outcome, as_of, valid_at
        )
        with self._changed:
            self._queued.append(entry)
            if len(self._queued) >= MAX_QUEUED:
                self._changed.notify_all()

    def flush(self) -> int:
        """Append every queued record now; how many."""
        with self._changed:
            taken, self._queued = self._queued, []
        if taken:
            try:
                self._ledger().append_access(taken)
            except BaseException:
                with self._changed:  # kept for the next attempt, in order
                    self._queued[:0] = taken
                raise
        return len(taken)

    def close(self) -> None:
        """Stop the thread and append what is queued."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.flush()

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(
                    lambda: self._closed or len(self._queued) >= MAX_QUEUED, self.flush_every
                )
                if self._closed:
                    return
            try:
                self.flush()
            except Exception:
                continue

    def about(self, subject: str) -> list[AccessRecord]:
        """Every appended record about ``subject`` (a customer id), oldest first."""
        return [r for _, r in self._ledger().access_records() if r.subject == subject]

    def every(self) -> list[tuple[int, AccessRecord]]:
        """Every appended record with its version, oldest first."""
        return self._ledger().access_records()
