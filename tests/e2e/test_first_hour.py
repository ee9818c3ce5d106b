"""What an analyst reaches for in the first hour: time travel between two deliveries, find
and list, exports, nothing matched, currency notes, and counts that reconcile."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from crm_ledger.adapters.sql import SqlProjectionStore, sqlite_engine
from crm_ledger.projections.customer_search import TOKEN_COLUMNS
from tests.e2e.test_cli import run, write_jsonl
from tests.factories import tp
from tests.processes import cli_loading


def as_json(runner: CliRunner, data: Path, *args: str) -> Any:
    result = run(runner, data, "--format", "json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def waves(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A small history delivered as a backfill and a later delivery, checkpoint between."""
    runner = CliRunner()
    folder = tmp_path_factory.mktemp("first-hour")
    data, events = folder / "ledger", folder / "events.jsonl"
    made = run(runner, data, "--format", "json", "generate", "--seed", "7", "--customers",
               "200", "--out", str(events), "--split-at", "2025-01-01")  # fmt: skip
    assert made.exit_code == 0, made.output
    summary = json.loads(made.stdout)
    assert run(runner, data, "init").exit_code == 0
    assert run(runner, data, "import", summary["backfill_file"]).exit_code == 0
    assert run(runner, data, "audit", "checkpoint").exit_code == 0
    assert run(runner, data, "import", summary["later_file"]).exit_code == 0
    lines = [json.loads(x) for x in events.read_text().splitlines()]
    later_file = Path(summary["later_file"])
    later = [json.loads(x) for x in later_file.read_text().splitlines()]
    return {"data": data, "summary": summary, "events": lines, "later": later}


def test_the_two_deliveries_make_as_of_and_valid_at_differ(waves: dict[str, Any]) -> None:
    runner, data, later = CliRunner(), waves["data"], waves["later"]
    late = next(e for e in later if e["type"] == "OrderPlaced" and e["occurred_at"] < "2025")
    who = late["customer_id"]
    before = as_json(runner, data, "ltv", who, "--as-of", "checkpoint:1")
    happened = as_json(runner, data, "ltv", who, "--valid-at", "2025-01-01")
    now = as_json(runner, data, "ltv", who)
    # The late order happened before the split, but the ledger learned of it afterwards.
    assert happened[0]["orders"] >= before[0]["orders"] + 1
    assert now[0]["orders"] >= happened[0]["orders"]
    corrected = next(e for e in later if e["type"] == "ProfileUpdated")
    then = as_json(runner, data, "customer", "show", corrected["customer_id"], "--as-of",
                   "checkpoint:1")  # fmt: skip
    live = as_json(runner, data, "customer", "show", corrected["customer_id"])
    assert then["profile.email"] != live["profile.email"] == corrected["email"]
    missing = run(runner, data, "history", who, "--as-of", "checkpoint:9")
    assert missing.exit_code == 1
    assert "no checkpoint 9" in missing.stderr


def test_find_by_id_email_phone_and_name_prefix(waves: dict[str, Any]) -> None:
    runner, data = CliRunner(), waves["data"]
    registered = [e for e in waves["events"] if e["type"] == "CustomerRegistered"]
    one = registered[5]
    who = one["customer_id"]
    assert [m["customer_id"] for m in as_json(runner, data, "customer", "find", who)] == [who]
    by_email = as_json(runner, data, "customer", "find", one["email"].upper())
    assert [m["customer_id"] for m in by_email] == [who]
    assert by_email[0]["matched_on"] == "email"
    spaced = one["phone"].replace(" 6", " 6 ")[:-2] + "-" + one["phone"][-2:]
    assert who in [m["customer_id"] for m in as_json(runner, data, "customer", "find", spaced)]
    last = one["name"].split(" ")[-1]
    by_name = as_json(runner, data, "customer", "find", last[:3].lower(), "--limit", "500")
    assert who in [m["customer_id"] for m in by_name]
    assert all(m["name"].split(" ")[-1].startswith(last[:3]) or m["name"].lower().startswith(
        last[:3].lower()) for m in by_name)  # fmt: skip
    nothing = run(runner, data, "customer", "find", "nobody@nowhere.example")
    assert nothing.exit_code == 0
    assert "nothing matched" in nothing.stdout
    short = run(runner, data, "customer", "find", "a")
    assert short.exit_code == 1
    assert "two letters" in short.stderr


def test_list_filters_and_keyset_pages(waves: dict[str, Any]) -> None:
    runner, data = CliRunner(), waves["data"]
    everyone = as_json(runner, data, "customer", "list", "--limit", "1000")
    north = as_json(runner, data, "customer", "list", "--region", "north", "--limit", "1000")
    assert north
    assert {c["region"] for c in north} == {"north"}
    assert len(north) < len(everyone)
    first = run(runner, data, "--format", "json", "customer", "list", "--region", "north",
                "--limit", "7")  # fmt: skip
    page = json.loads(first.stdout)
    assert len(page) == 7
    assert f"--after {page[-1]['customer_id']}" in first.stderr
    rest = as_json(runner, data, "customer", "list", "--region", "north", "--after",
                   page[-1]["customer_id"], "--limit", "1000")  # fmt: skip
    assert [c["customer_id"] for c in page + rest] == [c["customer_id"] for c in north]
    leads = as_json(runner, data, "customer", "list", "--lifecycle", "lead", "--limit", "1000")
    assert leads
    assert {c["lifecycle_stage"] for c in leads} == {"lead"}
    refused = as_json(runner, data, "customer", "list", "--consent", "marketing=no",
                      "--limit", "1000")  # fmt: skip
    granted = as_json(runner, data, "customer", "list", "--consent", "marketing=yes",
                      "--limit", "1000")  # fmt: skip
    assert refused
    assert granted
    assert not {c["customer_id"] for c in refused} & {c["customer_id"] for c in granted}
    empty = run(runner, data, "--format", "csv", "customer", "list", "--region", "atlantis")
    assert empty.stdout.splitlines() == [
        "customer_id,segment,region,country,lifecycle_stage,registered_at,erased"
    ]


def test_exports_stream_every_row_in_each_format(waves: dict[str, Any], tmp_path: Path) -> None:
    runner, data, events = CliRunner(), waves["data"], waves["events"]
    orders = sum(e["type"] in ("OrderPlaced", "OrderRefunded") for e in events)
    done = as_json(runner, data, "export", "orders", "--out", str(tmp_path / "o.parquet"))
    assert done["rows"] == orders
    table = pq.read_table(tmp_path / "o.parquet")
    assert table.num_rows == orders
    assert str(table.schema.field("occurred_at").type) == "timestamp[us, tz=UTC]"
    assert "email" not in table.schema.names
    as_json(runner, data, "export", "customers", "--out", str(tmp_path / "c.csv"))
    rows = list(csv.DictReader(io.StringIO((tmp_path / "c.csv").read_text())))
    assert "email" not in rows[0]
    assert len(rows) == sum(e["type"] == "CustomerRegistered" for e in events)
    as_json(runner, data, "export", "customers", "--include-personal", "--out",
            str(tmp_path / "p.jsonl"))  # fmt: skip
    personal = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert any(p["email"] for p in personal)
    refused = run(runner, data, "export", "orders", "--include-personal", "--out",
                  str(tmp_path / "x.csv"))  # fmt: skip
    assert refused.exit_code == 1
    bad = run(runner, data, "export", "orders", "--out", str(tmp_path / "x.xlsx"))
    assert bad.exit_code == 1
    assert ".csv, .jsonl or .parquet" in bad.stderr


def test_status_and_verify_counts_reconcile(waves: dict[str, Any]) -> None:
    runner, data = CliRunner(), waves["data"]
    status = as_json(runner, data, "status")
    verify = as_json(runner, data, "audit", "verify")
    assert status["events"] == verify["touchpoints"] == len(waves["events"])
    assert status["stored_events"] == verify["events"] > status["events"]


def test_currency_notes_and_an_empty_comparison_refused(tmp_path: Path) -> None:
    runner = CliRunner()
    data = tmp_path / "mixed"
    assert run(runner, data, "init").exit_code == 0
    events = [tp("CustomerRegistered", f"M{i}", region="north" if i % 2 else "south")
              for i in range(6)]  # fmt: skip
    events += [tp("OrderPlaced", f"M{i}", order_id=f"O{i}") for i in range(6)]
    events += [tp("OrderPlaced", "M1", order_id="U1", currency="USD", amount_minor=900)]
    from crm_ledger.adapters.avro import to_json

    path = write_jsonl(tmp_path / "m.jsonl", [to_json(e) for e in events])
    assert run(runner, data, "import", str(path)).exit_code == 0
    top = run(runner, data, "ltv", "--top", "3")
    assert "the most used currency, EUR, was chosen" in top.stderr
    assert "USD (1 orders) are not counted" in top.stderr
    only_usd = run(runner, data, "ltv", "--top", "3", "--currency", "USD")
    assert "EUR (6 orders) are not counted" in only_usd.stderr


def test_erasure_blanks_the_search_index(tmp_path: Path) -> None:
    runner = CliRunner()
    data = tmp_path / "erase"
    assert run(runner, data, "init").exit_code == 0
    from crm_ledger.adapters.avro import to_json

    path = write_jsonl(tmp_path / "e.jsonl", [to_json(tp("CustomerRegistered", "E1"))])
    assert run(runner, data, "import", str(path)).exit_code == 0
    assert [m["customer_id"] for m in as_json(runner, data, "customer", "find", "ada")] == ["E1"]
    assert run(runner, data, "erase", "E1", "--reason", "asked").exit_code == 0
    assert as_json(runner, data, "customer", "find", "ada@example.org") == []
    assert as_json(runner, data, "customer", "find", "ada") == []
    store = SqlProjectionStore(sqlite_engine(str(data / "projections.sqlite")))
    [live] = [
        s for s in store.table_sets() if s.projection == "customer_search" and s.status == "live"
    ]
    from crm_ledger.projections.customer_search import SEARCH

    [row] = store.all_rows(SEARCH, live.label)
    assert all(row[c] == "" for c in TOKEN_COLUMNS)
    store.engine.dispose()
    rebuilt = run(runner, data, "projections", "rebuild", "customer_search", "--workers", "1")
    assert rebuilt.exit_code == 0, rebuilt.output
    assert as_json(runner, data, "customer", "find", "ada") == []


#: The event store's and the domain's modules: a query over read models loads none of them.
HEAVY = (
    "eventsourcing",
    "crm_ledger.application",
    "crm_ledger.aggregates.customer",
    "cryptography",
)


def _ltv_in_new_process(data: Path, customer_id: str) -> tuple[list[dict[str, Any]], list[str]]:
    command = ["--data-dir", str(data), "--format", "json", "ltv", customer_id]
    code, out, err, loaded = cli_loading(command, HEAVY)
    assert code == 0, err
    return json.loads(out), loaded


def test_a_query_over_read_models_up_to_date_leaves_the_event_store_unloaded(
    tmp_path: Path,
) -> None:
    from crm_ledger.adapters.avro import to_json

    runner, data = CliRunner(), tmp_path / "quick"
    assert run(runner, data, "init").exit_code == 0
    first = [tp("CustomerRegistered", "Q1"), tp("OrderPlaced", "Q1", order_id="O1")]
    path = write_jsonl(tmp_path / "q.jsonl", [to_json(e) for e in first])
    assert run(runner, data, "import", str(path)).exit_code == 0
    assert run(runner, data, "ltv", "Q1").exit_code == 0  # the read models catch up here

    [value], loaded = _ltv_in_new_process(data, "Q1")
    assert (value["orders"], loaded) == (1, [])  # answered from the read models alone

    # Written by another process since: the log's head moved, so the next query opens the
    # ledger, catches up, and answers with the new order.
    later = [tp("OrderPlaced", "Q1", order_id="O2")]
    path = write_jsonl(tmp_path / "q2.jsonl", [to_json(e) for e in later])
    assert run(runner, data, "import", str(path)).exit_code == 0
    [value], loaded = _ltv_in_new_process(data, "Q1")
    assert value["orders"] == 2
    assert "eventsourcing" in loaded
