"""The CLI as a user meets it: commands, formats, bad input and exit codes."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import uuid
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fastavro
import pytest

from crm_ledger.adapters.avro import to_json
from crm_ledger.adapters.eventstore import sqlite_env
from crm_ledger.aggregates import Customer
from crm_ledger.application import Ledger
from crm_ledger.cli import cli
from crm_ledger.config import DB_FILE
from tests.conftest import SCHEMAS
from tests.factories import tp

if TYPE_CHECKING:
    from click.testing import CliRunner, Result

CDNOW_DIR_VAR = "CRM_LEDGER_CDNOW_DIR"


def run(runner: CliRunner, data_dir: Path, *args: str, stdin: str | None = None) -> Result:
    return runner.invoke(cli, ["--data-dir", str(data_dir), *args], input=stdin)


def fresh(runner: CliRunner, data_dir: Path) -> Path:
    """A new, empty ledger in ``data_dir`` (only `init` makes one)."""
    result = run(runner, data_dir, "init")
    assert result.exit_code == 0, result.output
    return data_dir


def write_jsonl(path: Path, events: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return path


def test_record_import_show_and_history(runner: CliRunner, tmp_path: Path) -> None:
    data = tmp_path / "ledger"
    registered = to_json(tp("CustomerRegistered", "C1", actor="agent-7"))
    assert run(runner, data, "init").exit_code == 0

    result = run(runner, data, "--format", "json", "record", "-", stdin=json.dumps(registered))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["result"] == "recorded"

    events = [to_json(tp("OrderPlaced", "C1")), to_json(tp("InteractionRecorded", "C1"))]
    result = run(
        runner,
        data,
        "--format",
        "json",
        "import",
        str(write_jsonl(tmp_path / "events.jsonl", events)),
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["recorded"] == 2

    show = json.loads(run(runner, data, "--format", "json", "customer", "show", "C1").stdout)
    assert show["profile.email"] == "ada@example.org"
    assert show["orders"] == 1
    assert show["consent"] == {}

    rows = list(
        csv.DictReader(io.StringIO(run(runner, data, "--format", "csv", "history", "C1").stdout))
    )
    assert [r["type"] for r in rows] == ["CustomerRegistered", "OrderPlaced", "InteractionRecorded"]
    assert rows[0]["actor"] == "agent-7"
    assert rows[0]["occurred_at"].startswith("2025-03-01T12:00:00")

    table = run(runner, data, "history", "C1")
    assert "OrderPlaced" in table.stdout
    assert "amount_minor=1299" in table.stdout


def test_history_as_of_hides_later_recordings(runner: CliRunner, tmp_path: Path) -> None:
    data = fresh(runner, tmp_path / "ledger")
    run(runner, data, "record", "-", stdin=json.dumps(to_json(tp("CustomerRegistered", "C1"))))
    first = json.loads(run(runner, data, "--format", "json", "history", "C1").stdout)
    run(runner, data, "record", "-", stdin=json.dumps(to_json(tp("OrderPlaced", "C1"))))

    as_of = first[0]["recorded_at"]
    later = json.loads(
        run(runner, data, "--format", "json", "history", "C1", "--as-of", as_of).stdout
    )
    assert [e["type"] for e in later] == ["CustomerRegistered"]


def test_a_bad_line_stops_the_import_before_anything_is_written(
    runner: CliRunner, tmp_path: Path
) -> None:
    data = fresh(runner, tmp_path / "ledger")
    good = to_json(tp("OrderPlaced", "C1"))
    bad = {**to_json(tp("OrderPlaced", "C2")), "amount_minor": 12.5}
    path = write_jsonl(
        tmp_path / "orders.jsonl", [good, good | {"event_id": str(uuid.uuid4())}, bad]
    )
    result = run(runner, data, "import", str(path))

    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "orders.jsonl, line 3" in lines[0]
    assert "OrderPlaced.amount_minor" in lines[0]
    assert "whole number" in lines[0]
    with Ledger(sqlite_env(str(data / DB_FILE))) as ledger:
        assert ledger.count_events() == 0

    fixed = write_jsonl(path, [good, good | {"event_id": str(uuid.uuid4())}])
    assert run(runner, data, "import", str(fixed)).exit_code == 0
    again = run(runner, data, "--format", "json", "import", str(fixed))
    assert json.loads(again.stdout) == {
        "files": 1,
        "read": 2,
        "recorded": 0,
        "duplicates": 2,
        "rejected": 0,
    }


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "line 1: not valid JSON"),
        ('["a list"]', "line 1: type: each event must be a JSON object"),
        ('{"type": "OrderShipped"}', "line 1: type: must be one of"),
    ],
)
def test_malformed_json_lines_get_one_clear_line(
    runner: CliRunner, tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text("\n" + content + "\n")
    result = run(runner, fresh(runner, tmp_path / "ledger"), "import", str(path))
    assert result.exit_code == 1
    assert message.replace("line 1", "line 2") in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_rule_refusals_are_listed_and_the_rest_is_stored(runner: CliRunner, tmp_path: Path) -> None:
    data = fresh(runner, tmp_path / "ledger")
    events = [
        to_json(tp("CustomerRegistered", "C1")),
        to_json(tp("CustomerErased", "C1")),
        to_json(tp("ProfileUpdated", "C1")),
        to_json(tp("OrderPlaced", "C1")),
    ]
    result = run(runner, data, "import", str(write_jsonl(tmp_path / "e.jsonl", events)))
    assert result.exit_code == 1
    assert "e.jsonl, line 3: customer C1 was erased and accepts no personal data" in result.stderr
    show = json.loads(run(runner, data, "--format", "json", "customer", "show", "C1").stdout)
    assert (show["erased"], show["orders"]) == (True, 1)


def test_avro_container_files_import(runner: CliRunner, tmp_path: Path) -> None:
    from crm_ledger.adapters.avro import to_record

    schema = json.loads((SCHEMAS / "InteractionRecorded.avsc").read_text())
    events = [tp("InteractionRecorded", f"C{i}") for i in range(5)]
    path = tmp_path / "touches.avro"
    with path.open("wb") as f:
        fastavro.writer(f, fastavro.parse_schema(schema), [to_record(e) for e in events])
    result = run(
        runner, fresh(runner, tmp_path / "ledger"), "--format", "json", "import", str(path)
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["recorded"] == 5

    not_avro = tmp_path / "x.avro"
    not_avro.write_bytes(b"garbage")
    result = run(runner, tmp_path / "ledger", "import", str(not_avro))
    assert result.exit_code == 1
    assert "x.avro: not an Avro container file" in result.stderr


def test_errors_and_usage_errors_are_one_line_with_exit_1(
    runner: CliRunner, tmp_path: Path
) -> None:
    missing = run(runner, tmp_path / "none", "customer", "show", "C1")
    assert missing.exit_code == 1
    assert "no ledger at" in missing.stderr
    run(runner, tmp_path / "l", "init")
    unknown = run(runner, tmp_path / "l", "customer", "show", "nobody")
    assert (unknown.exit_code, unknown.stderr.strip()) == (
        1,
        "crm-ledger: error: customer 'nobody' not found",
    )
    assert run(runner, tmp_path / "l", "history", "C1", "--as-of", "last tuesday").exit_code == 1
    assert run(runner, tmp_path / "l", "--format", "xml", "status").exit_code == 1
    nofile = run(runner, tmp_path / "l", "import", str(tmp_path / "nope.jsonl"))
    assert nofile.exit_code == 1
    assert "nope.jsonl: No such file or directory" in nofile.stderr


def test_the_console_script_runs_and_explains_itself(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("crm-ledger")
    help_text = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True)
    for command in ("init", "record", "import", "customer", "history", "schemas", "generate"):
        assert command in help_text.stdout
    bad = subprocess.run(
        [exe, "--data-dir", str(tmp_path), "record", "-"],
        input="{}",
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 1
    assert bad.stderr.strip() == (
        "crm-ledger: error: <stdin>: type: must be one of ConsentChanged, "
        "ContactLinkedToOrganisation, CustomerErased, CustomerRegistered, CustomersMerged, "
        "CustomersUnmerged, IdentityLinked, InitiativeEnded, InitiativeStarted, "
        "InteractionRecorded, OrderPlaced, OrderRefunded, OrganisationRegistered, "
        "ProfileUpdated, SubscriptionCancelled, SubscriptionStarted, SupportTicketOpened, "
        "SupportTicketResolved; got None"
    )
    assert "Traceback" not in bad.stderr


def test_the_cli_works_on_postgresql(runner: CliRunner, pg_url: str, pg_schema: str) -> None:
    base = ["--database-url", pg_url, "--database-schema", pg_schema, "--format", "json"]
    assert runner.invoke(cli, [*base, "init"]).exit_code == 0
    event = json.dumps(to_json(tp("OrderPlaced", "P1")))
    assert runner.invoke(cli, [*base, "record", "-"], input=event).exit_code == 0
    again = runner.invoke(cli, [*base, "record", "-"], input=event)
    assert json.loads(again.stdout)["result"].startswith("duplicate")
    show = json.loads(runner.invoke(cli, [*base, "customer", "show", "P1"]).stdout)
    assert show["orders"] == 1


def test_generate_is_deterministic_for_a_seed(runner: CliRunner, tmp_path: Path) -> None:
    for name in ("a", "b"):
        result = runner.invoke(
            cli,
            [
                "generate",
                "--seed",
                "3",
                "--customers",
                "60",
                "--out",
                str(tmp_path / f"{name}.jsonl"),
            ],
        )
        assert result.exit_code == 0, result.output
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    truth = json.loads((tmp_path / "a.truth.json").read_text())
    assert truth["relative_uplift"] == 0.25
    assert truth["initiative_scope"] == {"region": "north"}


@pytest.fixture(scope="module")
def cdnow_dir() -> Path:
    folder = os.environ.get(CDNOW_DIR_VAR)
    if not folder or not (Path(folder) / "CDNOW_master.txt").is_file():
        pytest.fail(
            f"{CDNOW_DIR_VAR} must name the folder `make cdnow` fills "
            "(scripts/fetch_cdnow.py); run the suite with `make test`"
        )
    return Path(folder)


def _file_totals(path: Path) -> tuple[int, set[str], int]:
    rows, customers, cents = 0, set(), 0
    for line in path.read_text().splitlines()[1:]:
        customer, _day, _cds, dollars = line.split()
        rows += 1
        customers.add(str(int(customer)))
        cents += int(Decimal(dollars) * 100)
    return rows, customers, cents


def test_cdnow_master_imports_every_purchase_to_the_cent(
    runner: CliRunner, tmp_path: Path, cdnow_dir: Path
) -> None:
    master = cdnow_dir / "CDNOW_master.txt"
    result = run(
        runner, fresh(runner, tmp_path / "l"), "--format", "json", "import", "--cdnow", str(master)
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["recorded"] == 69_659

    rows, customers, cents = _file_totals(master)
    with Ledger(sqlite_env(str(tmp_path / "l" / DB_FILE))) as ledger:
        names, buyers, total, orders = {}, set(), 0, 0
        for n in ledger.recorder.select_notifications(start=1, limit=10**6):
            event: Any = ledger.mapper.to_domain_event(n)
            if isinstance(event, Customer.Opened):
                names[event.originator_id] = event.customer_id
            elif isinstance(event, Customer.OrderPlaced):
                orders += 1
                total += event.amount_minor
                buyers.add(names[event.originator_id])
    assert (rows, len(customers)) == (69_659, 23_570)
    assert orders == rows
    assert buyers == customers
    assert total == cents == 250_031_563

    sample = cdnow_dir / "CDNOW_sample.txt"
    again = run(runner, tmp_path / "l", "--format", "json", "import", "--cdnow", str(sample))
    assert json.loads(again.stdout) == {
        "files": 1,
        "read": 6_919,
        "recorded": 0,
        "duplicates": 6_919,
        "rejected": 0,
    }
