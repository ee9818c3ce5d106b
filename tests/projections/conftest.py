"""Fixtures: the projection runtime over a ledger, on SQLite and on PostgreSQL."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from crm_ledger.adapters.sql import SqlProjectionStore, postgres_engine, sqlite_engine
from crm_ledger.projections.runtime import Projector
from crm_ledger.services.read_models import ReadModels

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from crm_ledger.application import Ledger
    from crm_ledger.projections.runtime import TableSet


@pytest.fixture
def projection_store(
    request: pytest.FixtureRequest, store_env: dict[str, str], tmp_path: Path
) -> Iterator[SqlProjectionStore]:
    """Read models beside the ledger: a file on SQLite, the same schema on PostgreSQL."""
    if "SQLITE_DBNAME" in store_env:
        engine = sqlite_engine(str(tmp_path / "projections.sqlite"))
        store = SqlProjectionStore(engine)
    else:  # postgres_env created the schema
        engine = postgres_engine(request.getfixturevalue("pg_url"))
        store = SqlProjectionStore(engine, schema=request.getfixturevalue("pg_schema"))
    yield store
    engine.dispose()


@pytest.fixture
def projector(ledger: Ledger, projection_store: SqlProjectionStore) -> Projector:
    """The projection runtime with small batches, so that tests cross batch boundaries."""
    return Projector(ledger, projection_store, batch_size=7)


@pytest.fixture
def models(
    ledger: Ledger, projector: Projector, projection_store: SqlProjectionStore
) -> ReadModels:
    """Queries over the read models."""
    return ReadModels(lambda: ledger, projector, projection_store)


def dump(
    store: SqlProjectionStore, projector: Projector, sets: dict[str, TableSet]
) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table of ``sets``, in key order, for comparing states."""
    found: dict[str, list[tuple[Any, ...]]] = {}
    for name, table_set in sets.items():
        for spec in projector.projections[name].tables:
            rows = store.all_rows(spec, table_set.label)
            found[spec.name] = sorted(tuple(r[c] for c in spec.names) for r in rows)
    return found
