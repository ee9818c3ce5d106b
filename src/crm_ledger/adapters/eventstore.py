"""Event store recorders: eventsourcing's SQLite and PostgreSQL recorders, plus the ledger's
receipts (the permanent event_id dedup table) and source positions, written in the same
transaction as the events they describe.
"""

from __future__ import annotations

import hashlib
import hmac
import sqlite3
from datetime import UTC, datetime, timedelta
from functools import cache, lru_cache
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import unquote, urlsplit
from uuid import UUID

import orjson
import psycopg
from eventsourcing.domain import Snapshot
from eventsourcing.persistence import IntegrityError, Mapper, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder
from eventsourcing.sqlite import SQLiteApplicationRecorder
from eventsourcing.utils import get_topic, resolve_topic
from psycopg.sql import SQL, Identifier

from crm_ledger.adapters.crypto import DataKeys
from crm_ledger.aggregates import PERSONAL_FIELDS, Customer, customer_uuid
from crm_ledger.aggregates.envelope import Touched, own_fields
from crm_ledger.application import LogRecord, OutboxLetter, StoredCopy
from crm_ledger.audit import (
    GENESIS,
    ChainLink,
    Checkpoint,
    StoredRecord,
    chain_hash,
    content_hash,
)
from crm_ledger.errors import ConfigurationError, StoreUnavailable, UntrustedSnapshot

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence

    from eventsourcing.domain import DomainEventProtocol
    from eventsourcing.postgres import PostgresDatastore
    from eventsourcing.sqlite import SQLiteCursor
    from psycopg import Cursor
    from psycopg.rows import DictRow

    from crm_ledger.application import Position, Receipt

#: SQLite page cache per connection, in KiB (eventsourcing's pool may open several).
SQLITE_CACHE_KIB = 32 * 1024

#: How many ids one dedup look-up sends at a time (SQLite's variable limit is 32766).
LOOKUP_CHUNK = 900


def _chunks(items: Sequence[UUID]) -> Iterable[Sequence[UUID]]:
    for start in range(0, len(items), LOOKUP_CHUNK):
        yield items[start : start + LOOKUP_CHUNK]


def _blob(value: Any) -> bytes:
    """Stored bytes, also when a row was rewritten with another type (SQLite allows it)."""
    if isinstance(value, bytes | memoryview):
        return bytes(value)
    return str(value).encode()


def _raw(cursor: Any) -> Any:
    """The sqlite3 cursor inside eventsourcing's wrapper (for row_factory, fetchmany)."""
    return getattr(cursor, "sqlite_cursor", cursor)


def _stream_bytes(originator_id: UUID | str) -> bytes:
    return originator_id.bytes if isinstance(originator_id, UUID) else bytes.fromhex(originator_id)


def _byte_chunks(items: Sequence[bytes]) -> Iterable[Sequence[bytes]]:
    for start in range(0, len(items), LOOKUP_CHUNK):
        yield items[start : start + LOOKUP_CHUNK]


#: Every stream's newest chain row (for checkpoints).
_HEADS_QUERY = (
    "SELECT c.originator_id, c.originator_version, c.chain_hash FROM {schema}ledger_chain c "
    "JOIN (SELECT originator_id, MAX(originator_version) AS v FROM {schema}ledger_chain "
    "GROUP BY originator_id) m ON m.originator_id = c.originator_id "
    "AND m.v = c.originator_version"
)

#: Chain heads kept in memory, so that most batches need no look-up.
HEADS_CACHE_SIZE = 200_000


class ChainHeads:
    """The newest chain hash of recently written streams.

    A head enters the cache only after its transaction committed, and is used only when its
    version is exactly the one before a batch's first event of that stream; anything else is
    looked up in the chain table. So a stale entry (another writer moved the stream on) is
    never used: its version no longer fits.
    """

    def __init__(self) -> None:
        self.known: dict[bytes, tuple[int, bytes]] = {}
        self.pending: dict[bytes, tuple[int, bytes]] = {}

    def missing(
        self, streams: Sequence[bytes], stored_events: Sequence[StoredEvent]
    ) -> dict[bytes, int]:
        """Streams whose previous head must be read: stream -> the version needed.
        ``streams`` holds each event's stream id as bytes."""
        firsts: dict[bytes, int] = {}
        for stream, s in zip(streams, stored_events, strict=True):
            firsts.setdefault(stream, s.originator_version)
        return {
            stream: version - 1
            for stream, version in firsts.items()
            if version > 1 and self.known.get(stream, (0, b""))[0] != version - 1
        }

    def chain(
        self,
        streams: Sequence[bytes],
        stored_events: Sequence[StoredEvent],
        found: dict[bytes, tuple[int, bytes]],
    ) -> list[tuple[bytes, int, bytes, bytes]]:
        """Chain rows for a batch's events; their heads wait for the commit."""
        links = []
        current: dict[bytes, tuple[int, bytes]] = {}
        for stream, s in zip(streams, stored_events, strict=True):
            head = current.get(stream) or found.get(stream) or self.known.get(stream)
            version, previous = head if head is not None else (0, GENESIS)
            if s.originator_version <= version:
                # Another writer appended to this stream first: the batch is retried.
                msg = f"stream {stream.hex()} moved on to version {version}"
                raise IntegrityError(msg)
            if s.originator_version != version + 1:
                msg = (
                    f"the hash chain of stream {stream.hex()} ends at version {version}, but "
                    f"the next event is version {s.originator_version}: run "
                    "`crm-ledger audit verify`"
                )
                raise StoreUnavailable(msg)
            content = content_hash(stream, s.originator_version, s.topic, s.state)
            chained = chain_hash(previous, content)
            links.append((stream, s.originator_version, content, chained))
            current[stream] = (s.originator_version, chained)
        self.pending = current
        return links

    def discard(self) -> None:
        """Forget the heads of a transaction that did not commit."""
        self.pending = {}

    def settle(self) -> None:
        """Keep the heads of the transaction that just committed."""
        pending, self.pending = self.pending, {}
        self.known.update(pending)
        if len(self.known) > HEADS_CACHE_SIZE:
            for stream in list(self.known)[: HEADS_CACHE_SIZE // 2]:
                del self.known[stream]


class _LedgerRecording:
    """What both recorders add to eventsourcing's: the hash chain's heads and the data keys,
    settled only once a transaction committed, and one stream's stored records."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.heads = ChainHeads()
        self.data_keys = DataKeys(self.load_key)

    def load_key(self, stream: bytes) -> bytes | None:
        """The stream's data key (each store reads its own table)."""
        raise NotImplementedError

    def select_stream(self, originator_id: UUID) -> list[tuple[Any, ...]]:
        """One stream's (0, id, version, topic, state) rows (each store queries its own)."""
        raise NotImplementedError

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        """eventsourcing's insert, then the chain heads it wrote become known (only once
        the transaction committed)."""
        try:
            result: Sequence[int] | None = super().insert_events(  # type: ignore[misc]
                stored_events, **kwargs
            )
        except BaseException:
            self.heads.discard()
            self.data_keys.settle(committed=False)
            raise
        self.heads.settle()
        self.data_keys.settle(committed=True)
        return result

    def stream_records(self, stream: bytes) -> list[StoredRecord]:
        """One stream's stored events, in version order."""
        return [
            StoredRecord(stream, row[2], str(row[3]), _blob(row[4]))
            for row in self.select_stream(UUID(bytes=stream))
        ]


class LedgerSQLiteRecorder(_LedgerRecording, SQLiteApplicationRecorder):
    """SQLite recorder that also writes receipts, positions and the hash chain with the
    events."""

    def construct_create_table_statements(self) -> list[str]:
        """Add the receipts and positions tables to eventsourcing's own."""
        return [
            *super().construct_create_table_statements(),
            "CREATE TABLE IF NOT EXISTS ledger_receipts ("
            "event_id BLOB PRIMARY KEY, originator_id BLOB NOT NULL, "
            "originator_version INTEGER NOT NULL) WITHOUT ROWID",
            "CREATE TABLE IF NOT EXISTS ledger_positions ("
            "source TEXT NOT NULL, partition INTEGER NOT NULL, next_offset INTEGER NOT NULL, "
            "PRIMARY KEY (source, partition)) WITHOUT ROWID",
            "CREATE TABLE IF NOT EXISTS ledger_chain ("
            "originator_id BLOB NOT NULL, originator_version INTEGER NOT NULL, "
            "content_hash BLOB NOT NULL, chain_hash BLOB NOT NULL, "
            "PRIMARY KEY (originator_id, originator_version)) WITHOUT ROWID",
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
            f"CREATE TABLE IF NOT EXISTS ledger_outbox ({_OUTBOX_COLUMNS.format(id=_SQLITE_ID)})",
        ]

    def _insert_events(
        self, c: SQLiteCursor, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        # Both primary keys are random UUIDs, so inserts land all over their B-trees: keep
        # more of them in memory than SQLite's 2 MB default.
        c.execute(f"PRAGMA cache_size = -{SQLITE_CACHE_KIB}")
        # One executemany instead of eventsourcing's row-by-row inserts (which exist only to
        # return notification ids, and the ledger does not use them).
        c.executemany(
            self.insert_events_statement,
            [
                (
                    s.originator_id.hex if isinstance(s.originator_id, UUID) else s.originator_id,
                    s.originator_version,
                    s.topic,
                    s.state,
                )
                for s in stored_events
            ],
        )
        self._chain(c, stored_events)
        c.executemany("INSERT INTO ledger_keys VALUES (?,?,NULL)", self.data_keys.take_pending())
        receipts: Sequence[Receipt] = kwargs.get("receipts", ())
        c.executemany(
            "INSERT INTO ledger_receipts VALUES (?,?,?)",
            [(r.event_id.bytes, r.originator_id.bytes, r.originator_version) for r in receipts],
        )
        positions: Sequence[Position] = kwargs.get("positions", ())
        c.executemany(
            # Positions only move forward: a stale writer (say, a worker that lost its
            # partition in a rebalance) cannot send the ledger back to re-read.
            "INSERT INTO ledger_positions VALUES (?,?,?) ON CONFLICT (source, partition) "
            "DO UPDATE SET next_offset = max(next_offset, excluded.next_offset)",
            [(p.source, p.partition, p.next_offset) for p in positions],
        )
        letters: Sequence[OutboxLetter] = kwargs.get("dead_letters", ())
        c.executemany(
            f"INSERT INTO ledger_outbox ({_OUTBOX_FIELDS}) VALUES (?,?,?,?,?,?,?,?)", letters
        )
        return None

    def _chain(self, c: SQLiteCursor, stored_events: Sequence[StoredEvent]) -> None:
        """Write each event's content and chain hash."""
        streams = [_stream_bytes(s.originator_id) for s in stored_events]
        wanted = self.heads.missing(streams, stored_events)
        found: dict[bytes, tuple[int, bytes]] = {}
        pairs = list(wanted.items())
        for start in range(0, len(pairs), LOOKUP_CHUNK // 2):
            chunk = pairs[start : start + LOOKUP_CHUNK // 2]
            c.execute(
                "SELECT originator_id, originator_version, chain_hash FROM ledger_chain "
                "WHERE (originator_id, originator_version) IN "
                f"(VALUES {','.join(['(?,?)'] * len(chunk))})",
                [value for pair in chunk for value in pair],
            )
            found.update((row[0], (row[1], row[2])) for row in c.fetchall())
        links = self.heads.chain(streams, stored_events, found)
        c.executemany("INSERT INTO ledger_chain VALUES (?,?,?,?)", links)

    def load_key(self, stream: bytes) -> bytes | None:
        """The stream's data key; None if it has none or it was destroyed."""
        with self.datastore.transaction(commit=False) as c:
            c.execute("SELECT data_key FROM ledger_keys WHERE originator_id=?", [stream])
            row = c.fetchone()
        return bytes(row[0]) if row and row[0] is not None else None

    def destroy_key(self, stream: bytes) -> None:
        """Destroy the stream's data key, leaving no copy in the database files."""
        with self.datastore.transaction(commit=True) as c:
            c.execute("PRAGMA secure_delete=ON")  # freed bytes are overwritten with zeros
            c.execute(
                "INSERT INTO ledger_keys VALUES (?,NULL,?) ON CONFLICT (originator_id) "
                "DO UPDATE SET data_key=NULL, destroyed_at=excluded.destroyed_at",
                [stream, datetime.now(UTC).isoformat()],
            )
        with self.datastore.transaction(commit=False) as c:
            # Earlier page images in the write-ahead log still hold the key: fold the log
            # into the database and empty it.
            c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
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
        with self.datastore.transaction(commit=False) as c:
            c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return len(rows)

    def stored_records(self) -> Iterator[StoredRecord]:
        """Every stored event, by stream then version (for verification)."""
        with self.datastore.transaction(commit=False) as c:
            raw = _raw(c)
            raw.row_factory = None  # plain tuples, not sqlite3.Row
            raw.execute(
                "SELECT originator_id, originator_version, topic, state "
                f"FROM {self.events_table_name} ORDER BY originator_id, originator_version"
            )
            while rows := raw.fetchmany(10_000):
                for stream, version, topic, state in rows:
                    yield StoredRecord(bytes.fromhex(stream), version, str(topic), _blob(state))

    def chain_links(self) -> Iterator[ChainLink]:
        """Every chain row, by stream then version."""
        with self.datastore.transaction(commit=False) as c:
            raw = _raw(c)
            raw.row_factory = None  # plain tuples, not sqlite3.Row
            raw.execute("SELECT * FROM ledger_chain ORDER BY originator_id, originator_version")
            while rows := raw.fetchmany(10_000):
                for row in rows:
                    yield ChainLink(*row)

    def stream_chain(self, stream: bytes) -> list[ChainLink]:
        """One stream's chain rows, in version order."""
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                "SELECT * FROM ledger_chain WHERE originator_id=? ORDER BY originator_version",
                [stream],
            )
            return [ChainLink(*row) for row in c.fetchall()]

    def chain_heads(self) -> list[tuple[bytes, int, bytes]]:
        """(stream, version, chain hash) of every stream's newest event."""
        with self.datastore.transaction(commit=False) as c:
            c.execute(_HEADS_QUERY.format(schema=""))
            return [(r[0], r[1], r[2]) for r in c.fetchall()]

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
            checkpoint_id = int(_raw(c).lastrowid)
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
            yield StoredRecord(bytes.fromhex(r[0]), r[1], str(r[2]), _blob(r[3]))

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
            for chunk in _chunks(originator_ids):
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
            for chunk in _chunks(event_ids):
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
                    StoredCopy(UUID(bytes=r[0]), UUID(r[1]), r[2], r[3], _blob(r[4]))
                    for r in c.fetchall()
                ]
        return found

    def pending_dead_letters(self, limit: int) -> list[tuple[int, OutboxLetter]]:
        """Up to ``limit`` outbox letters not yet sent, oldest first, with their ids."""
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                f"SELECT id, {_OUTBOX_FIELDS} FROM ledger_outbox ORDER BY id LIMIT ?", [limit]
            )
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
            raw = _raw(c)
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
            raw = _raw(c)
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


class LedgerPostgresRecorder(_LedgerRecording, PostgresApplicationRecorder):
    """PostgreSQL recorder that also writes receipts and positions with the events."""

    def __init__(self, datastore: PostgresDatastore, *, events_table_name: str = "stored_events"):
        super().__init__(datastore, events_table_name=events_table_name)
        schema = Identifier(self.datastore.schema)
        self.sql_create_statements += [
            SQL(
                "CREATE TABLE IF NOT EXISTS {}.ledger_receipts (event_id uuid PRIMARY KEY, "
                "originator_id uuid NOT NULL, originator_version bigint NOT NULL)"
            ).format(schema),
            SQL(
                "CREATE TABLE IF NOT EXISTS {}.ledger_positions (source text NOT NULL, "
                "partition integer NOT NULL, next_offset bigint NOT NULL, "
                "PRIMARY KEY (source, partition))"
            ).format(schema),
        ]
        self._insert_receipts = SQL("INSERT INTO {}.ledger_receipts VALUES (%s,%s,%s)").format(
            schema
        )
        self._upsert_position = SQL(
            "INSERT INTO {}.ledger_positions AS p VALUES (%s,%s,%s) "
            "ON CONFLICT (source, partition) "
            "DO UPDATE SET next_offset = GREATEST(p.next_offset, excluded.next_offset)"
        ).format(schema)
        self.sql_create_statements += [
            SQL(statement).format(schema)
            for statement in (
                "CREATE TABLE IF NOT EXISTS {}.ledger_chain (originator_id bytea NOT NULL, "
                "originator_version bigint NOT NULL, content_hash bytea NOT NULL, "
                "chain_hash bytea NOT NULL, PRIMARY KEY (originator_id, originator_version))",
                "CREATE TABLE IF NOT EXISTS {}.ledger_keys (originator_id bytea PRIMARY KEY, "
                "data_key bytea, destroyed_at timestamptz)",
                # The planner's statistics copy column values into pg_statistic, which no
                # VACUUM rewrites: never collect them for the keys.
                "ALTER TABLE {}.ledger_keys ALTER COLUMN data_key SET STATISTICS 0",
                "CREATE TABLE IF NOT EXISTS {}.ledger_checkpoints (checkpoint_id bigserial PRIMARY "
                "KEY, created_at timestamptz NOT NULL, position bigint NOT NULL, streams bigint "
                "NOT NULL, digest bytea NOT NULL, signature bytea NOT NULL)",
                "CREATE TABLE IF NOT EXISTS {}.ledger_checkpoint_heads (checkpoint_id bigint NOT "
                "NULL, originator_id bytea NOT NULL, originator_version bigint NOT NULL, "
                "chain_hash bytea NOT NULL, PRIMARY KEY (checkpoint_id, originator_id))",
                "CREATE TABLE IF NOT EXISTS {}.ledger_outbox ("
                + _OUTBOX_COLUMNS.format(id="id bigserial PRIMARY KEY").replace("BLOB", "bytea")
                + ")",
            )
        ]
        self._insert_letter = SQL(
            f"INSERT INTO {{}}.ledger_outbox ({_OUTBOX_FIELDS}) VALUES (%s,%s,%s,%s,%s,%s,%s,%s)"
        ).format(schema)
        self._schema = schema

    def _insert_events(
        self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> None:
        super()._insert_events(curs, stored_events, **kwargs)
        self._chain(curs, stored_events)
        keys = self.data_keys.take_pending()
        if keys:
            curs.executemany(
                SQL("INSERT INTO {}.ledger_keys VALUES (%s,%s,NULL)").format(self._schema), keys
            )
        receipts: Sequence[Receipt] = kwargs.get("receipts", ())
        if receipts:
            curs.executemany(
                self._insert_receipts,
                [(r.event_id, r.originator_id, r.originator_version) for r in receipts],
            )
        positions: Sequence[Position] = kwargs.get("positions", ())
        if positions:
            curs.executemany(
                self._upsert_position,
                [(p.source, p.partition, p.next_offset) for p in positions],
            )
        letters: Sequence[OutboxLetter] = kwargs.get("dead_letters", ())
        if letters:
            curs.executemany(self._insert_letter, letters)

    def _create_table(self, curs: Cursor[DictRow]) -> None:
        # Workers starting together would otherwise race to create the same tables, and
        # PostgreSQL refuses one with "tuple concurrently updated".
        curs.execute("SELECT pg_advisory_xact_lock(hashtext('crm-ledger schema'))")
        super()._create_table(curs)

    def _chain(self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent]) -> None:
        """Write each event's content and chain hash."""
        streams = [_stream_bytes(s.originator_id) for s in stored_events]
        wanted = self.heads.missing(streams, stored_events)
        found: dict[bytes, tuple[int, bytes]] = {}
        if wanted:
            curs.execute(
                SQL(
                    "SELECT originator_id, originator_version, chain_hash FROM {}.ledger_chain "
                    "WHERE (originator_id, originator_version) IN "
                    "(SELECT * FROM unnest(%s::bytea[], %s::bigint[]))"
                ).format(self._schema),
                [list(wanted), list(wanted.values())],
            )
            found = {
                bytes(r["originator_id"]): (r["originator_version"], bytes(r["chain_hash"]))
                for r in curs.fetchall()
            }
        links = self.heads.chain(streams, stored_events, found)
        curs.executemany(
            SQL("INSERT INTO {}.ledger_chain VALUES (%s,%s,%s,%s)").format(self._schema), links
        )

    def load_key(self, stream: bytes) -> bytes | None:
        """The stream's data key; None if it has none or it was destroyed."""
        rows = self._select(
            SQL("SELECT data_key FROM {}.ledger_keys WHERE originator_id=%s"), [stream]
        )
        key = rows[0]["data_key"] if rows else None
        return bytes(key) if key is not None else None

    def destroy_key(self, stream: bytes) -> None:
        """Destroy the stream's data key, and rewrite the key table so that no dead row
        version keeps it."""
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(
                SQL(
                    "INSERT INTO {}.ledger_keys VALUES (%s,NULL,now()) ON CONFLICT "
                    "(originator_id) DO UPDATE SET data_key=NULL, destroyed_at=now()"
                ).format(self._schema),
                [stream],
            )
        self._vacuum_keys()
        self.data_keys.forget(stream)

    def rewrap_keys(self) -> int:
        """Wrap every live data key again by the current KEK (in one transaction), then
        rewrite the key table so that no dead row version keeps an old wrapping."""
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(
                SQL(
                    "SELECT originator_id, data_key FROM {}.ledger_keys "
                    "WHERE data_key IS NOT NULL FOR UPDATE"
                ).format(self._schema)
            )
            rows = [(bytes(r["originator_id"]), bytes(r["data_key"])) for r in curs.fetchall()]
            curs.executemany(
                SQL("UPDATE {}.ledger_keys SET data_key=%s WHERE originator_id=%s").format(
                    self._schema
                ),
                [(self.data_keys.rewrapped(k, v) or v, k) for k, v in rows],
            )
        self._vacuum_keys()
        return len(rows)

    def _vacuum_keys(self) -> None:
        with self.datastore.get_connection() as conn:
            conn.autocommit = True
            conn.execute(SQL("VACUUM FULL {}.ledger_keys").format(self._schema))
            conn.autocommit = False

    def stored_records(self) -> Iterator[StoredRecord]:
        """Every stored event, by stream then version (for verification)."""
        query = SQL(
            "SELECT originator_id, originator_version, topic, state FROM {}.{events} "
            "ORDER BY originator_id, originator_version"
        ).format(self._schema, events=Identifier(self.events_table_name))
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(query)
            while rows := curs.fetchmany(10_000):
                for r in rows:
                    yield StoredRecord(
                        r["originator_id"].bytes,
                        r["originator_version"],
                        r["topic"],
                        bytes(r["state"]),
                    )

    def chain_links(self) -> Iterator[ChainLink]:
        """Every chain row, by stream then version."""
        query = SQL(
            "SELECT * FROM {}.ledger_chain ORDER BY originator_id, originator_version"
        ).format(self._schema)
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(query)
            while rows := curs.fetchmany(10_000):
                for r in rows:
                    yield ChainLink(
                        bytes(r["originator_id"]),
                        r["originator_version"],
                        bytes(r["content_hash"]),
                        bytes(r["chain_hash"]),
                    )

    def stream_chain(self, stream: bytes) -> list[ChainLink]:
        """One stream's chain rows, in version order."""
        rows = self._select(
            SQL("SELECT * FROM {}.ledger_chain WHERE originator_id=%s ORDER BY originator_version"),
            [stream],
        )
        return [
            ChainLink(
                bytes(r["originator_id"]),
                r["originator_version"],
                bytes(r["content_hash"]),
                bytes(r["chain_hash"]),
            )
            for r in rows
        ]

    def chain_heads(self) -> list[tuple[bytes, int, bytes]]:
        """(stream, version, chain hash) of every stream's newest event."""
        query = SQL(_HEADS_QUERY.format(schema="{schema}.")).format(schema=self._schema)
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(query)
            rows = curs.fetchall()
        return [
            (bytes(r["originator_id"]), r["originator_version"], bytes(r["chain_hash"]))
            for r in rows
        ]

    def save_checkpoint(
        self,
        created: datetime,
        position: int,
        digest: bytes,
        signature: bytes,
        heads: Sequence[tuple[bytes, int, bytes]],
    ) -> Checkpoint:
        """Store a checkpoint and the heads it signed."""
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(
                SQL(
                    "INSERT INTO {}.ledger_checkpoints (created_at, position, streams, digest, "
                    "signature) VALUES (%s,%s,%s,%s,%s) RETURNING checkpoint_id"
                ).format(self._schema),
                [created, position, len(heads), digest, signature],
            )
            row = curs.fetchone()
            assert row is not None  # RETURNING gives the row
            checkpoint_id = int(row["checkpoint_id"])
            curs.executemany(
                SQL("INSERT INTO {}.ledger_checkpoint_heads VALUES (%s,%s,%s,%s)").format(
                    self._schema
                ),
                [(checkpoint_id, *h) for h in heads],
            )
        return Checkpoint(checkpoint_id, created, position, len(heads), digest, signature)

    def checkpoints(self) -> list[Checkpoint]:
        """Every checkpoint, oldest first."""
        rows = self._select(SQL("SELECT * FROM {}.ledger_checkpoints ORDER BY checkpoint_id"), [])
        return [
            Checkpoint(
                int(r["checkpoint_id"]),
                r["created_at"],
                r["position"],
                r["streams"],
                bytes(r["digest"]),
                bytes(r["signature"]),
            )
            for r in rows
        ]

    def snapshot_rows(self) -> Iterator[StoredRecord]:
        """Every stored snapshot (the snapshot table is named by the Ledger)."""
        table = getattr(self, "snapshots_table", None)
        if table is None:
            return
        query = SQL("SELECT originator_id, originator_version, topic, state FROM {}.{}").format(
            self._schema, Identifier(table)
        )
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(query)
            rows = curs.fetchall()
        for r in rows:
            yield StoredRecord(
                r["originator_id"].bytes, r["originator_version"], r["topic"], _blob(r["state"])
            )

    def key_rows(self) -> list[tuple[bytes, bytes | None]]:
        """(stream, data key) of every key row; None where the key was destroyed."""
        rows = self._select(
            SQL("SELECT originator_id, data_key FROM {}.ledger_keys ORDER BY originator_id"), []
        )
        return [
            (bytes(r["originator_id"]), None if r["data_key"] is None else bytes(r["data_key"]))
            for r in rows
        ]

    def checkpoint_heads(self, checkpoint_id: int) -> list[tuple[bytes, int, bytes]]:
        """The heads a checkpoint signed."""
        rows = self._select(
            SQL(
                "SELECT originator_id, originator_version, chain_hash "
                "FROM {}.ledger_checkpoint_heads WHERE checkpoint_id=%s"
            ),
            [checkpoint_id],
        )
        return [
            (bytes(r["originator_id"]), r["originator_version"], bytes(r["chain_hash"]))
            for r in rows
        ]

    def _select(self, statement: SQL, params: Sequence[Any]) -> list[DictRow]:
        """Run ``statement`` with ``{}`` as the schema and ``{events}`` as the events table."""
        query = statement.format(self._schema, events=Identifier(self.events_table_name))
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(query, params)
            return curs.fetchall()

    def receipted_events(self, event_ids: Sequence[UUID]) -> list[StoredCopy]:
        """The stored events of those of ``event_ids`` already stored."""
        found: list[StoredCopy] = []
        for chunk in _chunks(event_ids):
            rows = self._select(
                SQL(
                    "SELECT r.event_id, e.originator_id, e.originator_version, e.topic, e.state "
                    "FROM {0}.ledger_receipts r JOIN {0}.{events} e "
                    "ON e.originator_id = r.originator_id "
                    "AND e.originator_version = r.originator_version "
                    "WHERE r.event_id = ANY(%s)"
                ),
                [list(chunk)],
            )
            found += [
                StoredCopy(
                    r["event_id"],
                    r["originator_id"],
                    r["originator_version"],
                    r["topic"],
                    _blob(r["state"]),
                )
                for r in rows
            ]
        return found

    def pending_dead_letters(self, limit: int) -> list[tuple[int, OutboxLetter]]:
        """Up to ``limit`` outbox letters not yet sent, oldest first, with their ids."""
        rows = self._select(
            SQL(f"SELECT id, {_OUTBOX_FIELDS} FROM {{}}.ledger_outbox ORDER BY id LIMIT %s"),
            [limit],
        )
        return [(r["id"], _letter(r)) for r in rows]

    def remove_dead_letters(self, ids: Sequence[int]) -> None:
        """Forget outbox letters the dead-letter topic acknowledged."""
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(
                SQL("DELETE FROM {}.ledger_outbox WHERE id = ANY(%s)").format(self._schema),
                [list(ids)],
            )

    def reset_positions(self, source: str) -> int:
        """Forget every stored position of ``source``; how many partitions had one."""
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(
                SQL("DELETE FROM {}.ledger_positions WHERE source=%s").format(self._schema),
                [source],
            )
            return int(curs.rowcount)

    def existing_ids(self, originator_ids: Sequence[UUID]) -> set[UUID]:
        """The subset of ``originator_ids`` that have stored events."""
        found: set[UUID] = set()
        for chunk in _chunks(originator_ids):
            rows = self._select(
                SQL("SELECT DISTINCT originator_id FROM {}.{events} WHERE originator_id = ANY(%s)"),
                [list(chunk)],
            )
            found.update(row["originator_id"] for row in rows)
        return found

    def positions(self, source: str) -> dict[int, int]:
        """Partition -> next offset stored for ``source``."""
        rows = self._select(
            SQL("SELECT partition, next_offset FROM {}.ledger_positions WHERE source=%s"),
            [source],
        )
        return {row["partition"]: row["next_offset"] for row in rows}

    def select_log(self, after: int, limit: int) -> list[tuple[Any, ...]]:
        """(position, originator id, version, topic, state) of up to ``limit`` notifications
        after ``after``: the notification log without building library objects."""
        rows = self._select(
            SQL(
                "SELECT notification_id, originator_id, originator_version, topic, state "
                "FROM {}.{events} WHERE notification_id>%s ORDER BY notification_id LIMIT %s"
            ),
            [after, limit],
        )
        return [tuple(row.values()) for row in rows]

    def select_stream(self, originator_id: UUID) -> list[tuple[Any, ...]]:
        """(0, originator id, version, topic, state) of one stream's events, in order."""
        rows = self._select(
            SQL(
                "SELECT 0 AS position, originator_id, originator_version, topic, state "
                "FROM {}.{events} WHERE originator_id=%s ORDER BY originator_version"
            ),
            [originator_id],
        )
        return [tuple(row.values()) for row in rows]

    def count_receipts(self) -> int:
        """How many distinct events the ledger holds."""
        rows = self._select(SQL("SELECT COUNT(*) AS n FROM {}.ledger_receipts"), [])
        return int(rows[0]["n"])


#: The outbox of dead letters: messages refused in a batch, kept until the DLQ has them.
_OUTBOX_FIELDS = (
    "source_topic, source_partition, source_offset, message_key, message_value, "
    "error_class, error_message, refused_at"
)
_OUTBOX_COLUMNS = (
    "{id}, source_topic TEXT NOT NULL, source_partition INTEGER NOT NULL, "
    "source_offset BIGINT NOT NULL, message_key BLOB, message_value BLOB, "
    "error_class TEXT NOT NULL, error_message TEXT NOT NULL, refused_at TEXT NOT NULL"
)
_SQLITE_ID = "id INTEGER PRIMARY KEY AUTOINCREMENT"


def _letter(row: Any) -> OutboxLetter:
    return OutboxLetter(
        row["source_topic"],
        row["source_partition"],
        row["source_offset"],
        None if row["message_key"] is None else bytes(row["message_key"]),
        None if row["message_value"] is None else bytes(row["message_value"]),
        row["error_class"],
        row["error_message"],
        row["refused_at"],
    )


#: PRAGMA application_id of the ledger's SQLite files ("CRML"), so that the ledger never
#: writes into a file some other program made.
SQLITE_APPLICATION_ID = 0x43524D4C


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


def check_postgres_ledger(url: str, schema: str) -> None:
    """Raise StoreUnavailable unless ``schema`` holds a ledger."""
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            found = conn.execute(
                "SELECT 1 FROM information_schema.tables "
                "WHERE table_schema=%s AND table_name='ledger_receipts'",
                [schema],
            ).fetchone()
    except psycopg.OperationalError as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StoreUnavailable(f"cannot reach PostgreSQL at {_redact(url)}: {first_line}") from None
    if found is None:
        msg = f"no ledger in schema {schema!r} at {_redact(url)}; run `crm-ledger init`"
        raise StoreUnavailable(msg)


def sqlite_env(db_path: str) -> dict[str, str]:
    """eventsourcing settings for the ledger's SQLite file."""
    return {
        "PERSISTENCE_MODULE": "eventsourcing.sqlite",
        "SQLITE_DBNAME": db_path,
        "SQLITE_LOCK_TIMEOUT": "30",
        "APPLICATION_RECORDER_TOPIC": f"{__name__}:LedgerSQLiteRecorder",
        "MAPPER_TOPIC": f"{__name__}:LedgerMapper",
    }


def postgres_env(url: str, schema: str = "public") -> dict[str, str]:
    """eventsourcing settings for a PostgreSQL URL; creates ``schema`` if it is missing."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres") or not parts.path.strip("/"):
        msg = f"database URL must look like postgresql://user@host:5432/dbname, got {url!r}"
        raise ConfigurationError(msg)
    env = {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": unquote(parts.path.strip("/")),
        "POSTGRES_HOST": parts.hostname or "127.0.0.1",
        "POSTGRES_PORT": str(parts.port or 5432),
        "POSTGRES_USER": unquote(parts.username or "postgres"),
        "POSTGRES_PASSWORD": unquote(parts.password or ""),
        "POSTGRES_SCHEMA": schema,
        "POSTGRES_CONNECT_TIMEOUT": "10",
        "APPLICATION_RECORDER_TOPIC": f"{__name__}:LedgerPostgresRecorder",
        "MAPPER_TOPIC": f"{__name__}:LedgerMapper",
    }
    _create_schema(url, schema)
    return env


def _create_schema(url: str, schema: str) -> None:
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(SQL("CREATE SCHEMA IF NOT EXISTS {}").format(Identifier(schema)))
    except psycopg.OperationalError as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        msg = f"cannot reach PostgreSQL at {_redact(url)}: {first_line}"
        raise StoreUnavailable(msg) from None


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url


def drop_postgres_schema(url: str, schema: str) -> None:
    """Remove a schema and everything in it (used to clean up test stores)."""
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        conn.execute(SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(Identifier(schema)))


class LedgerMapper(Mapper[UUID]):
    """Stores touchpoint events as compact JSON (orjson), restoring their typed fields.

    eventsourcing's JSON transcoder tags every UUID and datetime and encodes through a Python
    hook, which dominated the write path. Touchpoint events have exactly three typed envelope
    fields, so they are written plainly and typed again on reading. Every other event
    (aggregate creation, snapshots) keeps eventsourcing's own format, and touchpoint events in
    that format are read too.
    """

    #: Set by the Ledger to its recorder's data keys; personal fields are sealed with them.
    data_keys: DataKeys | None = None
    #: Set by the Ledger: the secret (kept outside the database) that seals snapshots.
    snapshot_key: bytes | None = None

    def to_stored_event(self, domain_event: DomainEventProtocol[UUID]) -> StoredEvent:
        """The stored form of ``domain_event``, its personal fields sealed."""
        if not isinstance(domain_event, Touched):
            if isinstance(domain_event, Snapshot):
                if _is_customer(domain_event.topic):
                    domain_event = self._sealed_snapshot(domain_event)
                return self._with_seal(super().to_stored_event(domain_event))
            return super().to_stored_event(domain_event)
        state = dict(vars(domain_event))
        personal = PERSONAL_FIELDS.get(type(domain_event).__name__)
        if personal and self.data_keys is not None:
            stream = _sealing_stream(state, domain_event.originator_id)
            # Version 2 follows only the stream's opening, which has no personal data (an
            # event routed here is sealed with its sender's key, which may well exist).
            fresh = (
                domain_event.originator_version == 2 and stream == domain_event.originator_id.bytes
            )
            for name in personal:
                if state[name] is not None:
                    state[name] = self.data_keys.seal(stream, name, state[name], fresh=fresh)
        originator_id = state.pop("originator_id")
        originator_version = state.pop("originator_version")
        class_version = getattr(type(domain_event), "class_version", 1)
        if class_version > 1:
            state["class_version"] = class_version
        return StoredEvent(
            originator_id=originator_id,
            originator_version=originator_version,
            topic=_topic(type(domain_event)),
            state=orjson.dumps(state),
        )

    def to_domain_event(self, stored_event: StoredEvent) -> DomainEventProtocol[UUID]:
        """The domain event of ``stored_event``."""
        cls = resolve_topic(stored_event.topic)
        if isinstance(cls, type) and issubclass(cls, Snapshot):
            stored_event = self._unsealed(stored_event)
        if not (isinstance(cls, type) and issubclass(cls, Touched)):
            found = super().to_domain_event(stored_event)
            if isinstance(found, Snapshot) and _is_customer(found.topic):
                return cast("DomainEventProtocol[UUID]", self._opened_snapshot(found))
            return found
        state = orjson.loads(stored_event.state)
        personal = PERSONAL_FIELDS.get(cls.__name__)
        if personal and self.data_keys is not None:
            stream = _sealing_stream(state, stored_event.originator_id)
            for name in personal:
                state[name] = self.data_keys.open(stream, name, state.get(name))
        for name, convert in _TYPED_FIELDS.items():
            state[name] = _typed(state[name], convert)
        state["originator_id"] = _as_uuid(stored_event.originator_id)
        state["originator_version"] = stored_event.originator_version
        from_version = state.pop("class_version", 1)
        while from_version < getattr(cls, "class_version", 1):
            getattr(cls, f"upcast_v{from_version}_v{from_version + 1}")(state)
            from_version += 1
        event = object.__new__(cls)
        object.__setattr__(event, "__dict__", state)
        return cast("DomainEventProtocol[UUID]", event)

    def _seal_of(self, stream: UUID | str, version: int, topic: str, state: bytes) -> bytes:
        if self.snapshot_key is None:
            msg = "no snapshot key: the Ledger sets one"
            raise UntrustedSnapshot(msg)
        message = b"".join(
            (_as_uuid(stream).bytes, version.to_bytes(8, "big"), topic.encode(), b"\x00", state)
        )
        return hmac.digest(self.snapshot_key, message, hashlib.sha256)

    def _with_seal(self, stored: StoredEvent) -> StoredEvent:
        """A stored snapshot with an HMAC over its stream, version, topic and state in front:
        whoever can rewrite the database's rows cannot make a snapshot the ledger trusts."""
        seal = self._seal_of(
            stored.originator_id, stored.originator_version, stored.topic, stored.state
        )
        return StoredEvent(
            stored.originator_id,
            stored.originator_version,
            stored.topic,
            SNAPSHOT_SEAL + seal + stored.state,
        )

    def snapshot_trusted(self, stream: bytes, version: int, topic: str, state: bytes) -> bool:
        """Whether a stored snapshot's seal matches its content (the auditor asks this)."""
        try:
            self._unsealed(StoredEvent(UUID(bytes=stream), version, topic, state))
        except UntrustedSnapshot:
            return False
        return True

    def _unsealed(self, stored: StoredEvent) -> StoredEvent:
        """The stored snapshot without its seal; UntrustedSnapshot if the seal is wrong."""
        state = bytes(stored.state)
        size = len(SNAPSHOT_SEAL) + 32
        if not state.startswith(SNAPSHOT_SEAL) or len(state) < size:
            msg = f"snapshot of {stored.originator_id} at {stored.originator_version} is unsealed"
            raise UntrustedSnapshot(msg)
        inner = state[size:]
        expected = self._seal_of(
            stored.originator_id, stored.originator_version, stored.topic, inner
        )
        if not hmac.compare_digest(expected, state[len(SNAPSHOT_SEAL) : size]):
            msg = f"snapshot of {stored.originator_id} at {stored.originator_version} was altered"
            raise UntrustedSnapshot(msg)
        return StoredEvent(stored.originator_id, stored.originator_version, stored.topic, inner)

    def _sealed_snapshot(self, snapshot: Any) -> Any:
        """A copy of a Customer snapshot with its personal data sealed."""
        return self._snapshot_with(snapshot, self._seal_value)

    def _opened_snapshot(self, snapshot: Any) -> Any:
        """A copy of a stored Customer snapshot with its personal data opened."""
        return self._snapshot_with(snapshot, self._open_value)

    def _snapshot_with(self, snapshot: Any, change: Any) -> Any:
        if self.data_keys is None:
            return snapshot
        stream = snapshot.originator_id.bytes
        state = dict(snapshot.state)
        state["profile"] = {
            k: change(stream, k, v) if k in PERSONAL_PROFILE and v is not None else v
            for k, v in state.get("profile", {}).items()
        }
        state["identities"] = [
            [system, change(stream, "identity", value)]
            for system, value in state.get("identities", [])
        ]
        copy = object.__new__(type(snapshot))
        object.__setattr__(copy, "__dict__", {**vars(snapshot), "state": state})
        return copy

    def _seal_value(self, stream: bytes, name: str, value: Any) -> Any:
        assert self.data_keys is not None  # checked by the caller
        return self.data_keys.seal(stream, name, value) if value is not None else None

    def _open_value(self, stream: bytes, name: str, value: Any) -> Any:
        assert self.data_keys is not None  # checked by the caller
        return self.data_keys.open(stream, name, value)

    def to_record(
        self, position: int, originator_id: UUID | str, version: int, topic: str, state: bytes
    ) -> LogRecord | None:
        """A stored event as a projection reads it: customer events only, plain values."""
        kind = _customer_kind(topic)
        if kind is None:
            return None
        stream = originator_id.hex if isinstance(originator_id, UUID) else originator_id
        if kind == OPENED:
            return self._record_of_domain_event(position, stream, version, topic, state)
        values = orjson.loads(state)
        if type(values["timestamp"]) is not str:  # eventsourcing's own (tagged) format
            return self._record_of_domain_event(position, stream, version, topic, state)
        return LogRecord(
            position,
            stream,
            version,
            kind,
            _micros_of(values.pop("timestamp")),
            _micros(datetime.fromisoformat(values.pop("occurred_at"))),
            values.pop("event_id"),
            values,
        )

    def _record_of_domain_event(
        self, position: int, stream: str, version: int, topic: str, state: bytes
    ) -> LogRecord:
        stored = StoredEvent(UUID(stream), version, topic, state)
        event = cast("Any", self.to_domain_event(stored))
        if isinstance(event, Customer.Opened):
            data = {"customer_id": event.customer_id}
            return LogRecord(
                position, stream, version, OPENED, _micros(event.timestamp), None, None, data
            )
        values = {**own_fields(event), **{n: getattr(event, n) for n in _ENVELOPE_REST}}
        return LogRecord(
            position,
            stream,
            version,
            type(event).__name__,
            _micros(event.timestamp),
            _micros(event.occurred_at),
            str(event.event_id),
            values,
        )


OPENED = "Opened"

#: Marks a sealed snapshot's stored state (an HMAC-SHA256 follows, then the state).
SNAPSHOT_SEAL = b"mac1"

#: Profile fields of the Customer aggregate that hold personal data (sealed in snapshots).
PERSONAL_PROFILE = frozenset(PERSONAL_FIELDS["CustomerRegistered"])


def _sealing_stream(state: dict[str, Any], originator_id: UUID | str) -> bytes:
    """Whose data key seals an event's personal fields: the customer it was sent for. An
    event routed to a merge survivor keeps its sender's key, so that erasing either customer
    destroys exactly the personal data that belongs to them."""
    sender = state.get("addressed_to")
    if sender:
        return customer_uuid(sender).bytes
    return _as_uuid(originator_id).bytes


def _is_customer(aggregate_topic: str) -> bool:
    return aggregate_topic.endswith(":Customer")


_ENVELOPE_REST = ("source", "actor", "correlation_id", "addressed_to")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // _MICROSECOND


@lru_cache(maxsize=64)
def _micros_of(text: str) -> int:
    """A recorded time: one per transaction, so the same text comes many times in a row."""
    return _micros(datetime.fromisoformat(text))


@cache
def _customer_kind(topic: str) -> str | None:
    """The event class name for a Customer stream's event topic; None for anything else."""
    cls = resolve_topic(topic)
    if not (isinstance(cls, type) and cls.__qualname__.startswith("Customer.")):
        return None
    if issubclass(cls, Touched) or cls is Customer.Opened:
        return cls.__name__
    return None


def _as_uuid(value: UUID | str) -> UUID:
    return value if isinstance(value, UUID) else UUID(value)


def _typed(value: Any, convert: Any) -> Any:
    if isinstance(value, dict):  # eventsourcing's tagged form {"_type_": ..., "_data_": ...}
        value = value["_data_"]
    return convert(value)


_TYPED_FIELDS = {
    "event_id": UUID,
    "occurred_at": datetime.fromisoformat,
    "timestamp": datetime.fromisoformat,
}


@cache
def _topic(cls: type) -> str:
    return get_topic(cls)
