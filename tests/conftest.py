"""Fixtures: a ledger on each real store, the codec, and the CLI runner."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from click.testing import CliRunner

from crm_ledger.adapters.avro import Codec, SchemaRegistry
from crm_ledger.adapters.eventstore import (
    drop_postgres_schema,
    memory_env,
    postgres_env,
    sqlite_env,
)
from crm_ledger.application import Ledger

if TYPE_CHECKING:
    from collections.abc import Iterator

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = ROOT / "schemas"
PG_URL_VAR = "CRM_LEDGER_TEST_DATABASE_URL"
STORES = ["sqlite", "postgres"]
#: The ledger's contract also holds for the in-memory store the services' unit tests use
#: (tests that reopen a store or read its files take ``store_env``: real stores only).
LEDGER_STORES = ["memory", *STORES]


@pytest.fixture(scope="session")
def pg_url() -> str:
    """The PostgreSQL server `make test` starts; its absence is a failure, never a skip."""
    url = os.environ.get(PG_URL_VAR)
    if not url:
        pytest.fail(
            f"{PG_URL_VAR} is not set: run the suite with `make test`, which starts a real "
            "PostgreSQL server (scripts/pg_test_server.sh start prints its URL)."
        )
    return url


@pytest.fixture
def pg_schema(pg_url: str) -> Iterator[str]:
    """A fresh PostgreSQL schema for one test, dropped afterwards."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    yield schema
    drop_postgres_schema(pg_url, schema)


@pytest.fixture(params=STORES)
def store_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """eventsourcing settings for an empty store of each kind."""
    if request.param == "sqlite":
        return sqlite_env(str(tmp_path / "ledger.sqlite"))
    url = request.getfixturevalue("pg_url")
    schema = request.getfixturevalue("pg_schema")
    return postgres_env(url, schema)


@pytest.fixture
def ledger(store_env: dict[str, str]) -> Iterator[Ledger]:
    """A Ledger on an empty store (SQLite, then PostgreSQL)."""
    with Ledger(store_env) as app:
        yield app


@pytest.fixture(params=LEDGER_STORES)
def any_ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    """A Ledger on an empty store: in memory, SQLite, then PostgreSQL."""
    if request.param == "memory":
        env = memory_env()
    elif request.param == "sqlite":
        env = sqlite_env(str(tmp_path / "ledger.sqlite"))
    else:
        env = postgres_env(request.getfixturevalue("pg_url"), request.getfixturevalue("pg_schema"))
    with Ledger(env) as app:
        yield app


@pytest.fixture(scope="session")
def codec() -> Codec:
    """The codec over the project's schema registry."""
    return Codec(SchemaRegistry(SCHEMAS))


@pytest.fixture
def runner() -> CliRunner:
    """Runs the CLI in-process."""
    return CliRunner()
