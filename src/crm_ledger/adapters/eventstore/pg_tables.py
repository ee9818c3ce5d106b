"""The PostgreSQL event store's tables and the statements that write them (``{}`` is the
schema; ``EVENTS_TABLE`` and ``INSERT_EVENTS`` take the events table itself)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from psycopg.sql import SQL

from crm_ledger.adapters.eventstore.recording import OUTBOX_COLUMNS, OUTBOX_FIELDS

if TYPE_CHECKING:
    from collections.abc import Sequence

    from psycopg import Cursor
    from psycopg.rows import DictRow

#: eventsourcing's events table with the hash chain as two more columns: the chain lives in
#: the events' own order, not in a second table keyed by stream (whose random inserts made
#: an append's cost grow with the ledger).
EVENTS_TABLE = SQL(
    "CREATE TABLE IF NOT EXISTS {} (originator_id uuid NOT NULL, "
    "originator_version bigint NOT NULL, topic text, state bytea, "
    "notification_id bigserial, content_hash bytea NOT NULL, "
    "chain_hash bytea NOT NULL, PRIMARY KEY (originator_id, originator_version)) "
    "WITH (autovacuum_enabled = true, autovacuum_vacuum_threshold = 100000000, "
    "autovacuum_vacuum_scale_factor = 0.5, autovacuum_analyze_threshold = 1000, "
    "autovacuum_analyze_scale_factor = 0.01)"
)

#: The ledger's own tables.
LEDGER_TABLES = [
    SQL(statement)
    for statement in (
        "CREATE TABLE IF NOT EXISTS {}.ledger_receipts (event_id uuid PRIMARY KEY, "
        "originator_id uuid NOT NULL, originator_version bigint NOT NULL)",
        "CREATE TABLE IF NOT EXISTS {}.ledger_positions (source text NOT NULL, "
        "partition integer NOT NULL, next_offset bigint NOT NULL, "
        "PRIMARY KEY (source, partition))",
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
        # The outbox of dead letters: messages refused in a batch, kept until the DLQ has them.
        "CREATE TABLE IF NOT EXISTS {}.ledger_outbox ("
        + OUTBOX_COLUMNS.format(id="id bigserial PRIMARY KEY").replace("BLOB", "bytea")
        + ")",
    )
]

# One unnest statement per table and batch: executemany sent a statement per row, a third
# of an append's time.
INSERT_EVENTS = SQL(
    "INSERT INTO {} (originator_id, originator_version, topic, state, content_hash, "
    "chain_hash) SELECT * FROM unnest(%b::uuid[], %b::bigint[], %b::text[], "
    "%b::bytea[], %b::bytea[], %b::bytea[])"
)
INSERT_RECEIPTS = SQL(
    "INSERT INTO {}.ledger_receipts SELECT * FROM unnest(%b::uuid[], %b::uuid[], %b::bigint[])"
)
INSERT_KEYS = SQL(
    "INSERT INTO {}.ledger_keys SELECT k.o, k.d, NULL "
    "FROM unnest(%b::bytea[], %b::bytea[]) AS k(o, d)"
)
#: A batch's snapshots, committed in the background with it ({} {}: schema, snapshots table).
INSERT_SNAPSHOTS = SQL(
    "INSERT INTO {}.{} (originator_id, originator_version, topic, state) "
    "SELECT * FROM unnest(%b::uuid[], %b::bigint[], %b::text[], %b::bytea[])"
)
UPSERT_POSITION = SQL(
    "INSERT INTO {}.ledger_positions AS p VALUES (%s,%s,%s) "
    "ON CONFLICT (source, partition) "
    "DO UPDATE SET next_offset = GREATEST(p.next_offset, excluded.next_offset)"
)
INSERT_LETTER = SQL(
    f"INSERT INTO {{}}.ledger_outbox ({OUTBOX_FIELDS}) VALUES (%s,%s,%s,%s,%s,%s,%s,%s)"
)

#: Moves a ledger's hash chain from its own table (the layout before the chain became
#: columns of the events table) into the events rows.
MOVE_CHAIN = [
    SQL(statement)
    for statement in (
        "ALTER TABLE {events} ADD COLUMN IF NOT EXISTS content_hash bytea, "
        "ADD COLUMN IF NOT EXISTS chain_hash bytea",
        # db grant's append-only trigger refuses the one UPDATE this move needs
        "ALTER TABLE {events} DISABLE TRIGGER USER",
        "UPDATE {events} e SET content_hash = l.content_hash, chain_hash = l.chain_hash "
        "FROM {schema}.ledger_chain l WHERE l.originator_id = uuid_send(e.originator_id) "
        "AND l.originator_version = e.originator_version",
        "ALTER TABLE {events} ENABLE TRIGGER USER",
        "DROP TABLE {schema}.ledger_chain",
    )
]


def insert_columns(curs: Cursor[DictRow], statement: Any, rows: Sequence[Sequence[Any]]) -> None:
    """Run an ``unnest`` INSERT with ``rows`` passed as one array per column (nothing if
    there are no rows). The statements take them in binary (``%b``): psycopg builds text
    arrays in Python, escaping every byte string to hex, which took a third of an append's
    time."""
    if rows:
        curs.execute(statement, [list(column) for column in zip(*rows, strict=True)])
