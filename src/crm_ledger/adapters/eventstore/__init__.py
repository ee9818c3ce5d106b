"""Event store recorders: eventsourcing's SQLite and PostgreSQL recorders, plus the ledger's
receipts (the permanent event_id dedup table), source positions, hash chain, data keys,
checkpoints and outbox, written in the same transaction as the events they describe.

One module each for what the stores share (``recording``), SQLite, PostgreSQL, an in-memory
store for tests (``memory``) and the mapper,
as eventsourcing lays out its own persistence modules.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

#: Each name's module: a store's driver is imported only when that store is used.
_WHERE = {
    "LedgerMapper": "mapper",
    "LedgerMemoryRecorder": "memory",
    "memory_env": "memory",
    "LedgerPostgresRecorder": "postgres",
    "check_postgres_ledger": "postgres",
    "drop_postgres_schema": "postgres",
    "postgres_env": "postgres",
    "LedgerSQLiteRecorder": "sqlite",
    "claim_sqlite": "sqlite",
    "sqlite_env": "sqlite",
}

if TYPE_CHECKING:
    from crm_ledger.adapters.eventstore.mapper import LedgerMapper
    from crm_ledger.adapters.eventstore.memory import LedgerMemoryRecorder, memory_env
    from crm_ledger.adapters.eventstore.postgres import (
        LedgerPostgresRecorder,
        check_postgres_ledger,
        drop_postgres_schema,
        postgres_env,
    )
    from crm_ledger.adapters.eventstore.sqlite import (
        LedgerSQLiteRecorder,
        claim_sqlite,
        sqlite_env,
    )


def __getattr__(name: str) -> object:
    if name in _WHERE:
        module = importlib.import_module(f"crm_ledger.adapters.eventstore.{_WHERE[name]}")
        return getattr(module, name)
    raise AttributeError(name)


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
