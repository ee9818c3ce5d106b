"""The analyst's commands as a user meets them: customer show, ltv, timeline, replay,
compare and projections, their formats, bad input and a rebuild killed for real."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import pytest

from crm_ledger.adapters.sql import SqlProjectionStore, sqlite_engine
from tests.clock import moment_between
from tests.e2e.test_cli import run

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from click.testing import CliRunner


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A synthetic history imported in two halves, with the moment between them."""
    from click.testing import CliRunner

    runner = CliRunner()
    folder = tmp_path_factory.mktemp("analysis")
    data = folder / "ledger"
    events = folder / "events.jsonl"
    assert (
        run(
            runner, data, "generate", "--seed", "3", "--customers", "150", "--out", str(events)
        ).exit_code
        == 0
    )
    lines = events.read_text().splitlines(keepends=True)
    first, second = folder / "first.jsonl", folder / "second.jsonl"
    first.write_text("".join(lines[: len(lines) // 2]))
    second.write_text("".join(lines[len(lines) // 2 :]))
    assert run(runner, data, "init").exit_code == 0
    assert run(runner, data, "import", str(first)).exit_code == 0
    between = moment_between().isoformat()
    assert run(runner, data, "import", str(second)).exit_code == 0
    return {
        "data": data,
        "between": between,
        "truth": events.with_suffix(".truth.json"),
        "events": [json.loads(line) for line in lines],
    }


def as_json(runner: CliRunner, data: Path, *args: str) -> Any:
    result = run(runner, data, "--format", "json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_ltv_of_a_customer_is_the_sum_of_their_orders(runner: CliRunner, demo: dict) -> None:
    orders = [e for e in demo["events"] if e["type"] == "OrderPlaced"]
    merged = {e["customer_id"] for e in demo["events"] if e["type"] == "CustomersMerged"}
    buyers = {e["customer_id"] for e in orders} - {m.removesuffix("-DUP") for m in merged}
    customer = max(sorted(buyers), key=lambda c: sum(e["customer_id"] == c for e in orders))
    mine = [e for e in orders if e["customer_id"] == customer]
    refunds = [
        e for e in demo["events"] if e["type"] == "OrderRefunded" and e["customer_id"] == customer
    ]
    (value,) = as_json(runner, demo["data"], "ltv", customer)
    assert value["orders"] == len(mine)
    assert value["gross_minor"] == sum(e["amount_minor"] for e in mine)
    assert value["net_minor"] == value["gross_minor"] - sum(e["amount_minor"] for e in refunds)

    shown = as_json(runner, demo["data"], "customer", "show", customer)
    assert shown["lifetime_value"][0]["net_minor"] == value["net_minor"]
    assert len(shown["last_touches"]) == 5
    times = [t["occurred_at"] for t in shown["last_touches"]]
    assert times == sorted(times, reverse=True)


def test_top_customers_and_organisations(runner: CliRunner, demo: dict) -> None:
    top = as_json(runner, demo["data"], "ltv", "--top", "4")
    nets = [v["net_minor"] for v in top]
    assert len(top) == 4
    assert nets == sorted(nets, reverse=True)
    result = run(
        runner, demo["data"], "--format", "csv", "ltv", "--by", "organisation", "--top", "2"
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == 2
    assert all(r["subject"].startswith("ORG") for r in rows)


def test_timeline_in_order_and_by_channel(runner: CliRunner, demo: dict) -> None:
    steps = as_json(runner, demo["data"], "timeline", "C000001")
    assert [s["occurred_at"] for s in steps] == sorted(s["occurred_at"] for s in steps)
    assert steps[0]["gap_seconds"] is None
    channels = {s["channel"] for s in steps if s["channel"]}
    some = sorted(channels)[0]
    only = as_json(runner, demo["data"], "timeline", "C000001", "--channel", some)
    assert only
    assert {s["channel"] for s in only} == {some}
    table = run(runner, demo["data"], "timeline", "C000001", "--limit", "3")
    assert table.exit_code == 0
    assert "journey of C000001" in table.stdout


def test_replay_into_a_snapshot_and_query_it(runner: CliRunner, demo: dict) -> None:
    data = demo["data"]
    made = as_json(runner, data, "replay", "--as-of", demo["between"], "--into", "half")
    assert made["projections"] == [
        "customer_360",
        "customer_search",
        "journey_timeline",
        "lifetime_value",
    ]
    then = as_json(runner, data, "ltv", "--top", "3", "--snapshot", "half")
    now = as_json(runner, data, "ltv", "--top", "3")
    assert sum(v["orders"] for v in then) < sum(v["orders"] for v in now)
    customer = then[0]["subject"]
    from_snapshot = as_json(runner, data, "timeline", customer, "--snapshot", "half")
    as_of = as_json(runner, data, "timeline", customer, "--as-of", demo["between"])
    assert from_snapshot == as_of
    status = as_json(runner, data, "projections", "status")
    assert {(s["set"], s["status"]) for s in status if s["set"] == "s_half"} == {
        ("s_half", "snapshot")
    }
    assert as_json(runner, data, "projections", "drop", "half") == {"dropped": "half"}


def test_compare_reports_the_estimate_the_truth_and_draws_a_chart(
    runner: CliRunner, demo: dict, tmp_path: Path
) -> None:
    chart = tmp_path / "impact.png"
    report = as_json(
        runner,
        demo["data"],
        "compare",
        "loyalty-north",
        "--chart",
        str(chart),
        "--truth",
        str(demo["truth"]),
        "--resamples",
        "300",
    )
    during = report["estimates"][0]
    assert during["period"] == "during"
    assert during["ci_low"] < during["estimate"] < during["ci_high"]
    assert report["true_uplift"] > 0
    assert {g["group"] for g in report["groups"]} == {"exposed", "control"}
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = run(
        runner,
        demo["data"],
        "compare",
        "loyalty-north",
        "--metric",
        "orders",
        "--control",
        "region=south",
        "--resamples",
        "200",
    )
    assert table.exit_code == 0, table.output
    assert "vs control region=south" in table.stdout
    assert "difference-in-differences" in table.stdout


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["ltv", "NOPE"], 1, "customer 'NOPE' not found"),
        (["timeline", "C000001", "--as-of", "yesterday"], 1, "ISO 8601"),
        (["replay", "--as-of", "2025-01-01", "--into", "Bad Name"], 1, "snapshot name"),
        (["replay", "--into", "x"], 1, "--as-of"),
        (["compare", "nope"], 1, "nope"),
        (["compare", "loyalty-north", "--control", "region"], 1, "KEY=VALUE"),
        (["compare", "loyalty-north", "--control", "planet=mars"], 1, "planet"),
        (["projections", "rebuild", "nope"], 1, "lifetime_value"),
        (["ltv", "--top", "3", "--snapshot", "missing"], 1, "no snapshot named 'missing'"),
        (
            ["customer", "show", "C000001", "--snapshot", "s", "--as-of", "2025-01-01"],
            1,
            "--snapshot",
        ),
    ],
)
def test_bad_input_is_one_line_and_a_non_zero_exit(
    runner: CliRunner, demo: dict, args: list[str], code: int, message: str
) -> None:
    result = run(runner, demo["data"], *args)
    assert result.exit_code == code, result.output
    assert message in result.stderr
    assert result.stderr.startswith("crm-ledger: error:")
    assert len(result.stderr.strip().splitlines()) == 1


@contextlib.contextmanager
def caught_up_store(runner: CliRunner, data: Path) -> Iterator[SqlProjectionStore]:
    """The read models of ``data``, caught up with the ledger, opened directly."""
    as_json(runner, data, "projections", "run")
    engine = sqlite_engine(str(data / "projections.sqlite"))
    try:
        yield SqlProjectionStore(engine)
    finally:
        engine.dispose()


def test_a_rebuild_killed_for_real_then_rerun_ends_identical(runner: CliRunner, demo: dict) -> None:
    data = demo["data"]
    with caught_up_store(runner, data) as store:
        before = _contents(store)
        command = [
            sys.executable,
            "-m",
            "crm_ledger.cli",
            "--data-dir",
            str(data),
            "projections",
            "rebuild",
            "--batch-size",
            "5",
        ]
        process = subprocess.Popen(command, env={**os.environ}, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            building = [s for s in store.table_sets() if s.status == "building" and s.position]
            if building:
                break
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert building, "the rebuild never got going"
        assert process.returncode == -signal.SIGKILL
        assert _contents(store) == before  # queries still see the old live tables

        done = run(runner, data, "projections", "rebuild", "--workers", "1")
        assert done.exit_code == 0, done.output
        assert {s.status for s in store.table_sets() if not s.label.startswith("s_")} == {"live"}
        assert _contents(store) == before


def test_a_parallel_rebuild_ends_identical(runner: CliRunner, demo: dict) -> None:
    data = demo["data"]
    with caught_up_store(runner, data) as store:
        before = _contents(store)
        labels = {s.projection: s.label for s in store.table_sets() if s.status == "live"}
        done = run(runner, data, "projections", "rebuild", "--workers", "2", "--batch-size", "500")
        assert done.exit_code == 0, done.output
        after = {s.projection: s.label for s in store.table_sets() if s.status == "live"}
        assert all(after[p] != labels[p] for p in labels)  # every projection rebuilt
        assert _contents(store) == before


def _contents(store: SqlProjectionStore) -> dict[str, list[tuple[Any, ...]]]:
    from crm_ledger.projections.runtime import all_projections

    live = {s.projection: s.label for s in store.table_sets() if s.status == "live"}
    found = {}
    for projection in all_projections():
        for spec in projection.tables:
            rows = store.all_rows(spec, live[projection.name])
            found[spec.name] = sorted(tuple(r[c] for c in spec.names) for r in rows)
    return found
