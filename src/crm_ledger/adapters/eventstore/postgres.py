"""The PostgreSQL event store: eventsourcing's recorder plus the ledger's receipts, positions,
hash chain, data keys, checkpoints and outbox, written in the same transaction as the events.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast
from urllib.parse import SplitResult, unquote, urlsplit
from uuid import UUID

import psycopg
from eventsourcing.postgres import PostgresApplicationRecorder
from eventsourcing.utils import get_topic
from psycopg.sql import SQL, Composed, Identifier, Literal

from crm_ledger.adapters.eventstore.mapper import LedgerMapper
from crm_ledger.adapters.eventstore.pg_tables import (
    EVENTS_TABLE,
    INSERT_EVENTS,
    INSERT_LETTER,
    INSERT_RECEIPTS,
    LEDGER_TABLES,
    MOVE_CHAIN,
    UPSERT_POSITION,
    insert_columns,
)
from crm_ledger.adapters.eventstore.pg_writer import PostgresBackground, run_statements
from crm_ledger.adapters.eventstore.recording import (
    HEADS_QUERY,
    OUTBOX_FIELDS,
    LedgerRecording,
    as_bytes,
    chunks,
    outbox_letter,
    stream_bytes,
)
from crm_ledger.application import OutboxLetter, StoredCopy, batch_records
from crm_ledger.audit import (
    ChainLink,
    Checkpoint,
    StoredRecord,
)
from crm_ledger.errors import ConfigurationError, StoreUnavailable

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from datetime import datetime

    from eventsourcing.persistence import StoredEvent
    from eventsourcing.postgres import PostgresDatastore
    from psycopg import Cursor
    from psycopg.rows import DictRow


class LedgerPostgresRecorder(PostgresBackground, LedgerRecording, PostgresApplicationRecorder):
    """PostgreSQL recorder that also writes receipts and positions with the events."""

    def __init__(self, datastore: PostgresDatastore, *, events_table_name: str = "stored_events"):
        super().__init__(datastore, events_table_name=events_table_name)
        schema = Identifier(self.datastore.schema)
        self._schema = schema
        self._events = SQL("{}.{}").format(schema, Identifier(self.events_table_name))
        self.sql_create_statements[self.create_table_statement_index] = EVENTS_TABLE.format(
            self._events
        )
        self.sql_create_statements += [statement.format(schema) for statement in LEDGER_TABLES]
        self._insert_hashed = INSERT_EVENTS.format(self._events)
        self._insert_receipts = INSERT_RECEIPTS.format(schema)
        self._upsert_position = UPSERT_POSITION.format(schema)
        self._insert_letter = INSERT_LETTER.format(schema)

    def _insert_events(
        self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> None:
        super()._insert_events(curs, stored_events, **kwargs)
        # Receipts and keys go in one unnest statement per table and batch:
        # executemany sent a statement per row, a third of an append's time.
        run_statements(curs, self.record_statements(batch_records(kwargs)))

    def _insert_stored_events(
        self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> None:
        """The events with their content and chain hashes, in one statement (after
        eventsourcing's table lock, so the heads read are the ones the events follow)."""
        self._lock_table(curs)
        self._notify_channel(curs)
        links = self._chain(curs, stored_events)
        insert_columns(curs, self._insert_hashed, self.event_rows(stored_events, links))

    def _fetch_ids_after_insert_events(
        self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        return None  # the ledger does not use notification ids at append time

    def _create_table(self, curs: Cursor[DictRow]) -> None:
        # Workers starting together would otherwise race to create the same tables, and
        # PostgreSQL refuses one with "tuple concurrently updated".
        curs.execute("SELECT pg_advisory_xact_lock(hashtext('crm-ledger schema'))")
        super()._create_table(curs)
        curs.execute(
            SQL("SELECT to_regclass({})").format(Literal(f"{self.datastore.schema}.ledger_chain"))
        )
        if cast("DictRow", curs.fetchone())["to_regclass"] is not None:
            self._move_chain_into_events(curs)

    def _move_chain_into_events(self, curs: Cursor[DictRow]) -> None:
        """Move a ledger's hash chain from its own table (the layout before the chain became
        columns of the events table) into the events rows, in the same transaction."""
        for statement in MOVE_CHAIN:
            curs.execute(statement.format(events=self._events, schema=self._schema))

    def _chain(
        self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent]
    ) -> list[tuple[bytes, int, bytes, bytes]]:
        """Each event's (stream, version, content hash, chain hash)."""
        streams = [stream_bytes(s.originator_id) for s in stored_events]
        wanted = self.heads.missing(streams, stored_events)
        found: dict[bytes, tuple[int, bytes]] = {}
        if wanted:
            curs.execute(
                SQL(
                    "SELECT originator_id, originator_version, chain_hash FROM {} "
                    "WHERE (originator_id, originator_version) IN "
                    "(SELECT * FROM unnest(%s::uuid[], %s::bigint[]))"
                ).format(self._events),
                [[UUID(bytes=w) for w in wanted], list(wanted.values())],
            )
            found = {
                r["originator_id"].bytes: (r["originator_version"], bytes(r["chain_hash"]))
                for r in curs.fetchall()
            }
        return self.heads.chain(streams, stored_events, found)

    def load_key(self, stream: bytes) -> bytes | None:
        """The stream's data key; None if it has none or it was destroyed."""
        rows = self._select(
            SQL("SELECT data_key FROM {}.ledger_keys WHERE originator_id=%s"), [stream]
        )
        key = rows[0]["data_key"] if rows else None
        return bytes(key) if key is not None else None

    def load_keys(self, streams: list[bytes]) -> dict[bytes, bytes]:
        """Stream -> stored data key of those of ``streams`` that have a live one."""
        rows = self._select(
            SQL(
                "SELECT originator_id, data_key FROM {}.ledger_keys "
                "WHERE originator_id = ANY(%b::bytea[]) AND data_key IS NOT NULL"
            ),
            [streams],
        )
        return {bytes(r["originator_id"]): bytes(r["data_key"]) for r in rows}

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
        query = SQL("{} ORDER BY originator_id, originator_version").format(self._links_query)
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(query)
            while rows := curs.fetchmany(10_000):
                for r in rows:
                    yield ChainLink(
                        r["originator_id"].bytes,
                        r["originator_version"],
                        bytes(r["content_hash"]),
                        bytes(r["chain_hash"]),
                    )

    def stream_chain(self, stream: bytes) -> list[ChainLink]:
        """One stream's chain rows, in version order."""
        query = SQL("{} AND originator_id=%s ORDER BY originator_version").format(self._links_query)
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(query, [UUID(bytes=stream)])
            rows = curs.fetchall()
        return [
            ChainLink(
                stream, r["originator_version"], bytes(r["content_hash"]), bytes(r["chain_hash"])
            )
            for r in rows
        ]

    @property
    def _links_query(self) -> SQL | Composed:
        """(stream, version, content hash, chain hash) of every event that has them."""
        return SQL(
            "SELECT originator_id, originator_version, content_hash, chain_hash FROM {} "
            "WHERE chain_hash IS NOT NULL"
        ).format(self._events)

    def chain_heads(self) -> list[tuple[bytes, int, bytes]]:
        """(stream, version, chain hash) of every stream's newest event."""
        query = SQL(HEADS_QUERY.format(events="{events}")).format(events=self._events)
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(query)
            rows = curs.fetchall()
        return [
            (r["originator_id"].bytes, r["originator_version"], bytes(r["chain_hash"]))
            for r in rows
        ]

    def orphan_receipts(self) -> list[tuple[bytes, int]]:
        """(stream, version) of every receipt whose event is no longer stored."""
        rows = self._select(
            SQL(
                "SELECT r.originator_id, r.originator_version FROM {0}.ledger_receipts r "
                "WHERE NOT EXISTS (SELECT 1 FROM {0}.{events} e WHERE e.originator_id = "
                "r.originator_id AND e.originator_version = r.originator_version)"
            ),
            [],
        )
        return sorted((r["originator_id"].bytes, r["originator_version"]) for r in rows)

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
                r["originator_id"].bytes, r["originator_version"], r["topic"], as_bytes(r["state"])
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
        if not event_ids:
            return []
        query = SQL(
            "SELECT r.event_id, e.originator_id, e.originator_version, e.topic, e.state "
            "FROM {0}.ledger_receipts r JOIN {0}.{events} e "
            "ON e.originator_id = r.originator_id "
            "AND e.originator_version = r.originator_version "
            "WHERE r.event_id = ANY(%b::uuid[])"
        ).format(self._schema, events=Identifier(self.events_table_name))
        # One statement for the whole batch, its array sent in binary (a text array of
        # thousands of ids cost more to build than the look-up).
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(query, [list(event_ids)])
            rows = curs.fetchall()
        return [
            StoredCopy(
                r["event_id"],
                r["originator_id"],
                r["originator_version"],
                r["topic"],
                as_bytes(r["state"]),
            )
            for r in rows
        ]

    def pending_dead_letters(self, limit: int) -> list[tuple[int, OutboxLetter]]:
        """Up to ``limit`` outbox letters not yet sent, oldest first, with their ids."""
        rows = self._select(
            SQL(f"SELECT id, {OUTBOX_FIELDS} FROM {{}}.ledger_outbox ORDER BY id LIMIT %s"),
            [limit],
        )
        return [(r["id"], outbox_letter(r)) for r in rows]

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
        for chunk in chunks(originator_ids):
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


def check_postgres_ledger(url: str, schema: str) -> None:
    """Raise StoreUnavailable unless ``schema`` holds a ledger."""
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            # pg_tables lists every table, information_schema only those the role may use.
            found = conn.execute(
                "SELECT 1 FROM pg_tables WHERE schemaname=%s AND tablename='ledger_receipts'",
                [schema],
            ).fetchone()
    except psycopg.OperationalError as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StoreUnavailable(f"cannot reach PostgreSQL at {_redact(url)}: {first_line}") from None
    if found is None:
        msg = f"no ledger in schema {schema!r} at {_redact(url)}; run `crm-ledger init`"
        raise StoreUnavailable(msg)


def check_url(url: str) -> SplitResult:
    """``url``'s parts, or a ConfigurationError unless it names a PostgreSQL database."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres") or not parts.path.strip("/"):
        msg = f"database URL must look like postgresql://user@host:5432/dbname, got {url!r}"
        raise ConfigurationError(msg)
    return parts


def postgres_env(url: str, schema: str = "public") -> dict[str, str]:
    """eventsourcing settings for a PostgreSQL URL; creates ``schema`` if it is missing."""
    parts = check_url(url)
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
        "MAPPER_TOPIC": get_topic(LedgerMapper),
    }
    # A role without DDL in the schema (the writer or reader of `db grant`) leaves the
    # tables as the owner made them.
    env["CREATE_TABLE"] = "yes" if _create_schema(url, schema) else "no"
    return env


def _create_schema(url: str, schema: str) -> bool:
    """Create ``schema`` if it is missing; whether the connected role may create in it."""
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            row = conn.execute(
                "SELECT has_schema_privilege(current_user, oid, 'CREATE') "
                "FROM pg_namespace WHERE nspname=%s",
                [schema],
            ).fetchone()
            if row is not None:
                return bool(row[0])
            conn.execute(SQL("CREATE SCHEMA IF NOT EXISTS {}").format(Identifier(schema)))
            return True
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
