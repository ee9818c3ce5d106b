"""Committing a SQLite ledger's batches in a process of its own, while the ledger's process
prepares the next batch.

Preparing a batch (aggregates, mapping, sealing, hashing) is Python; storing it is SQLite's
B-tree inserts and the commit's fsync. At a million events each is about half of an append.
A thread cannot overlap them: Python's sqlite3 releases the interpreter lock around each
row's step, and gets it back only when the busy preparing thread is made to drop it (every
5 ms): 300,000 rows took 83 times longer to store beside such a thread than alone.
So the statements and rows of each batch go over a pipe to a process that only runs them, one
transaction per batch, in the order sent, and answers each batch with "committed" or why not.

Nothing about durability changes: each batch is one transaction with synchronous=FULL, its
events, receipts, positions, keys and snapshots together. A batch counts as stored only once
its answer came back; after a batch fails, the process refuses every batch sent after it
(their preparation assumed it) until the ledger says it has forgotten them. If either process
dies, the other sees the pipe close: a batch in flight is committed whole or not at all.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import sqlite3
import struct
import subprocess
import sys
import time
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, NoReturn

from crm_ledger.adapters.eventstore.sqlite_wal import (
    BACKSTOP_PAGES,
    SQLITE_CACHE_KIB,
    WalCheckpointer,
)

# Only the standard library and these small modules: the commit process imports this
# module alone, so it stays a small process (not a second copy of the application).
from crm_ledger.adapters.memory import give_back_free_memory
from crm_ledger.errors import BatchesNotStored

if TYPE_CHECKING:
    from collections.abc import Sequence

#: One statement of a batch and its rows.
Statement = tuple[str, "Sequence[tuple[Any, ...]]"]

#: Batches sent and not yet answered, at most (the next waits for the oldest's answer). One
#: is enough to overlap the two halves of an append: the next batch is prepared while it
#: commits, and sent once it has. A second kept another batch's touchpoints in the ledger's
#: process and its rows in this one, for no speed.
DEFAULT_DEPTH = 1

#: Seconds the store waits for a lock another process holds.
LOCK_TIMEOUT_S = 30

#: Seconds to wait for a batch's answer before the process counts as hung (a batch waits at
#: most LOCK_TIMEOUT_S for another writer's lock, then takes well under a second).
ANSWER_TIMEOUT_S = 120.0

_RESET = "reset"


class CommitProcess:
    """A process that commits the batches sent to it, in order, on the SQLite file at
    ``path``; ``submit`` returns at once (waiting only while ``depth`` batches are in
    flight), ``flush`` waits for every answer."""

    def __init__(self, path: str, depth: int = DEFAULT_DEPTH) -> None:
        self.path = path
        self.depth = max(1, depth)
        self.answer_timeout = ANSWER_TIMEOUT_S
        self.committed = 0  # batches answered "committed"
        self._in_flight = 0
        self._ended = False  # its pipe closed: it is gone, or going
        # A plain child process over two pipes (not multiprocessing's spawn, which would
        # import the parent's main script again, and not fork, which would copy its threads).
        from_parent, to_child = os.pipe()
        from_child, to_parent = os.pipe()
        command = [sys.executable, "-m", __name__, path, str(from_parent), str(to_parent)]
        try:
            self._process = subprocess.Popen(command, pass_fds=(from_parent, to_parent))
        finally:
            os.close(from_parent)
            os.close(to_parent)
        # Writes wait at most ``answer_timeout`` for a process that stopped reading.
        os.set_blocking(to_child, False)
        self._to_child = to_child
        self._receive = Connection(from_child, writable=False)

    @property
    def alive(self) -> bool:
        """Whether the process still runs (it ends only when closed, or killed)."""
        return not self._ended and self._process.poll() is None

    @property
    def pid(self) -> int:
        """The process's id."""
        return self._process.pid

    @property
    def in_flight(self) -> int:
        """Batches sent whose answer has not been read."""
        return self._in_flight

    def submit(self, statements: Sequence[Statement]) -> None:
        """Send a batch. Raises BatchesNotStored if an earlier batch failed."""
        while self._in_flight >= self.depth:
            self._answer()
        try:
            self._write(list(statements))
        except _Gone as e:
            # Those in flight are lost, and this one, unsent; but not those whose answer
            # "committed" arrived meanwhile.
            while self._in_flight and self._receive.poll(0):
                try:
                    error = self._receive.recv()
                except (EOFError, OSError):
                    break
                self._in_flight -= 1
                if error is not None:
                    self._failed(error)
                self.committed += 1
            self._failed(str(e), self._in_flight)
        self._in_flight += 1

    def flush(self) -> None:
        """Wait until every batch sent is committed (raises BatchesNotStored if one is not)."""
        while self._in_flight:
            self._answer()

    def close(self) -> None:
        """Wait for the answers in hand, then stop the process."""
        try:
            self.flush()
        finally:
            with contextlib.suppress(_Gone):
                self._write(None)
            os.close(self._to_child)
            self._receive.close()
            try:
                self._process.wait(timeout=LOCK_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def _write(self, message: Any) -> None:
        """Send ``message`` whole (multiprocessing's framing, which the process reads), or
        raise _Gone (killing a process that stopped reading for ``answer_timeout``)."""
        if self._ended:
            raise _Gone("the commit process is gone")
        payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        data = memoryview(struct.pack("!i", len(payload)) + payload)
        deadline = time.monotonic() + self.answer_timeout
        while data:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([], [self._to_child], [], wait)[1]:
                self._process.kill()
                self._ended = True
                raise _Gone(f"the commit process read nothing for {self.answer_timeout:g} s")
            try:
                data = data[os.write(self._to_child, data) :]
            except BlockingIOError:
                continue
            except OSError as e:
                self._ended = True
                raise _Gone(f"the commit process is gone: {e}") from None

    def _answer(self) -> None:
        if not self._receive.poll(self.answer_timeout):
            self._hung(f"did not answer within {self.answer_timeout:g} s")
        self._in_flight -= 1
        try:
            error = self._receive.recv()
        except (EOFError, OSError) as e:
            self._ended = True
            self._failed(f"the commit process ended: {e or 'its pipe closed'}")
        if error is not None:
            self._failed(error)
        self.committed += 1

    def _hung(self, what: str) -> NoReturn:
        """The process stopped (hung, or stopped by a signal): what it has not answered is
        lost; kill it."""
        self._process.kill()
        self._ended = True
        self._in_flight -= 1  # the batch waited for: _failed counts it
        self._failed(f"the commit process {what}")

    def _failed(self, reason: str, lost: int | None = None) -> NoReturn:
        """Collect the refusals of the batches sent after the failed one, tell the process to
        accept batches again, and raise. ``lost``: the batches sent and not stored (by
        default the one just answered or waited for, and those after it)."""
        lost = self._in_flight + 1 if lost is None else lost
        try:
            while self._in_flight and not self._ended:
                if not self._receive.poll(self.answer_timeout):
                    raise EOFError
                self._receive.recv()
                self._in_flight -= 1
            if not self._ended:
                self._in_flight = 0
                self._write(_RESET)
        except (EOFError, OSError, _Gone):
            self._process.kill()
            self._ended = True
        self._in_flight = 0
        raise BatchesNotStored(reason, lost)


class _Gone(Exception):
    """The commit process cannot be sent to."""


def serve(conn: Duplex, path: str) -> None:
    """The commit process: run each batch received in one transaction, answer None or why
    it failed; after a failure, refuse batches until told to reset."""
    db = sqlite3.connect(path, isolation_level=None, timeout=LOCK_TIMEOUT_S)
    db.execute("PRAGMA synchronous = FULL")
    db.execute(f"PRAGMA cache_size = -{SQLITE_CACHE_KIB}")
    db.execute(f"PRAGMA wal_autocheckpoint = {BACKSTOP_PAGES}")
    wal = WalCheckpointer(path)
    failed: str | None = None
    try:
        while True:
            try:
                batch = conn.recv()
                if batch is None:
                    return
                if batch == _RESET:
                    failed = None
                    continue
                if failed is not None:
                    conn.send(f"not tried: an earlier batch failed ({failed})")
                    continue
                failed = _commit(db, batch)
                if failed is None:
                    wal.committed()
                conn.send(failed)
            except (EOFError, OSError):
                return  # the ledger's process is gone: its batches are committed or not
    finally:
        wal.close()
        db.close()


def _commit(db: sqlite3.Connection, batch: Sequence[Statement]) -> str | None:
    """Run one batch in one transaction; None, or why it was rolled back."""
    try:
        db.execute("BEGIN IMMEDIATE")
        for sql, rows in batch:
            if rows:
                db.executemany(sql, rows)
        db.execute("COMMIT")
    except sqlite3.Error as e:
        if db.in_transaction:
            db.execute("ROLLBACK")
        kind = "conflict" if isinstance(e, sqlite3.IntegrityError) else "store error"
        return f"{kind}: {e}"
    return None


def main(argv: Sequence[str]) -> None:
    """``python -m crm_ledger.adapters.eventstore.sqlite_writer PATH IN_FD OUT_FD``."""
    path, from_parent, to_parent = argv[0], int(argv[1]), int(argv[2])
    give_back_free_memory()  # each batch's pickled rows are freed once committed
    serve(Duplex(from_parent, to_parent), path)


class Duplex:
    """The commit process's two pipe ends as one connection."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self._in = Connection(read_fd, writable=False)
        self._out = Connection(write_fd, readable=False)

    def recv(self) -> Any:
        return self._in.recv()

    def send(self, value: Any) -> None:
        self._out.send(value)


if __name__ == "__main__":
    main(sys.argv[1:])
