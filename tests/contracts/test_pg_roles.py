"""Least privilege on the real PostgreSQL server: `crm-ledger db grant` on a ledger holding a
synthetic history, then a login in each group role tries what its role must not do (the role
matrix), and the CLI, connected as each login, does its job or refuses in one line."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from click.testing import CliRunner
from psycopg.sql import SQL, Identifier

from crm_ledger.adapters.eventstore import drop_postgres_schema
from crm_ledger.application import Ledger
from crm_ledger.application.access import ACCESS_STREAM
from crm_ledger.cli import cli
from tests.readme import examples, run_refusing, shell

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

EVENTS = "crmledger_events"
LOGINS = ("owner", "writer", "reader")


class Granted:
    """A ledger after `db grant`, and a login role in each group."""

    def __init__(self, url: str, schema: str, folder: Path) -> None:
        self.url, self.schema, self.folder = url, schema, folder
        self.prefix = f"r_{schema}"
        self.logins = {role: f"{self.prefix}_{role}_login" for role in LOGINS}

    def url_of(self, role: str) -> str:
        return self.url.replace("postgres@", f"{self.logins[role]}@", 1)

    def cli(self, role: str | None, *args: str) -> Any:
        url = self.url if role is None else self.url_of(role)
        common = ["--database-url", url, "--database-schema", self.schema]
        common += ["--data-dir", str(self.folder / "data")]
        return CliRunner().invoke(cli, [*common, *args], env={"CRM_LEDGER_CONSOLE_USER": None})

    def run(self, role: str, statement: str, *params: Any) -> list[Any]:
        """Run one statement as ``role``'s login (search_path set to the schema)."""
        with psycopg.connect(self.url_of(role), connect_timeout=10) as conn:
            conn.execute(SQL("SET search_path TO {}").format(Identifier(self.schema)))
            cursor = conn.execute(statement.encode(), params or None)
            return cursor.fetchall() if cursor.description else []

    def superuser(self, statement: str, *params: Any) -> list[Any]:
        with psycopg.connect(self.url, connect_timeout=10) as conn:
            conn.execute(SQL("SET search_path TO {}").format(Identifier(self.schema)))
            cursor = conn.execute(statement.encode(), params or None)
            return cursor.fetchall() if cursor.description else []


@pytest.fixture(scope="module")
def granted(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Granted]:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    g = Granted(pg_url, schema, tmp_path_factory.mktemp("roles"))
    history = g.folder / "history.jsonl"
    assert g.cli(None, "init").exit_code == 0
    assert g.cli(None, "generate", "--customers", "20", "--out", str(history)).exit_code == 0
    assert g.cli(None, "import", str(history)).exit_code == 0
    done = g.cli(None, "db", "grant", "--prefix", g.prefix)
    assert done.exit_code == 0, done.output
    for role, login in g.logins.items():
        group = f"{g.prefix}_{role}"
        g.superuser(f'CREATE ROLE "{login}" LOGIN IN ROLE "{group}"')
        if role == "owner":
            g.superuser(f"ALTER ROLE \"{login}\" SET role = '{group}'")
    yield g
    drop_postgres_schema(pg_url, schema)
    for role in LOGINS:
        g.superuser(f'DROP ROLE IF EXISTS "{g.logins[role]}"')
    for role in LOGINS:
        g.superuser(f'DROP OWNED BY "{g.prefix}_{role}"')
        g.superuser(f'DROP ROLE "{g.prefix}_{role}"')


# The role matrix: (role, statement, the words of the refusal).
CUSTOMER_ROW = (
    f"INSERT INTO {EVENTS} (originator_id, originator_version, topic, state) "
    "VALUES (gen_random_uuid(), 1, 'crm_ledger.aggregates.customer:Customer.Opened', '')"
)
REFUSED = [
    ("writer", f"UPDATE {EVENTS} SET state = state", "append-only"),
    ("writer", f"DELETE FROM {EVENTS}", "permission denied"),
    ("writer", f"TRUNCATE {EVENTS}", "permission denied"),
    ("writer", f"UPDATE {EVENTS} SET chain_hash = chain_hash", "append-only"),
    ("writer", "DELETE FROM ledger_receipts", "permission denied"),
    ("writer", "UPDATE ledger_keys SET data_key = NULL", "permission denied"),
    ("writer", "DELETE FROM ledger_keys", "permission denied"),
    ("writer", "DELETE FROM ledger_positions", "permission denied"),
    ("writer", "DELETE FROM ledger_checkpoints", "permission denied"),
    ("writer", "SELECT * FROM crm_projection_sets", "permission denied"),
    ("writer", "CREATE TABLE planted (a int)", "permission denied"),
    ("reader", "SELECT data_key FROM ledger_keys", "permission denied"),
    ("reader", f"SELECT state FROM {EVENTS}", "not customers' events"),
    ("reader", f"SELECT chain_hash FROM {EVENTS}", "not customers' events"),
    ("reader", "SELECT * FROM ledger_receipts", "permission denied"),
    ("reader", CUSTOMER_ROW, "row-level security"),
    ("reader", f"UPDATE {EVENTS} SET state = state", "append-only"),
    ("reader", f"DELETE FROM {EVENTS}", "permission denied"),
    ("reader", "DELETE FROM crm_projection_sets", "permission denied"),
    ("reader", "CREATE TABLE planted (a int)", "permission denied"),
    ("owner", f"UPDATE {EVENTS} SET state = state", "append-only"),
    ("owner", f"DELETE FROM {EVENTS}", "append-only"),
    ("owner", "TRUNCATE ledger_receipts", "append-only"),
    ("owner", f"UPDATE {EVENTS} SET chain_hash = content_hash", "append-only"),
    ("owner", "UPDATE ledger_checkpoints SET position = 0", "append-only"),
]


@pytest.mark.parametrize(
    ("role", "statement", "words"), REFUSED, ids=[f"{r}: {s[:40]}" for r, s, _ in REFUSED]
)
def test_each_role_is_refused_what_it_must_not_do(
    granted: Granted, role: str, statement: str, words: str
) -> None:
    before = granted.superuser(f"SELECT count(*) FROM {EVENTS}")
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as refused:
        granted.run(role, statement)
    assert words in str(refused.value)
    assert granted.superuser(f"SELECT count(*) FROM {EVENTS}") == before


def test_each_role_may_do_its_job(granted: Granted) -> None:
    """The other half of the matrix: what each role is for goes through."""
    assert granted.run("reader", "SELECT count(*) FROM crm_projection_sets")[0][0] > 0
    assert (
        granted.run(
            "reader", f"SELECT count(*) FROM {EVENTS} WHERE originator_id = %s", ACCESS_STREAM
        )
        is not None
    )
    assert granted.run("writer", "SELECT count(*) FROM ledger_keys")[0][0] > 0
    granted.run(
        "writer",
        "INSERT INTO ledger_positions VALUES ('orders', 0, 10) "
        "ON CONFLICT (source, partition) DO UPDATE SET next_offset = 10",
    )
    granted.run("writer", "UPDATE ledger_positions SET next_offset = 11 WHERE source='orders'")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="only move forward"):
        granted.run("writer", "UPDATE ledger_positions SET next_offset = 3 WHERE source='orders'")
    assert granted.superuser("SELECT next_offset FROM ledger_positions WHERE source='orders'") == [
        (11,)
    ]


def one_line_refusal(result: Any, role: str) -> str:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("crm-ledger: error: PostgreSQL refused role "), lines[0]
    assert role in lines[0]
    return lines[0]


def test_the_cli_acts_as_its_database_role(granted: Granted, tmp_path: Path) -> None:
    more = tmp_path / "more.jsonl"
    assert granted.cli(None, "generate", "--customers", "12", "--seed", "3", "--out", str(more))
    stored = granted.superuser("SELECT count(*) FROM ledger_receipts")[0][0]

    imported = granted.cli("writer", "import", str(more))
    assert granted.superuser("SELECT count(*) FROM ledger_receipts")[0][0] > stored, imported.output
    assert "writer" in one_line_refusal(
        granted.cli("writer", "erase", "C000004", "--reason", "x"), "writer"
    )
    one_line_refusal(granted.cli("writer", "customer", "show", "C000001"), "writer")
    one_line_refusal(granted.cli("writer", "audit", "checkpoint"), "writer")

    assert "not customers' events" in one_line_refusal(
        granted.cli("reader", "customer", "show", "C000001", "--as-of", "2030-01-01"), "reader"
    )
    one_line_refusal(granted.cli("reader", "history", "C000002"), "reader")
    one_line_refusal(granted.cli("reader", "audit", "verify"), "reader")
    ltv = granted.cli("reader", "--format", "json", "ltv", "C000003")
    assert ltv.exit_code == 0, ltv.output
    assert "C000003" in ltv.stdout

    assert granted.cli("owner", "erase", "C000004", "--reason", "asked").exit_code == 0
    rebuilt = granted.cli("owner", "projections", "rebuild")
    assert rebuilt.exit_code == 0, rebuilt.output
    assert granted.cli("reader", "ltv", "C000003").exit_code == 0  # tables the owner made later
    again = granted.cli(None, "db", "grant", "--prefix", granted.prefix)
    assert again.exit_code == 0, again.output  # safe to repeat
    verified = granted.cli("owner", "audit", "verify")
    assert verified.exit_code == 0, verified.output
    assert "intact" in verified.stdout


def test_a_refused_read_is_in_the_access_log(granted: Granted) -> None:
    one_line_refusal(granted.cli("reader", "customer", "show", "C000007"), "reader")
    with Ledger(_env(granted)) as ledger:
        records = [r for _, r in ledger.access_records() if r.subject == "C000007"]
    assert [(r.action, r.outcome, r.client) for r in records][-1:] == [("360", "refused", "cli")]


def _env(granted: Granted) -> dict[str, str]:
    from crm_ledger.adapters.eventstore import postgres_env

    return postgres_env(granted.url, granted.schema)


def test_the_readme_examples_run_as_written(pg_url: str, pg_schema: str, tmp_path: Path) -> None:
    env = {
        "CRM_LEDGER_DATABASE_URL": pg_url,
        "CRM_LEDGER_DATABASE_SCHEMA": pg_schema,
        "CRM_LEDGER_DATA_DIR": str(tmp_path / "data"),
    }
    for setup in ("init", "generate --customers 60 --out h.jsonl", "import h.jsonl"):
        done = shell(f"crm-ledger {setup}", tmp_path, env)
        assert done.returncode == 0, done.stderr
    login, group = f"ana_{pg_schema}", f"crm_ledger_{pg_schema}"
    try:
        [block] = examples("postgres-roles")
        with psycopg.connect(pg_url, autocommit=True) as conn:
            shell(block.commands()[0], tmp_path, env)  # db grant makes the group roles
            conn.execute(f'CREATE ROLE "{login}" LOGIN IN ROLE "{group}_reader"'.encode())
        env["ANALYST_URL"] = pg_url.replace("postgres@", f"{login}@", 1)
        outputs = run_refusing(
            block, tmp_path, env, f"crm-ledger: error: PostgreSQL refused role {login}"
        )
        assert "C000042" in outputs[2]
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            drop_postgres_schema(pg_url, pg_schema)
            conn.execute(f'DROP ROLE IF EXISTS "{login}"'.encode())
            for role in ("owner", "writer", "reader"):
                conn.execute(f'DROP OWNED BY "{group}_{role}"'.encode())
                conn.execute(f'DROP ROLE "{group}_{role}"'.encode())
