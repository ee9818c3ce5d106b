"""Event store recorders: eventsourcing's SQLite and PostgreSQL recorders, plus the ledger's
receipts (the permanent event_id dedup table), source positions, hash chain, data keys,
checkpoints and outbox, written in the same transaction as the events they describe.

One module each for what the stores share (``recording``), SQLite, PostgreSQL, an in-memory
store for tests (``memory``) and the mapper,
as eventsourcing lays out its own persistence modules.
"""

from crm_ledger.adapters.eventstore.mapper import LedgerMapper
from crm_ledger.adapters.eventstore.memory import LedgerMemoryRecorder, memory_env
from crm_ledger.adapters.eventstore.postgres import (
    LedgerPostgresRecorder,
    check_postgres_ledger,
    drop_postgres_schema,
    postgres_env,
)
from crm_ledger.adapters.eventstore.sqlite import LedgerSQLiteRecorder, claim_sqlite, sqlite_env

__all__ = [
    "LedgerMapper",
    "LedgerMemoryRecorder",
    "LedgerPostgresRecorder",
    "LedgerSQLiteRecorder",
    "check_postgres_ledger",
    "claim_sqlite",
    "drop_postgres_schema",
    "memory_env",
    "postgres_env",
    "sqlite_env",
]
