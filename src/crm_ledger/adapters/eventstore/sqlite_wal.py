"""Checkpointing a SQLite ledger's write-ahead log on a thread of its own.

SQLite folds its write-ahead log back into the database file (a checkpoint) at the end of the
commit that made the log pass ``wal_autocheckpoint`` pages. A batch of random-keyed inserts
dirties thousands of index pages, so at a million events nearly every commit did it, and the
writer waited for the copy and its fsync. Here the writer's commit only appends to the log;
a thread with its own connection copies the log into the file (a PASSIVE checkpoint, which
never blocks the writer or readers) after each commit, on the other core (Python's sqlite3
releases the interpreter lock while SQLite works). Durability is unchanged: a commit is
durable once its log frames are synced, as before (synchronous=FULL); a crash at any moment
leaves a log that SQLite replays on the next open.

The writer keeps a high ``wal_autocheckpoint`` as a backstop, so the log stays bounded even
if the thread falls behind or fails.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

logger = logging.getLogger(__name__)

#: The writer's own checkpoint threshold, in pages (256 MiB of 4 KiB pages): only reached
#: when the checkpoint thread cannot keep up.
BACKSTOP_PAGES = 65_536

#: SQLite page cache of a writing connection, in KiB. 16 MiB appended at the same speed as
#: 32 MiB up to 3M events (background sweep, one run each: 9,623 against 9,680 events/s at
#: 3M), and 8 MiB as 16 at 1M (20,388 against 20,105, back to back), for 8 MB less again in
#: the commit process.
SQLITE_CACHE_KIB = 8 * 1024

THREAD_NAME = "crm-ledger-wal-checkpoint"


class WalCheckpointer:
    """Folds the log of the SQLite file at ``path`` into the file after each commit, on a
    daemon thread started by the first commit (a process that only reads starts none)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._wake = threading.Event()
        self._stopping = False
        self._lock = threading.Lock()  # one checkpoint at a time, in this process
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def committed(self) -> None:
        """A write transaction committed: fold its frames into the file soon."""
        if self._thread is None:
            with self._start_lock:
                if self._thread is None and not self._stopping:
                    self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
                    self._thread.start()
        self._wake.set()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """No checkpoint of this thread runs inside the block (a TRUNCATE checkpoint would
        otherwise find one running and leave the log as it is)."""
        with self._lock:
            yield

    def close(self) -> None:
        """Stop the thread (after the checkpoint it may be running) and wait for it."""
        with self._start_lock:
            self._stopping = True
            thread = self._thread
        self._wake.set()
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        try:
            conn = sqlite3.connect(self.path, uri=True, isolation_level=None)
        except sqlite3.Error as e:  # the writer's backstop keeps the log bounded
            logger.warning("write-ahead log checkpoints stay with the writer: %s", e)
            return
        try:
            while True:
                self._wake.wait()
                self._wake.clear()
                if self._stopping:
                    return
                with self._lock:
                    try:
                        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    except sqlite3.Error as e:  # busy or gone: the next commit tries again
                        logger.debug("write-ahead log checkpoint skipped: %s", e)
        finally:
            conn.close()
