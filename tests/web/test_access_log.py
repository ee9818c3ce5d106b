"""The access log: a page view of a customer's data is recorded with actor, role, moment and
outcome (refusals too), inside the hash chain: editing, deleting or reordering a record is
found by `audit verify`; a clean shutdown of `crm-ledger serve` loses no record."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import urllib.parse
import urllib.request
from contextlib import contextmanager
from datetime import UTC, datetime
from http.cookiejar import CookieJar
from typing import TYPE_CHECKING, Any

import pytest

from crm_ledger import bootstrap
from crm_ledger.adapters.avro import to_json
from crm_ledger.application.access import ACCESS_STREAM
from crm_ledger.config import Settings
from tests.factories import tp
from tests.integration.conftest import wait_until
from tests.web.conftest import PASSWORD, console_over, signed_in

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture
def logged(tmp_path: Path) -> Iterator[dict[str, Any]]:
    events = [tp("CustomerRegistered", "C1"), tp("OrderPlaced", "C1")]
    roles = {"agent": "agent", "analyst": "analyst", "auditor": "auditor"}
    with console_over(tmp_path, events, roles) as (_, services, app):
        yield {"app": app, "services": services, "db": tmp_path / "ledger" / "ledger.sqlite"}


def test_views_and_refusals_are_recorded_without_personal_data(logged: dict[str, Any]) -> None:
    app, services = logged["app"], logged["services"]
    agent = signed_in(app, "agent")
    assert agent.get("/customers/C1?as_of=2030-01-01T00:00").status_code == 200
    assert agent.get("/api/customers/C1/journey").status_code == 200
    assert agent.get("/search?q=ada@example.org").status_code == 200
    assert agent.get("/customers/C1/export.jsonl").status_code == 403
    assert agent.get("/customers/NOPE").status_code == 404
    services.access.flush()
    about = services.access.about("C1")
    assert [(r.actor, r.role, r.client, r.action, r.outcome) for r in about] == [
        ("agent", "agent", "console", "360", "allowed"),
        ("agent", "agent", "api", "journey", "allowed"),
        ("agent", "agent", "api", "audit-export", "refused"),
    ]
    assert about[0].as_of is not None
    assert about[0].as_of.year == 2030
    searches = [r for _, r in services.access.every() if r.action == "search"]
    assert [(s.subject, s.outcome) for s in searches] == [(None, "allowed")]
    stored = b"".join(r.encoded() for _, r in services.access.every())
    assert b"ada@example.org" not in stored  # the query is not kept
    assert ("NOPE", "not-found") in [(r.subject, r.outcome) for _, r in services.access.every()]


@pytest.mark.parametrize("change", ["edit", "delete", "reorder"])
def test_a_changed_access_record_is_found_by_verify(logged: dict[str, Any], change: str) -> None:
    app, services = logged["app"], logged["services"]
    agent = signed_in(app, "agent")
    for _ in range(3):
        agent.get("/customers/C1")
    services.access.flush()
    services.audit.checkpoint()
    assert services.audit.verify().ok
    key = ACCESS_STREAM.hex
    with sqlite3.connect(logged["db"]) as conn:
        rows = conn.execute(
            "SELECT originator_version, state FROM stored_events WHERE originator_id=? "
            "ORDER BY originator_version",
            (key,),
        ).fetchall()
        assert len(rows) == 3
        update = "UPDATE stored_events SET state=? WHERE originator_id=? AND originator_version=?"
        if change == "edit":
            forged = bytes(rows[1][1]).replace(b'"agent"', b'"nobody"', 1)
            conn.execute(update, (forged, key, 2))
        elif change == "delete":
            conn.execute(
                "DELETE FROM stored_events WHERE originator_id=? AND originator_version=2", (key,)
            )
        else:
            first = bytes(rows[0][1]).replace(b'"360"', b'"journey"')  # two that differ
            conn.execute(update, (bytes(rows[2][1]), key, 1))
            conn.execute(update, (first, key, 3))
    report = services.audit.verify()
    assert not report.ok
    assert {f.subject for f in report.findings} == {"the access log"}, report.findings


def _views(settings: Settings) -> int:
    with bootstrap.build(settings) as services:
        return len([r for r in services.access.about("C1") if r.action == "360"])


@contextmanager
def _served(tmp_path: Path, **env: str) -> Iterator[tuple[Settings, subprocess.Popen[bytes], Any]]:
    """A ledger with C1 and an agent, `crm-ledger serve` over it, and an opener signed in."""
    data = tmp_path / "ledger"
    cli = [sys.executable, "-m", "crm_ledger.cli", "--data-dir", str(data)]
    assert subprocess.run([*cli, "init"], capture_output=True, check=False).returncode == 0
    settings = Settings.from_env({}, data_dir=data)
    with bootstrap.build(settings) as services:
        services.ledger.record_many([tp("CustomerRegistered", "C1")])
    bootstrap.open_users(settings).add("agent", "agent", PASSWORD)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [*cli, "serve", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, **env},
    )
    try:
        opener = _signed_in_opener(port, server)
        yield settings, server, lambda path: opener.open(f"http://127.0.0.1:{port}{path}")
    finally:
        if server.poll() is None:
            server.kill()
        server.communicate(timeout=30)


def test_a_crash_loses_at_most_the_last_second(tmp_path: Path) -> None:
    """Records reach the store within a second while the server runs, so kill -9 loses only
    those of the second before it."""
    with _served(tmp_path) as (settings, server, get):
        for _ in range(3):
            with get("/customers/C1") as page:
                assert page.status == 200
        wait_until(lambda: _views(settings) == 3, 10, "the views appended by the server")
        server.kill()
        server.wait(timeout=30)
    assert _views(settings) == 3


def test_a_clean_shutdown_loses_no_record(tmp_path: Path) -> None:
    # Records wait an hour for the thread: only the shutdown's own append can save them.
    with _served(tmp_path, CRM_LEDGER_ACCESS_FLUSH_SECONDS="3600") as (settings, server, get):
        for _ in range(5):
            with get("/customers/C1") as page:
                assert page.status == 200
        server.send_signal(signal.SIGINT)  # Ctrl-C: uvicorn stops, the services close
        assert server.wait(timeout=60) == 0
    assert _views(settings) == 5


def _signed_in_opener(port: int, server: subprocess.Popen[bytes]) -> Any:
    def listening() -> bool:
        assert server.poll() is None, server.stderr.read() if server.stderr else ""
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return False
        return True

    wait_until(listening, 60, "crm-ledger serve listening")
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
    form = opener.open(f"http://127.0.0.1:{port}/signin").read().decode()
    marker = 'name="csrf" value="'
    token = form[form.index(marker) + len(marker) :].split('"', 1)[0]
    body = urllib.parse.urlencode({"name": "agent", "password": PASSWORD, "csrf": token})
    opener.open(f"http://127.0.0.1:{port}/signin", body.encode()).read()
    return opener


def test_a_page_view_appears_in_the_subject_access_report(
    logged: dict[str, Any], tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from crm_ledger.cli import cli

    app, services = logged["app"], logged["services"]
    viewed = datetime.now(UTC)
    assert signed_in(app, "agent").get("/customers/C1").status_code == 200
    services.access.flush()
    data = str(logged["db"].parent)
    out = tmp_path / "c1.json"
    made = CliRunner().invoke(
        cli, ["--data-dir", data, "customer", "report", "C1", "--out", str(out)]
    )
    assert made.exit_code == 0, made.output
    report = json.loads(out.read_text())
    (view,) = [a for a in report["accesses"] if a["action"] == "360"]
    assert (view["actor"], view["role"], view["client"]) == ("agent", "agent", "console")
    assert viewed <= datetime.fromisoformat(view["at"]) <= datetime.now(UTC)
    assert [e["event_type"] for e in report["events"]] == ["CustomerRegistered", "OrderPlaced"]
    email = report["profile"]["email"]
    assert "@" in email  # the subject's own data, unmasked
    assert report["erasure"] == []
    page = out.with_suffix(".html").read_text()
    assert "Who accessed this customer" in page
    assert "<script" not in page

    erased = CliRunner().invoke(cli, ["--data-dir", data, "erase", "C1", "--reason", "art. 17"])
    assert erased.exit_code == 0, erased.output
    again = CliRunner().invoke(
        cli, ["--data-dir", data, "customer", "report", "C1", "--out", str(out)]
    )
    assert again.exit_code == 0, again.output
    after = json.loads(out.read_text())
    assert after["erasure"][0]["reason"] == "art. 17"
    assert "Personal data erased" in out.with_suffix(".html").read_text()
    assert email not in out.read_text()  # unreadable once the key is destroyed
    actions = [(a["client"], a["action"]) for a in after["accesses"]]
    assert ("cli", "subject-access-report") in actions  # the first report was itself logged
    assert ("cli", "erase") in actions


def test_the_report_for_admins_in_the_console(logged: dict[str, Any]) -> None:
    app = logged["app"]
    users = app.state.console.users
    users.add("root", "admin", PASSWORD)
    admin = signed_in(app, "root")
    assert 'id="report-html"' in admin.get("/customers/C1/audit").text
    page = admin.get("/customers/C1/report.html")
    assert page.status_code == 200
    assert "What the ledger holds on C1" in page.text
    assert admin.get("/customers/C1/report.json").json()["customer_id"] == "C1"
    assert admin.get("/customers/C1/report.pdf").status_code == 404
    assert signed_in(app, "auditor").get("/customers/C1/report.html").status_code == 403


def test_projections_skip_a_topic_this_version_does_not_know(logged: dict[str, Any]) -> None:
    """A newer writer's event type in the log (as the access log was to older versions)."""
    from uuid import uuid4

    from eventsourcing.persistence import StoredEvent

    services = logged["services"]
    unknown = StoredEvent(uuid4(), 1, "crm_ledger.future:SomethingNew", b'{"x": 1}')
    services.ledger.recorder.insert_events([unknown])
    services.ledger.record_many([tp("OrderPlaced", "C1", order_id="after-the-unknown")])
    services.read_models.catch_up()
    assert sum(v.orders for v in services.read_models.values("C1")) == 2


def test_user_changes_are_recorded_once_the_ledger_exists(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from crm_ledger.cli import cli

    data = tmp_path / "ledger"

    def run(*args: str) -> Any:
        return CliRunner().invoke(cli, ["--data-dir", str(data), *args])

    early = run("users", "add", "first", "--role", "admin", "--password", PASSWORD)
    assert early.exit_code == 0, early.output  # before init: no log to record into
    assert run("init").exit_code == 0
    assert run("users", "add", "bob", "--role", "agent", "--password", PASSWORD).exit_code == 0
    assert run("users", "token", "bob").exit_code == 0
    assert run("users", "disable", "bob").exit_code == 0
    refused = run("users", "add", "bob", "--role", "agent", "--password", PASSWORD)
    assert refused.exit_code == 1  # the name is taken
    with bootstrap.build(Settings.from_env({}, data_dir=data)) as services:
        changes = [(r.action, r.subject, r.outcome, r.client) for _, r in services.access.every()]
    assert changes == [
        ("user-add", "bob", "allowed", "cli"),
        ("user-token", "bob", "allowed", "cli"),
        ("user-disable", "bob", "allowed", "cli"),
        ("user-add", "bob", "invalid", "cli"),
    ]


def test_a_personal_export_is_recorded_and_a_plain_one_is_not(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from crm_ledger.cli import cli

    data = tmp_path / "ledger"

    def run(*args: str) -> Any:
        return CliRunner().invoke(cli, ["--data-dir", str(data), *args])

    assert run("init").exit_code == 0
    source = tmp_path / "events.jsonl"
    source.write_text(json.dumps(to_json(tp("CustomerRegistered", "C1"))) + "\n")
    assert run("import", str(source)).exit_code == 0
    assert run("export", "customers", "--out", str(tmp_path / "plain.csv")).exit_code == 0
    personal = run("export", "customers", "--include-personal", "--out", str(tmp_path / "p.csv"))
    assert personal.exit_code == 0, personal.output
    with bootstrap.build(Settings.from_env({}, data_dir=data)) as services:
        records = [(r.action, r.outcome, r.client) for _, r in services.access.every()]
    assert records == [("export-personal", "allowed", "cli")]
