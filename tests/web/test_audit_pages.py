"""The audit status on the 360, the export an auditor downloads and checks offline, and a
changed byte in the database turning the status red."""

from __future__ import annotations

import json
import sqlite3
from typing import TYPE_CHECKING, Any

import pytest

from crm_ledger import bootstrap
from crm_ledger.aggregates import customer_uuid
from crm_ledger.audit import verify_export
from crm_ledger.config import Settings
from crm_ledger.web.app import create_app
from tests.factories import tp
from tests.web.conftest import PASSWORD, console_over, signed_in

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[dict[str, Any]]:
    events = [tp("CustomerRegistered", "C1"), tp("OrderPlaced", "C1", order_id="O1")]
    with console_over(tmp_path, events, {"agent": "agent", "auditor": "auditor"}) as made:
        _, services, app = made
        yield {"app": app, "services": services, "tmp": tmp_path}


def _status(client: Any) -> dict[str, Any]:
    answer = client.get("/api/customers/C1/audit")
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def test_the_status_says_verified_and_which_checkpoint_covers_it(ledger: dict[str, Any]) -> None:
    agent = signed_in(ledger["app"], "agent")
    before = _status(agent)
    assert (before["verified"], before["checkpoint"]) == (True, None)
    signed = ledger["services"].audit.checkpoint()
    mid = _status(agent)
    assert (mid["checkpoint"], mid["signed_events"]) == (signed.checkpoint, mid["events"])
    ledger["services"].ledger.record_many([tp("OrderPlaced", "C1", order_id="O2")])
    after = _status(agent)
    assert after["checkpoint"] == signed.checkpoint
    assert after["events"] > mid["events"]
    assert after["signed_events"] == mid["events"]
    box = agent.get("/customers/C1/audit", headers={"HX-Request": "true"})
    assert f"Chain verified: {after['events']} events" in box.text
    assert "signed by checkpoint" in box.text.lower()
    assert "export.jsonl" not in box.text  # the download is the auditors'
    assert agent.get("/customers/C1/export.jsonl").status_code == 403
    assert 'hx-get="/customers/C1/audit"' in agent.get("/customers/C1").text


def test_the_export_an_auditor_downloads_verifies_offline(ledger: dict[str, Any]) -> None:
    ledger["services"].audit.checkpoint()
    auditor = signed_in(ledger["app"], "auditor")
    assert "export.jsonl" in auditor.get("/customers/C1/audit").text
    download = auditor.get("/customers/C1/export.jsonl")
    assert download.status_code == 200
    assert "attachment" in download.headers["content-disposition"]
    lines = [json.loads(line) for line in download.text.splitlines()]
    settings = Settings.from_env({}, data_dir=ledger["tmp"] / "ledger")
    public = bootstrap.open_signer(settings).public_pem()
    signer = bootstrap.verifier(public.encode() if isinstance(public, str) else public)
    assert verify_export(lines, signer) == []
    lines[1]["state"] = lines[1]["state"][:-4] + "AAA="
    assert verify_export(lines, signer) != []
    history = auditor.get("/audit/customers/C1")
    assert history.status_code == 200
    assert "CustomerRegistered" in history.text
    assert "OrderPlaced" in history.text
    assert auditor.get("/audit?customer=C1").headers["location"] == "/audit/customers/C1"


def test_a_changed_byte_in_the_database_turns_the_status_red(ledger: dict[str, Any]) -> None:
    ledger["services"].audit.checkpoint()
    database = ledger["tmp"] / "ledger" / "ledger.sqlite"
    with sqlite3.connect(database) as conn:
        key = customer_uuid("C1").hex
        query = "SELECT originator_version, state FROM stored_events WHERE originator_id=?"
        version, state = next(
            (v, s) for v, s in conn.execute(query, (key,)) if b'"amount_minor":' in bytes(s)
        )
        forged = bytes(state).replace(b'"amount_minor":', b'"amount_minor":9', 1)
        assert forged != bytes(state)
        conn.execute(
            "UPDATE stored_events SET state=? WHERE originator_id=? AND originator_version=?",
            (forged, key, version),
        )
    status = _status(signed_in(ledger["app"], "agent"))
    assert status["verified"] is False
    assert any(p.startswith("modified") for p in status["problems"]), status["problems"]


def test_the_360_shows_the_predicted_value_once_a_model_exists(tmp_path: Path) -> None:
    from crm_ledger.sources.synthetic import generate

    settings = Settings.from_env({}, data_dir=tmp_path / "ledger")
    with bootstrap.build(settings, create=True) as services:
        bootstrap.create_signing_key(settings)
        history, _ = generate(3, customers=120)
        services.ledger.record_many(history)
        users = bootstrap.open_users(settings)
        users.add("agent", "agent", PASSWORD)
        client = signed_in(create_app(services, users, b"s" * 32), "agent")
        buyer = next(e.customer_id for e in history if e.event_type == "OrderPlaced")
        assert client.get(f"/api/customers/{buyer}").json()["predicted"] is None
        assert "No prediction" in client.get(f"/customers/{buyer}").text
        last = max(e.occurred_at for e in history)
        model = services.predictions.fit(last)
        expected = services.predictions.show(buyer, model.model_id)
        shown = client.get(f"/api/customers/{buyer}").json()["predicted"]
        assert shown["model_id"] == model.model_id
        assert shown["p_alive"] == pytest.approx(expected.p_alive)
        assert shown["clv"] == pytest.approx(expected.clv)
        assert f"CLV model {model.model_id}" in client.get(f"/customers/{buyer}").text
        users.add("ivy", "analyst", PASSWORD)
        analyst = signed_in(client.app, "ivy")
        top = analyst.get("/api/value?by=clv&limit=5").json()
        values = [r["clv"] for r in top["rows"]]
        assert len(values) == 5
        assert values == sorted(values, reverse=True)
        assert values[0] == pytest.approx(services.predictions.top(1)[0].clv)
        assert f"CLV model {model.model_id}" in top["notes"][0]
        assert analyst.get("/api/value?by=clv&snapshot=x").status_code == 400
        first, second = (analyst.get(f"/api/value?limit=10&page={n}").json() for n in (1, 2))
        assert (len(first["rows"]), len(second["rows"])) == (10, 10)
        assert (first["next_page"], second["first_rank"]) == (2, 11)
        nets = [r["net_minor"] for r in first["rows"] + second["rows"]]
        assert nets == sorted(nets, reverse=True)
        top20 = analyst.get("/api/value?limit=20").json()["rows"]
        assert [r["subject"] for r in top20] == [
            r["subject"] for r in first["rows"] + second["rows"]
        ]
        empty = analyst.get("/value.csv?currency=XXX")
        assert empty.status_code == 200
        assert empty.text.splitlines()[0].startswith("subject,")
        assert len(empty.text.splitlines()) == 1
        assert analyst.get("/api/value?limit=100&page=101").status_code == 400
