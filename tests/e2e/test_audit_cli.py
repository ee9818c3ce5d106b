"""Auditor and privacy commands as a user meets them: checkpoint, verify (intact, then after
tampering with the SQLite file), history, public key, consent violations."""

from __future__ import annotations

import json
import sqlite3
from datetime import timedelta
from typing import TYPE_CHECKING

from crm_ledger.aggregates import customer_uuid
from crm_ledger.config import DB_FILE
from tests.e2e.test_cli import run, write_jsonl
from tests.factories import AT, tp

if TYPE_CHECKING:
    from pathlib import Path

    from click.testing import CliRunner, Result

from crm_ledger.adapters.avro import to_json


def test_checkpoint_verify_tamper_and_locate(runner: CliRunner, tmp_path: Path) -> None:
    data = tmp_path / "ledger"
    init = run(runner, data, "--format", "json", "init")
    assert json.loads(init.stdout)["signing_key"].endswith("(created)")
    events = [to_json(tp("CustomerRegistered", "C1", actor="agent-7"))] + [
        to_json(tp("OrderPlaced", "C1", order_id=f"O{i}", amount_minor=100 + i)) for i in range(3)
    ]
    assert (
        run(runner, data, "import", str(write_jsonl(tmp_path / "e.jsonl", events))).exit_code == 0
    )
    checkpoint = run(runner, data, "--format", "json", "audit", "checkpoint")
    assert checkpoint.exit_code == 0, checkpoint.output
    assert json.loads(checkpoint.stdout)["streams"] == 1

    intact = run(runner, data, "--format", "json", "audit", "verify")
    assert intact.exit_code == 0, intact.output
    assert json.loads(intact.stdout) == {
        "ok": True,
        "events": 6,  # the 4 touchpoints, the customer's stream opening, and the access
        "touchpoints": 4,  # record of the checkpoint (appended when the command ended)
        "streams": 2,  # C1 and the access log
        "checkpoints": 1,
        "findings": [],
    }

    history = run(runner, data, "--format", "json", "audit", "history", "C1")
    facts = json.loads(history.stdout)
    assert [f["fact"] for f in facts] == [
        "CustomerRegistered",
        "OrderPlaced",
        "OrderPlaced",
        "OrderPlaced",
    ]
    assert facts[0]["actor"] == "agent-7"
    assert facts[0]["source"] == "test"
    assert all(len(f["chain_hash"]) == 64 for f in facts)

    with sqlite3.connect(data / DB_FILE) as conn:
        conn.execute(
            "UPDATE stored_events SET state = replace(state, '\"amount_minor\":101', "
            "'\"amount_minor\":999') WHERE originator_id=? AND originator_version=4",
            [customer_uuid("C1").hex],
        )
    tampered = run(runner, data, "--format", "json", "audit", "verify")
    assert tampered.exit_code == 1
    report = json.loads(tampered.stdout)
    assert report["ok"] is False
    assert {(f["subject"], f["version"], f["problem"]) for f in report["findings"]} == {
        ("C1", 4, "modified"),
        ("C1", 5, "history changed"),
    }

    key = run(runner, data, "audit", "public-key")
    assert key.stdout.startswith("-----BEGIN PUBLIC KEY-----")


def test_verify_without_a_signing_key_says_how_to_get_one(
    runner: CliRunner, tmp_path: Path
) -> None:
    data = tmp_path / "ledger"
    assert run(runner, data, "init").exit_code == 0
    assert not (data / "audit").exists()  # the keys live outside the data folder
    for key in (tmp_path / "ledger.keys").glob("*.pem"):
        key.unlink()
    result = run(runner, data, "audit", "checkpoint")
    assert result.exit_code == 1
    assert "crm-ledger init" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_consent_violations_are_listed(runner: CliRunner, tmp_path: Path) -> None:
    data = tmp_path / "ledger"
    events = [
        tp("ConsentChanged", "C1", at=AT, purpose="marketing", channel=None, granted=False),
        tp(
            "InteractionRecorded",
            "C1",
            at=AT + timedelta(days=1),
            channel="email",
            direction="outbound",
            kind="email_open",
            campaign="spring",
        ),
        tp(
            "InteractionRecorded",
            "C2",
            channel="email",
            direction="outbound",
            kind="email_open",
            campaign="spring",
        ),
    ]
    path = write_jsonl(tmp_path / "e.jsonl", [to_json(e) for e in events])
    assert run(runner, data, "init").exit_code == 0
    assert run(runner, data, "import", str(path)).exit_code == 0
    found = json.loads(run(runner, data, "--format", "json", "consent", "violations").stdout)
    assert [(v["customer_id"], v["channel"], v["campaign"]) for v in found] == [
        ("C1", "email", "spring")
    ]
    timeline = json.loads(run(runner, data, "--format", "json", "timeline", "C1").stdout)
    assert [t["consent_violation"] for t in timeline] == [False, True]


def test_erase_leaves_no_personal_data_and_keeps_the_totals(
    runner: CliRunner, tmp_path: Path
) -> None:
    data = tmp_path / "ledger"
    personal = {
        "name": "Zelda Quintero-Vasquez",
        "email": "zelda.qv@example.org",
        "phone": "+34 611 222 333",
        "address": "Calle Mayor 7, Madrid",
    }
    events = [
        tp("CustomerRegistered", "C9", **personal),
        tp("IdentityLinked", "C9", system="crm", value="ZQV-77-LOYALTY"),
        tp("SupportTicketOpened", "C9", subject="Zelda's parcel never came"),
        *(tp("OrderPlaced", "C9", order_id=f"O{i}", amount_minor=1000 * (i + 1)) for i in range(3)),
        tp("OrderRefunded", "C9", amount_minor=500),
    ]
    secrets = [*personal.values(), "ZQV-77-LOYALTY", "Zelda's parcel never came"]
    assert run(runner, data, "init").exit_code == 0
    path = write_jsonl(tmp_path / "e.jsonl", [to_json(e) for e in events])
    assert run(runner, data, "import", str(path)).exit_code == 0
    assert run(runner, data, "audit", "checkpoint").exit_code == 0
    before = json.loads(run(runner, data, "--format", "json", "ltv", "C9").stdout)
    shown = json.loads(run(runner, data, "--format", "json", "customer", "show", "C9").stdout)
    assert shown["profile.name"] == personal["name"]  # readable while the key exists
    with sqlite3.connect(data / DB_FILE) as conn:
        ((key,),) = conn.execute(
            "SELECT data_key FROM ledger_keys WHERE originator_id=?", [customer_uuid("C9").bytes]
        ).fetchall()

    erased = run(runner, data, "--format", "json", "erase", "C9", "--reason", "request #42")
    assert erased.exit_code == 0, erased.output
    assert json.loads(erased.stdout)["keys_destroyed"] == ["C9"]

    for file in sorted(data.iterdir()):
        if file.is_file():
            raw = file.read_bytes()
            for secret in secrets:
                assert secret.encode() not in raw, (file.name, secret)
            assert key not in raw, f"the data key survives in {file.name}"
    shown = json.loads(run(runner, data, "--format", "json", "customer", "show", "C9").stdout)
    assert shown["erased"] is True
    assert not any(k.startswith("profile.name") for k in shown)
    history = json.loads(run(runner, data, "--format", "json", "history", "C9").stdout)
    registered = next(h for h in history if h["type"] == "CustomerRegistered")
    assert registered["details"]["name"] is None
    assert registered["details"]["region"] == "north"  # not personal: kept
    assert json.loads(run(runner, data, "--format", "json", "ltv", "C9").stdout) == before
    assert run(runner, data, "audit", "verify").exit_code == 0
    refused = run(runner, data, "erase", "nobody", "--reason", "x")
    assert refused.exit_code == 1
    assert "nobody" in refused.stderr


def verify_export(runner: CliRunner, data: Path, export: Path, key: Path) -> Result:
    """`audit verify-export EXPORT --public-key KEY`, answering in JSON."""
    return run(
        runner,
        data,
        "--format",
        "json",
        "audit",
        "verify-export",
        str(export),
        "--public-key",
        str(key),
    )


def test_an_export_verifies_offline_and_tampering_with_it_is_found(
    runner: CliRunner, tmp_path: Path
) -> None:
    import base64

    data = tmp_path / "ledger"
    events = [tp("CustomerRegistered", "C1")] + [
        tp("OrderPlaced", "C1", order_id=f"O{i}", amount_minor=100 + i) for i in range(3)
    ]
    assert run(runner, data, "init").exit_code == 0
    assert (
        run(
            runner,
            data,
            "import",
            str(write_jsonl(tmp_path / "e.jsonl", [to_json(e) for e in events])),
        ).exit_code
        == 0
    )
    assert run(runner, data, "audit", "checkpoint").exit_code == 0
    export = tmp_path / "c1.jsonl"
    assert run(runner, data, "audit", "export", "C1", "--out", str(export)).exit_code == 0
    key = tmp_path / "ledger.pub.pem"
    key.write_text(run(runner, data, "audit", "public-key").stdout)

    good = verify_export(runner, data, export, key)
    assert good.exit_code == 0, good.output
    assert json.loads(good.stdout) == {"ok": True, "events": 5, "findings": []}

    lines = [json.loads(line) for line in export.read_text().splitlines()]
    order = next(line for line in lines if line.get("version") == 4)
    state = base64.b64decode(order["state"]).replace(b'"amount_minor":101', b'"amount_minor":1')
    order["state"] = base64.b64encode(state).decode()
    forged = tmp_path / "forged.jsonl"
    forged.write_text("".join(json.dumps(line) + "\n" for line in lines))
    bad = verify_export(runner, data, forged, key)
    assert bad.exit_code == 1
    assert {(f["version"], f["problem"]) for f in json.loads(bad.stdout)["findings"]} == {
        (4, "modified"),
        (5, "history changed"),
    }

    other = tmp_path / "other"
    assert run(runner, other, "init").exit_code == 0
    stranger = tmp_path / "other.pub.pem"
    stranger.write_text(run(runner, other, "audit", "public-key").stdout)
    wrong_key = verify_export(runner, data, export, stranger)
    assert wrong_key.exit_code == 1
    assert "bad signature" in wrong_key.stdout
    not_export = run(
        runner, data, "audit", "verify-export", str(tmp_path / "e.jsonl"), "--public-key", str(key)
    )
    assert not_export.exit_code == 1
