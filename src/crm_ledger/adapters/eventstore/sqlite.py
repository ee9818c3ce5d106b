"""The SQLite event store: eventsourcing's recorder plus the ledger's receipts, positions, hash
chain, data keys, checkpoints and outbox, written in the same transaction as the events.
"""

from __future__ import annotations

import contextlib
import sqlite3
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast
from uuid import UUID

from eventsourcing.sqlite import SQLiteApplicationRecorder
from eventsourcing.utils import get_topic

from crm_ledger.adapters.eventstore.mapper import LedgerMapper
from crm_ledger.adapters.eventstore.recording import (
    HEADS_QUERY,
    LOOKUP_CHUNK,
    OUTBOX_COLUMNS,
    OUTBOX_FIELDS,
    SQLITE_ID,
    BackgroundCommits,
    LedgerRecording,
    as_bytes,
    byte_chunks,
    chunks,
    raw_cursor,
    stream_bytes,
)
from crm_ledger.adapters.eventstore.sqlite_head import SQLITE_APPLICATION_ID
from crm_ledger.adapters.eventstore.sqlite_wal import (
    BACKSTOP_PAGES,
    SQLITE_CACHE_KIB,
    WalCheckpointer,
)
from crm_ledger.adapters.eventstore.sqlite_writer import CommitProcess, Statement
from crm_ledger.application import BatchRecords, OutboxLetter, StoredCopy, batch_records
from crm_ledger.audit import (
    ChainLink,
    Checkpoint,
    StoredRecord,
)
from crm_ledger.errors import StoreUnavailable

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from eventsourcing.persistence import StoredEvent
    from eventsourcing.sqlite import SQLiteCursor


class LedgerSQLiteRecorder(BackgroundCommits, LedgerRecording, SQLiteApplicationRecorder):
    """SQLite recorder that also writes receipts, positions and the hash chain with the
    events."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        memory = self.datastore.pool.is_sqlite_memory_mode
        # The log is folded into the file on a thread of its own (see sqlite_wal).
        self.wal = None if memory else WalCheckpointer(self.datastore.pool.db_name)

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        """The insert (committed on return), then its log frames are handed to the
        checkpoint thread. A batch that need not wait (``records.wait`` False, on a file)
        is prepared here and committed by the commit process instead: the next batch is
        prepared on this one's chain heads and keys before it commits."""
        records = batch_records(kwargs)
        if not records.wait and self.wal is not None:
            self.hand_over(lambda: self._prepare(stored_events, records))
            return None
        self.flush()  # batches in flight first: a batch is stored after those before it
        result = super().insert_events(stored_events, **kwargs)
        if self.wal is not None:
            self.wal.committed()
        return result

    def new_committer(self) -> CommitProcess:
        """The commit process (a killed one is replaced by the next batch sent)."""
        return CommitProcess(self.datastore.pool.db_name)

    def _prepare(
        self, stored_events: Sequence[StoredEvent], records: BatchRecords
    ) -> list[Statement]:
        with self.datastore.transaction(commit=False) as c:
            return self._statements(c, stored_events, records)

    def close(self) -> None:
        """Wait for the batches in flight, then stop the commit process and the
        checkpoint thread."""
        try:
            self.close_committer()
        finally:
            if self.wal is not None:
                self.wal.close()

    def construct_create_table_statements(self) -> list[str]:
        """eventsourcing's events table with the hash chain as two more columns (so that the
        chain lives in the events' own rowid order, not in a second table keyed by stream),
        then the ledger's own tables."""
        return [
            f"CREATE TABLE IF NOT EXISTS {self.events_table_name} ("
            "originator_id TEXT, originator_version INTEGER, topic TEXT, state BLOB, "
            "content_hash BLOB NOT NULL, chain_hash BLOB NOT NULL, "
            "PRIMARY KEY (originator_id, originator_version))",
            "CREATE TABLE IF NOT EXISTS ledger_receipts ("
            "event_id BLOB PRIMARY KEY, originator_id BLOB NOT NULL, "
            "originator_version INTEGER NOT NULL) WITHOUT ROWID",
            "CREATE TABLE IF NOT EXISTS ledger_positions ("
            "source TEXT NOT NULL, partition INTEGER NOT NULL, next_offset INTEGER NOT NULL, "
            "PRIMARY KEY (source, partition)) WITHOUT ROWID",
            "CREATE TABLE IF NOT EXISTS ledger_keys ("
            "originator_id BLOB PRIMARY KEY, data_key BLOB, destroyed_at TEXT) WITHOUT ROWID",
            "CREATE TABLE IF NOT EXISTS ledger_checkpoints ("
            "checkpoint_id INTEGER PRIMARY KEY AUTOINCREMENT, created_at TEXT NOT NULL, "
            "position INTEGER NOT NULL, streams INTEGER NOT NULL, digest BLOB NOT NULL, "
            "signature BLOB NOT NULL)",
            "CREATE TABLE IF NOT EXISTS ledger_checkpoint_heads ("
            "checkpoint_id INTEGER NOT NULL, originator_id BLOB NOT NULL, "
            "originator_version INTEGER NOT NULL, chain_hash BLOB NOT NULL, "
            "PRIMARY KEY (checkpoint_id, originator_id)) WITHOUT ROWID",
            f"CREATE TABLE IF NOT EXISTS ledger_outbox ({OUTBOX_COLUMNS.format(id=SQLITE_ID)})",
        ]

    def _create_table(self, c: SQLiteCursor) -> None:
        super()._create_table(c)
        c.execute("SELECT name FROM sqlite_master WHERE type='table' AND name='ledger_chain'")
        if c.fetchone() is not None:
            self._move_chain_into_events(c)

    def _move_chain_into_events(self, c: SQLiteCursor) -> None:
        """Move a ledger's hash chain from its own table (the layout before the chain became
        columns of the events table) into the events rows, in the same transaction."""
        events = self.events_table_name
        c.execute(f"SELECT name FROM pragma_table_info('{events}')")
        if "chain_hash" not in {row[0] for row in c.fetchall()}:
            c.execute(f"ALTER TABLE {events} ADD COLUMN content_hash BLOB")
            c.execute(f"ALTER TABLE {events} ADD COLUMN chain_hash BLOB")
        c.execute(
            f"UPDATE {events} SET content_hash = l.content_hash, chain_hash = l.chain_hash "
            f"FROM ledger_chain l WHERE {events}.originator_id = lower(hex(l.originator_id)) "
            f"AND {events}.originator_version = l.originator_version"
        )
        c.execute("DROP TABLE ledger_chain")

    def _insert_events(
        self, c: SQLiteCursor, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        # Both primary keys are random UUIDs, so inserts land all over their B-trees: keep
        # more of them in memory than SQLite's 2 MB default.
        c.execute(f"PRAGMA cache_size = -{SQLITE_CACHE_KIB}")
        # The commit only appends to the log; the checkpoint thread folds it into the file.
        if self.wal is not None:
            c.execute(f"PRAGMA wal_autocheckpoint = {BACKSTOP_PAGES}")
        for sql, rows in self._statements(c, stored_events, batch_records(kwargs)):
            if rows:
                c.executemany(sql, rows)
        return None

    def _statements(
        self, c: SQLiteCursor, stored_events: Sequence[StoredEvent], records: BatchRecords
    ) -> list[Statement]:
        """The batch's inserts and their rows: its events with their content and chain hash
        (one executemany each instead of eventsourcing's row-by-row inserts, which exist only
        to return notification ids the ledger does not use), new data keys, receipts,
        positions, outbox letters and snapshots."""
        events = [
            (stream.hex(), s.originator_version, s.topic, s.state, content, chained)
            for s, (stream, _, content, chained) in zip(
                stored_events, self._chain(c, stored_events), strict=True
            )
        ]
        statements: list[Statement] = [
            (
                f"INSERT INTO {self.events_table_name} (originator_id, originator_version, "
                "topic, state, content_hash, chain_hash) VALUES (?,?,?,?,?,?)",
                events,
            ),
            ("INSERT INTO ledger_keys VALUES (?,?,NULL)", self.data_keys.take_pending()),
            (
                "INSERT INTO ledger_receipts VALUES (?,?,?)",
                [
                    (r.event_id.bytes, r.originator_id.bytes, r.originator_version)
                    for r in records.receipts
                ],
            ),
            (
                # Positions only move forward: a stale writer (say, a worker that lost its
                # partition in a rebalance) cannot send the ledger back to re-read.
                "INSERT INTO ledger_positions VALUES (?,?,?) ON CONFLICT (source, partition) "
                "DO UPDATE SET next_offset = max(next_offset, excluded.next_offset)",
                [(p.source, p.partition, p.next_offset) for p in records.positions],
            ),
            (
                f"INSERT INTO ledger_outbox ({OUTBOX_FIELDS}) VALUES (?,?,?,?,?,?,?,?)",
                list(records.dead_letters),
            ),
        ]
        return statements + self._snapshot_statements(records)

    def _snapshot_statements(self, records: BatchRecords) -> list[Statement]:
        if not records.snapshots:
            return []
        return [
            (
                f"INSERT OR REPLACE INTO {cast('Any', self).snapshots_table} (originator_id, "
                "originator_version, topic, state) VALUES (?,?,?,?)",
                [
                    (stream_bytes(s.originator_id).hex(), s.originator_version, s.topic, s.state)
                    for s in records.snapshots
                ],
            )
        ]

    def _chain(
        self, c: SQLiteCursor, stored_events: Sequence[StoredEvent]
    ) -> list[tuple[bytes, int, bytes, bytes]]:
        """Each event's (stream, version, content hash, chain hash)."""
        streams = [stream_bytes(s.originator_id) for s in stored_events]
        wanted = self.heads.missing(streams, stored_events)
        found: dict[bytes, tuple[int, bytes]] = {}
        pairs = list(wanted.items())
        for start in range(0, len(pairs), LOOKUP_CHUNK // 2):
            chunk = pairs[start : start + LOOKUP_CHUNK // 2]
            c.execute(
                f"SELECT originator_id, originator_version, chain_hash FROM "
                f"{self.events_table_name} WHERE (originator_id, originator_version) IN "
                f"(VALUES {','.join(['(?,?)'] * len(chunk))})",
                [value for stream, version in chunk for value in (stream.hex(), version)],
            )
            found.update((bytes.fromhex(row[0]), (row[1], row[2])) for row in c.fetchall())
        return self.heads.chain(streams, stored_events, found)

    def load_key(self, stream: bytes) -> bytes | None:
        """The stream's data key; None if it has none or it was destroyed."""
        with self.datastore.transaction(commit=False) as c:
            c.execute("SELECT data_key FROM ledger_keys WHERE originator_id=?", [stream])
            row = c.fetchone()
        return bytes(row[0]) if row and row[0] is not None else None

    def load_keys(self, streams: list[bytes]) -> dict[bytes, bytes]:
        """Stream -> stored data key of those of ``streams`` that have a live one."""
        found: dict[bytes, bytes] = {}
        with self.datastore.transaction(commit=False) as c:
            for chunk in byte_chunks(streams):
                c.execute(
                    "SELECT originator_id, data_key FROM ledger_keys WHERE data_key NOT NULL "
                    f"AND originator_id IN ({','.join('?' * len(chunk))})",
                    list(chunk),
                )
                found.update((bytes(r[0]), bytes(r[1])) for r in c.fetchall())
        return found

    def destroy_key(self, stream: bytes) -> None:
        """Destroy the stream's data key, leaving no copy in the database files."""
        with self.datastore.transaction(commit=True) as c:
            c.execute("PRAGMA secure_delete=ON")  # freed bytes are overwritten with zeros
            c.execute(
                "INSERT INTO ledger_keys VALUES (?,NULL,?) ON CONFLICT (originator_id) "
                "DO UPDATE SET data_key=NULL, destroyed_at=excluded.destroyed_at",
                [stream, datetime.now(UTC).isoformat()],
            )
        # Earlier page images in the write-ahead log still hold the key: fold the log into
        # the database and empty it.
        self._truncate_log()
        self.data_keys.forget(stream)

    def rewrap_keys(self) -> int:
        """Wrap every live data key again by the current KEK (in one transaction), leaving no
        old wrapping in the file; how many keys were re-wrapped."""
        with self.datastore.transaction(commit=True) as c:
            c.execute("PRAGMA secure_delete=ON")
            c.execute("SELECT originator_id, data_key FROM ledger_keys WHERE data_key NOT NULL")
            rows = [(bytes(r[0]), bytes(r[1])) for r in c.fetchall()]
            c.executemany(
                "UPDATE ledger_keys SET data_key=? WHERE originator_id=?",
                [(self.data_keys.rewrapped(k, v) or v, k) for k, v in rows],
            )
        self._truncate_log()
        return len(rows)

    def _truncate_log(self) -> None:
        """Fold the whole log into the file and empty it (no page image of the log is left
        to hold what was just overwritten)."""
        with contextlib.ExitStack() as stack:
            if self.wal is not None:
                stack.enter_context(self.wal.paused())
            c = stack.enter_context(self.datastore.transaction(commit=False))
            c.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def stored_records(self) -> Iterator[StoredRecord]:
        """Every stored event, by stream then version (for verification)."""
        with self.datastore.transaction(commit=False) as c:
            raw = raw_cursor(c)
            raw.row_factory = None  # plain tuples, not sqlite3.Row
            raw.execute(
                "SELECT originator_id, originator_version, topic, state "
                f"FROM {self.events_table_name} ORDER BY originator_id, originator_version"
            )
            while rows := raw.fetchmany(10_000):
                for stream, version, topic, state in rows:
                    yield StoredRecord(bytes.fromhex(stream), version, str(topic), as_bytes(state))

    def chain_links(self) -> Iterator[ChainLink]:
        """Every chain row, by stream then version."""
        with self.datastore.transaction(commit=False) as c:
            raw = raw_cursor(c)
            raw.row_factory = None  # plain tuples, not sqlite3.Row
            raw.execute(f"{self._links_query} ORDER BY originator_id, originator_version")
            while rows := raw.fetchmany(10_000):
                for stream, version, content, chained in rows:
                    yield ChainLink(bytes.fromhex(stream), version, content, chained)

    def stream_chain(self, stream: bytes) -> list[ChainLink]:
        """One stream's chain rows, in version order."""
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                f"{self._links_query} AND originator_id=? ORDER BY originator_version",
                [stream.hex()],
            )
            return [ChainLink(stream, r[1], r[2], r[3]) for r in c.fetchall()]

    @property
    def _links_query(self) -> str:
        """(stream, version, content hash, chain hash) of every event that has them."""
        return (
            "SELECT originator_id, originator_version, content_hash, chain_hash "
            f"FROM {self.events_table_name} WHERE chain_hash IS NOT NULL"
        )

    def chain_heads(self) -> list[tuple[bytes, int, bytes]]:
        """(stream, version, chain hash) of every stream's newest event."""
        with self.datastore.transaction(commit=False) as c:
            c.execute(HEADS_QUERY.format(events=self.events_table_name))
            return [(bytes.fromhex(r[0]), r[1], r[2]) for r in c.fetchall()]

    def orphan_receipts(self) -> list[tuple[bytes, int]]:
        """(stream, version) of every receipt whose event is no longer stored."""
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                "SELECT r.originator_id, r.originator_version FROM ledger_receipts r "
                f"WHERE NOT EXISTS (SELECT 1 FROM {self.events_table_name} e "
                "WHERE e.originator_id = lower(hex(r.originator_id)) "
                "AND e.originator_version = r.originator_version)"
            )
            return sorted((bytes(r[0]), r[1]) for r in c.fetchall())

    def save_checkpoint(
        self,
        created: datetime,
        position: int,
        digest: bytes,
        signature: bytes,
        heads: Sequence[tuple[bytes, int, bytes]],
    ) -> Checkpoint:
        """Store a checkpoint and the heads it signed."""
        with self.datastore.transaction(commit=True) as c:
            c.execute(
                "INSERT INTO ledger_checkpoints (created_at, position, streams, digest, signature)"
                " VALUES (?,?,?,?,?)",
                [created.isoformat(), position, len(heads), digest, signature],
            )
            checkpoint_id = int(raw_cursor(c).lastrowid)
            c.executemany(
                "INSERT INTO ledger_checkpoint_heads VALUES (?,?,?,?)",
                [(checkpoint_id, *h) for h in heads],
            )
        return Checkpoint(checkpoint_id, created, position, len(heads), digest, signature)

    def checkpoints(self) -> list[Checkpoint]:
        """Every checkpoint, oldest first."""
        with self.datastore.transaction(commit=False) as c:
            c.execute("SELECT * FROM ledger_checkpoints ORDER BY checkpoint_id")
            return [
                Checkpoint(r[0], datetime.fromisoformat(r[1]), r[2], r[3], r[4], r[5])
                for r in c.fetchall()
            ]

    def snapshot_rows(self) -> Iterator[StoredRecord]:
        """Every stored snapshot (the snapshot table is named by the Ledger)."""
        table = getattr(self, "snapshots_table", None)
        if table is None:
            return
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT originator_id, originator_version, topic, state FROM {table}")
            rows = c.fetchall()
        for r in rows:
            yield StoredRecord(bytes.fromhex(r[0]), r[1], str(r[2]), as_bytes(r[3]))

    def key_rows(self) -> list[tuple[bytes, bytes | None]]:
        """(stream, data key) of every key row; None where the key was destroyed."""
        with self.datastore.transaction(commit=False) as c:
            c.execute("SELECT originator_id, data_key FROM ledger_keys ORDER BY originator_id")
            return [(bytes(r[0]), None if r[1] is None else bytes(r[1])) for r in c.fetchall()]

    def checkpoint_heads(self, checkpoint_id: int) -> list[tuple[bytes, int, bytes]]:
        """The heads a checkpoint signed."""
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                "SELECT originator_id, originator_version, chain_hash "
                "FROM ledger_checkpoint_heads WHERE checkpoint_id=?",
                [checkpoint_id],
            )
            return [(r[0], r[1], r[2]) for r in c.fetchall()]

    def existing_ids(self, originator_ids: Sequence[UUID]) -> set[UUID]:
        """The subset of ``originator_ids`` that have stored events."""
        found: set[UUID] = set()
        with self.datastore.transaction(commit=False) as c:
            for chunk in chunks(originator_ids):
                marks = ",".join("?" * len(chunk))
                c.execute(
                    f"SELECT DISTINCT originator_id FROM {self.events_table_name} "
                    f"WHERE originator_id IN ({marks})",
                    [i.hex for i in chunk],
                )
                found.update(UUID(row[0]) for row in c.fetchall())
        return found

    def receipted_events(self, event_ids: Sequence[UUID]) -> list[StoredCopy]:
        """The stored events of those of ``event_ids`` already stored."""
        found: list[StoredCopy] = []
        with self.datastore.transaction(commit=False) as c:
            for chunk in chunks(event_ids):
                marks = ",".join("?" * len(chunk))
                c.execute(
                    "SELECT r.event_id, e.originator_id, e.originator_version, e.topic, e.state "
                    f"FROM ledger_receipts r JOIN {self.events_table_name} e "
                    "ON e.originator_id = lower(hex(r.originator_id)) "
                    "AND e.originator_version = r.originator_version "
                    f"WHERE r.event_id IN ({marks})",
                    [e.bytes for e in chunk],
                )
                found += [
                    StoredCopy(UUID(bytes=r[0]), UUID(r[1]), r[2], r[3], as_bytes(r[4]))
                    for r in c.fetchall()
                ]
        return found

    def pending_dead_letters(self, limit: int) -> list[tuple[int, OutboxLetter]]:
        """Up to ``limit`` outbox letters not yet sent, oldest first, with their ids."""
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT id, {OUTBOX_FIELDS} FROM ledger_outbox ORDER BY id LIMIT ?", [limit])
            return [(r[0], OutboxLetter(*tuple(r)[1:])) for r in c.fetchall()]

    def remove_dead_letters(self, ids: Sequence[int]) -> None:
        """Forget outbox letters the dead-letter topic acknowledged."""
        with self.datastore.transaction(commit=True) as c:
            c.executemany("DELETE FROM ledger_outbox WHERE id=?", [(i,) for i in ids])

    def reset_positions(self, source: str) -> int:
        """Forget every stored position of ``source``; how many partitions had one."""
        with self.datastore.transaction(commit=True) as c:
            c.execute("SELECT COUNT(*) FROM ledger_positions WHERE source=?", [source])
            count = int(c.fetchone()[0])
            c.execute("DELETE FROM ledger_positions WHERE source=?", [source])
            return count

    def positions(self, source: str) -> dict[int, int]:
        """Partition -> next offset stored for ``source``."""
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                "SELECT partition, next_offset FROM ledger_positions WHERE source=?", [source]
            )
            return {row[0]: row[1] for row in c.fetchall()}

    def select_log(self, after: int, limit: int) -> list[tuple[Any, ...]]:
        """(position, originator id, version, topic, state) of up to ``limit`` notifications
        after ``after``: the notification log without building library objects."""
        with self.datastore.transaction(commit=False) as c:
            raw = raw_cursor(c)
            raw.row_factory = None  # plain tuples, not sqlite3.Row
            raw.execute(
                "SELECT rowid, originator_id, originator_version, topic, state "
                f"FROM {self.events_table_name} WHERE rowid>? ORDER BY rowid LIMIT ?",
                [after, limit],
            )
            return cast("list[tuple[Any, ...]]", raw.fetchall())

    def select_stream(self, originator_id: UUID) -> list[tuple[Any, ...]]:
        """(0, originator id, version, topic, state) of one stream's events, in order."""
        with self.datastore.transaction(commit=False) as c:
            raw = raw_cursor(c)
            raw.row_factory = None  # plain tuples, not sqlite3.Row
            raw.execute(
                "SELECT 0, originator_id, originator_version, topic, state "
                f"FROM {self.events_table_name} WHERE originator_id=? "
                "ORDER BY originator_version",
                [originator_id.hex],
            )
            return cast("list[tuple[Any, ...]]", raw.fetchall())

    def count_receipts(self) -> int:
        """How many distinct events the ledger holds."""
        with self.datastore.transaction(commit=False) as c:
            c.execute("SELECT COUNT(*) FROM ledger_receipts")
            return int(c.fetchone()[0])


def claim_sqlite(db_path: str, *, create: bool) -> None:
    """Check that ``db_path`` is a ledger (with ``create``: a ledger, an empty database or no
    file yet, which then becomes one); raise StoreUnavailable for anything else."""
    try:
        conn = sqlite3.connect(f"file:{db_path}?mode={'rwc' if create else 'rw'}", uri=True)
    except sqlite3.Error as e:
        raise StoreUnavailable(f"cannot open {db_path}: {e}") from None
    try:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        ours = app_id == SQLITE_APPLICATION_ID or (app_id == 0 and "ledger_receipts" in tables)
        if not ours and (app_id != 0 or tables):
            msg = f"{db_path} is not a crm-ledger database (another program's file); not touched"
            raise StoreUnavailable(msg)
        if not ours and not create:
            msg = f"no ledger at {db_path}; run `crm-ledger init` or pass --data-dir"
            raise StoreUnavailable(msg)
        if app_id != SQLITE_APPLICATION_ID:
            conn.execute(f"PRAGMA application_id = {SQLITE_APPLICATION_ID}")
            conn.commit()
    except sqlite3.DatabaseError as e:
        raise StoreUnavailable(f"{db_path} is not a crm-ledger database: {e}") from None
    finally:
        conn.close()


def sqlite_env(db_path: str) -> dict[str, str]:
    """eventsourcing settings for the ledger's SQLite file."""
    return {
        "PERSISTENCE_MODULE": "eventsourcing.sqlite",
        "SQLITE_DBNAME": db_path,
        "SQLITE_LOCK_TIMEOUT": "30",
        "APPLICATION_RECORDER_TOPIC": f"{__name__}:LedgerSQLiteRecorder",
        "MAPPER_TOPIC": get_topic(LedgerMapper),
    }
