"""Committing a PostgreSQL ledger's batches on a thread of its own, while the ledger's thread
prepares the next batch.

Preparing a batch (aggregates, mapping, sealing, hashing, the rows of every table) is Python;
storing it is the server's work, which the client only waits for. Waiting on the server
releases the interpreter lock, so a thread overlaps the two (on SQLite, whose B-tree work is
in the ledger's process, that took a process: see sqlite_writer).

Nothing about durability changes: each batch is one transaction, in the order handed over,
and counts as stored only once its outcome came back. After a batch fails, the thread refuses
every batch handed over after it (their preparation assumed it) until the ledger has
forgotten them. If the process dies, the server rolls back the transaction it had open: a
batch in flight is committed whole or not at all.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from typing import TYPE_CHECKING, Any, NoReturn, cast
from uuid import UUID

import psycopg
from eventsourcing.persistence import IntegrityError
from psycopg.sql import Identifier

from crm_ledger.adapters.eventstore.pg_tables import INSERT_KEYS, INSERT_SNAPSHOTS, insert_columns
from crm_ledger.adapters.eventstore.recording import BackgroundCommits
from crm_ledger.application import BatchRecords, batch_records
from crm_ledger.errors import BatchesNotStored

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from eventsourcing.persistence import StoredEvent
    from eventsourcing.postgres import PostgresDatastore
    from psycopg import Connection, Cursor
    from psycopg.sql import Composed

#: Batches handed over and not yet answered, at most (the next waits for the oldest's).
DEFAULT_DEPTH = 2

#: Seconds to wait for a batch's outcome before its statement is cancelled.
ANSWER_TIMEOUT_S = 120.0

_RESET, _STOP = object(), object()


class CommitThread:
    """A thread that commits the batches handed to it, in order: ``commit(batch)`` runs one
    batch in one transaction, and ``cancel()`` interrupts the statement running (for a batch
    that does not answer). ``submit`` returns at once (waiting only while ``depth`` batches
    are in flight); ``flush`` waits for every outcome."""

    def __init__(
        self,
        commit: Callable[[Any], None],
        cancel: Callable[[], None],
        depth: int = DEFAULT_DEPTH,
    ) -> None:
        self.depth = max(1, depth)
        self.answer_timeout = ANSWER_TIMEOUT_S
        self._commit = commit
        self._cancel = cancel
        self._batches: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._answers: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._in_flight = 0
        self._ended = False
        self._thread = threading.Thread(target=self._serve, name="crm-ledger-commit", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        """Whether it still takes batches (not after one did not answer in time)."""
        return not self._ended and self._thread.is_alive()

    @property
    def in_flight(self) -> int:
        """Batches handed over whose outcome has not been read."""
        return self._in_flight

    def submit(self, batch: Any) -> None:
        """Hand a batch over. Raises BatchesNotStored if an earlier batch failed."""
        while self._in_flight >= self.depth:
            self._answer()
        self._batches.put(batch)
        self._in_flight += 1

    def flush(self) -> None:
        """Wait until every batch handed over is committed (raises BatchesNotStored if one
        is not)."""
        while self._in_flight:
            self._answer()

    def close(self) -> None:
        """Wait for the outcomes in hand, then stop the thread."""
        try:
            if not self._ended:
                self.flush()
        finally:
            self._batches.put(_STOP)
            if not self._ended:
                self._thread.join()

    def _serve(self) -> None:
        failed: str | None = None
        while True:
            batch = self._batches.get()
            if batch is _STOP:
                return
            if batch is _RESET:
                failed = None
                continue
            if failed is not None:
                self._answers.put(f"not tried: an earlier batch failed ({failed})")
                continue
            try:
                self._commit(batch)
            except Exception as e:  # the transaction rolled back: say why, refuse the rest
                failed = describe(e)
            self._answers.put(failed)

    def _answer(self) -> None:
        try:
            error = self._answers.get(timeout=self.answer_timeout)
        except queue.Empty:
            error = self._cancelled()
        self._in_flight -= 1
        if error is not None:
            self._failed(error)

    def _cancelled(self) -> str | None:
        """No outcome in time: cancel the statement running, which then fails the batch
        (or it had just committed). A thread that still does not answer is given up: its
        transaction, if it ever commits, holds whole batches, which the ledger then finds
        stored when they are sent again."""
        with contextlib.suppress(Exception):
            self._cancel()
        try:
            return self._answers.get(timeout=self.answer_timeout)
        except queue.Empty:
            self._ended = True
            return f"the commit thread did not answer within {2 * self.answer_timeout:g} s"

    def _failed(self, reason: str) -> NoReturn:
        """Collect the refusals of the batches handed over after the failed one, tell the
        thread to take batches again, and raise."""
        lost = self._in_flight + 1
        while self._in_flight and not self._ended:
            try:
                self._answers.get(timeout=self.answer_timeout)
            except queue.Empty:
                self._ended = True
                break
            self._in_flight -= 1
        self._in_flight = 0
        self._batches.put(_RESET)
        raise BatchesNotStored(reason, lost)


def describe(error: Exception) -> str:
    """Why a batch was rolled back, in the words the SQLite commit process uses."""
    conflict = isinstance(error, IntegrityError | psycopg.IntegrityError)
    return f"{'conflict' if conflict else 'store error'}: {error}"


#: One statement of a prepared batch, its rows, and whether they go as one unnest (columns
#: as arrays) rather than one execution per row.
Prepared = tuple[Any, "Sequence[Sequence[Any]]", bool]


class PostgresBackground(BackgroundCommits):
    """The PostgreSQL recorder's batches committed on a thread (``record_many(wait=False)``):
    prepared on the caller's thread, on the chain heads and keys of the batches before it,
    then locked, inserted and committed on the commit thread."""

    datastore: PostgresDatastore
    _insert_hashed: Composed
    _insert_receipts: Composed
    _upsert_position: Composed
    _insert_letter: Composed
    _schema: Identifier
    _committing: Connection[Any] | None = None

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        """A batch that need not wait (``records.wait`` False) is prepared here and committed
        by the commit thread; any other waits for those in flight, then commits."""
        records = batch_records(kwargs)
        if not records.wait:
            self.hand_over(lambda: self._prepare(stored_events, records))
            return None
        self.flush()  # batches in flight first: a batch is stored after those before it
        result: Sequence[int] | None = super().insert_events(stored_events, **kwargs)  # type: ignore[misc]
        return result

    def new_committer(self) -> CommitThread:
        return CommitThread(self._commit_prepared, self._cancel_commit)

    def _prepare(
        self, stored_events: Sequence[StoredEvent], records: BatchRecords
    ) -> list[Prepared]:
        """Every row the batch writes, its events chained on the heads known (those of the
        batches in flight included) or read."""
        with self.datastore.transaction(commit=False) as curs:
            links = cast("Any", self)._chain(curs, stored_events)
        events = self.event_rows(stored_events, links)
        return [(self._insert_hashed, events, True), *self.record_statements(records)]

    @staticmethod
    def event_rows(
        stored_events: Sequence[StoredEvent], links: Sequence[tuple[bytes, int, bytes, bytes]]
    ) -> list[tuple[Any, ...]]:
        """The events table's rows: each stored event with its content and chain hash."""
        return [
            (UUID(bytes=stream), version, s.topic, s.state, content, chained)
            for s, (stream, version, content, chained) in zip(stored_events, links, strict=True)
        ]

    def record_statements(self, records: BatchRecords) -> list[Prepared]:
        """What a batch writes beside its events: new data keys, receipts, positions, dead
        letters and snapshots."""
        table = getattr(self, "snapshots_table", None)
        snapshots = [
            (s.originator_id, s.originator_version, s.topic, s.state) for s in records.snapshots
        ]
        return [
            (INSERT_KEYS.format(self._schema), self.data_keys.take_pending(), True),
            (
                self._insert_receipts,
                [(r.event_id, r.originator_id, r.originator_version) for r in records.receipts],
                True,
            ),
            (
                self._upsert_position,
                [(p.source, p.partition, p.next_offset) for p in records.positions],
                False,
            ),
            (self._insert_letter, list(records.dead_letters), False),
            *(
                [(INSERT_SNAPSHOTS.format(self._schema, Identifier(table)), snapshots, True)]
                if table and snapshots
                else []
            ),
        ]

    def _commit_prepared(self, statements: Sequence[Prepared]) -> None:
        """One prepared batch in one transaction (on the commit thread), after
        eventsourcing's table lock: commit order is notification order."""
        with self.datastore.get_connection() as conn:
            self._committing = conn
            try:
                with conn.pipeline(), conn.transaction(), conn.cursor() as curs:
                    recorder = cast("Any", self)
                    recorder._lock_table(curs)
                    recorder._notify_channel(curs)
                    run_statements(curs, statements)
            finally:
                self._committing = None

    def _cancel_commit(self) -> None:
        """Interrupt the statement the commit thread is running (from another thread)."""
        conn = self._committing
        if conn is not None:
            conn.cancel_safe()

    def close(self) -> None:
        """Wait for the batches in flight, then stop the commit thread."""
        self.close_committer()


def run_statements(curs: Cursor[Any], statements: Sequence[Prepared]) -> None:
    """Each statement with its rows: as one unnest, or once per row (none without rows)."""
    for statement, rows, unnest in statements:
        if unnest:
            insert_columns(curs, statement, rows)
        elif rows:
            curs.executemany(statement, rows)
