"""Every bad input the CLI can be given is one line on stderr and exit code 1, never a
traceback, and writes nothing: a corpus of files, events, data folders and options."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import uuid
from typing import TYPE_CHECKING, Any

import pytest

from crm_ledger.adapters.avro import to_json
from crm_ledger.cli import cli
from tests.factories import tp

if TYPE_CHECKING:
    from pathlib import Path

    from click.testing import CliRunner

GOOD = to_json(tp("OrderPlaced", "C1", order_id="O1"))


def event(**changes: Any) -> str:
    """One JSON line: a valid order with ``changes`` (None removes a field)."""
    obj = {**GOOD, **changes}
    return json.dumps({k: v for k, v in obj.items() if v is not None}) + "\n"


#: name -> (bytes of the file given to `import`, what the one line must say)
FILES: dict[str, tuple[bytes, str]] = {
    "random bytes": (os.urandom(4096).replace(b"\n", b"\xff"), "is not UTF-8 text"),
    "Latin-1 text": ("café,1\n".encode("latin-1"), "is not UTF-8 text (byte 0xe9 at column 4)"),
    "UTF-16 with a BOM": ('{"a": 1}\n'.encode("utf-16"), "is not UTF-8 text"),
    "NUL bytes": (b"\x00\x00\x00\n", "not valid JSON"),
    "an unfinished object": (b'{"type": "OrderPlaced",\n', "not valid JSON"),
    "deeply nested JSON": (b"[" * 200_000 + b"\n", "nested too deeply"),
    "deeply nested objects": (b'{"a":' * 200_000 + b"\n", "nested too deeply"),
    "a JSON list": (b'["OrderPlaced"]\n', "each event must be a JSON object"),
    "a JSON number": (b"42\n", "each event must be a JSON object"),
    "an unknown event type": (event(type="OrderShipped").encode(), "must be one of"),
    "occurred_at 10^20 ms": (event(occurred_at=10**20).encode(), "outside the years 1 to 9999"),
    "occurred_at -10^20 ms": (event(occurred_at=-(10**20)).encode(), "outside the years"),
    "occurred_at in words": (event(occurred_at="yesterday").encode(), "not an ISO 8601 time"),
    "occurred_at without a zone": (
        event(occurred_at="2025-03-01T10:00:00").encode(),
        "needs a time zone",
    ),
    "occurred_at before 1900": (event(occurred_at="1850-01-01T00:00:00Z").encode(), "before 1900"),
    "amount_minor 2^63-1": (event(amount_minor=2**63 - 1).encode(), "must be at most"),
    "amount_minor 2^64": (event(amount_minor=2**64).encode(), "amount_minor"),
    "amount_minor just over the bound": (
        event(amount_minor=10**12 + 1).encode(),
        "must be at most 1,000,000,000,000",
    ),
    "amount_minor 12.5": (event(amount_minor=12.5).encode(), "whole number"),
    "amount_minor as text": (event(amount_minor="12").encode(), "amount_minor"),
    "amount_minor negative": (event(amount_minor=-1).encode(), "must not be negative"),
    "an unknown currency": (event(currency="ABC").encode(), "ISO 4217"),
    "a lower-case currency": (event(currency="eur").encode(), "ISO 4217"),
    "a numeric currency": (event(currency=978).encode(), "currency"),
    "margin_minor 2^63-1": (event(margin_minor=2**63 - 1).encode(), "margin_minor"),
    "items -1": (event(items=-1).encode(), "items: must be between 0 and 1,000,000"),
    "items 10^7": (event(items=10**7).encode(), "items"),
    "a score of 11": (
        json.dumps({**to_json(tp("InteractionRecorded", "C1")), "score": 11}).encode() + b"\n",
        "score: must be between 0 and 10",
    ),
    "no event_id": (event(event_id=None).encode(), "event_id"),
    "an event_id that is not a UUID": (event(event_id="42").encode(), "not a UUID"),
    "an empty customer_id": (event(customer_id="").encode(), "customer_id: must not be empty"),
    "a 10,000-character customer_id": (event(customer_id="C" * 10_000).encode(), "longer than"),
    "a field not in the schema": (event(discount=5).encode(), "is not a field"),
}


@pytest.fixture
def ledger_dir(runner: CliRunner, tmp_path: Path) -> Path:
    data = tmp_path / "ledger"
    assert runner.invoke(cli, ["--data-dir", str(data), "init"]).exit_code == 0
    return data


def _fingerprint(folder: Path) -> dict[str, str]:
    """The event store's files, hashed: unchanged means nothing was written."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.glob("ledger.sqlite*"))
        if not p.name.endswith("-shm")
    }


def _one_line_exit_1(result: Any, expected: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1, (result.exit_code, result.output)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("crm-ledger: error: "), lines
    assert expected in lines[0], lines[0]
    assert "Traceback" not in result.output


@pytest.mark.parametrize("name", sorted(FILES))
def test_a_bad_file_is_one_line_and_nothing_is_written(
    name: str, runner: CliRunner, ledger_dir: Path, tmp_path: Path
) -> None:
    content, expected = FILES[name]
    path = tmp_path / "in.jsonl"
    path.write_bytes(event(event_id=str(uuid.uuid4())).encode() + content)  # a good line first
    before = _fingerprint(ledger_dir)
    result = runner.invoke(cli, ["--data-dir", str(ledger_dir), "import", str(path)])
    _one_line_exit_1(result, expected)
    assert f"{path}, line 2: " in result.stderr
    assert _fingerprint(ledger_dir) == before


def _foreign_sqlite(folder: Path) -> Path:
    folder.mkdir()
    conn = sqlite3.connect(folder / "ledger.sqlite")
    conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
    conn.commit()
    conn.close()
    return folder


def _not_a_database(folder: Path) -> Path:
    folder.mkdir()
    (folder / "ledger.sqlite").write_bytes(b"hello, this is a spreadsheet\n")
    return folder


def _a_file(folder: Path) -> Path:
    folder.write_text("not a folder")
    return folder


#: name -> (how to make the data folder, arguments, what the one line must say)
FOLDERS: dict[str, tuple[Any, list[str], str]] = {
    "a missing folder, status": (None, ["status"], "no ledger at"),
    "a missing folder, import": (None, ["import", "{file}"], "run `crm-ledger init`"),
    "a missing folder, record": (None, ["record", "{file}"], "no ledger at"),
    "a missing folder, ltv": (None, ["ltv"], "no ledger at"),
    "a missing folder, audit verify": (None, ["audit", "verify"], "no ledger at"),
    "another program's SQLite file, status": (
        _foreign_sqlite,
        ["status"],
        "is not a crm-ledger database",
    ),
    "another program's SQLite file, ltv": (
        _foreign_sqlite,
        ["ltv", "C1"],
        "is not a crm-ledger database",
    ),
    "another program's SQLite file, init": (
        _foreign_sqlite,
        ["init"],
        "is not a crm-ledger database",
    ),
    "a file that is not a database": (_not_a_database, ["status"], "not a crm-ledger database"),
    "a data folder that is a file": (_a_file, ["init"], "is a file"),
}


@pytest.mark.parametrize("name", sorted(FOLDERS))
def test_a_folder_without_a_ledger_is_refused_and_left_as_it_was(
    name: str, runner: CliRunner, tmp_path: Path
) -> None:
    make, args, expected = FOLDERS[name]
    folder = tmp_path / "data"
    if make is not None:
        make(folder)
    file = tmp_path / "e.jsonl"
    file.write_text(event())
    before = sorted(p.name for p in tmp_path.rglob("*"))
    sqlite_before = _fingerprint(folder) if folder.is_dir() else {}
    argv = ["--data-dir", str(folder), *(a.replace("{file}", str(file)) for a in args)]
    _one_line_exit_1(runner.invoke(cli, argv), expected)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    if folder.is_dir():
        assert _fingerprint(folder) == sqlite_before


#: name -> (arguments after --data-dir, what the one line must say)
OPTIONS: dict[str, tuple[list[str], str]] = {
    "an unknown output format": (["--format", "xml", "status"], "'xml' is not one of"),
    "an as-of in words": (["history", "C1", "--as-of", "last tuesday"], "not an ISO 8601 time"),
    "an unknown customer": (["customer", "show", "nobody"], "customer 'nobody' not found"),
    "an unknown command": (["frobnicate"], "No such command 'frobnicate'"),
    "a missing argument": (["customer", "show"], "Missing argument"),
    "a negative top": (["ltv", "--top", "-1"], "--top"),
    "a checkpoint past the last": (["audit", "verify", "--since", "99"], "no checkpoint 99"),
    "a MySQL URL": (["--database-url", "mysql://x/y", "status"], "must look like postgresql://"),
    "an unknown initiative": (["compare", "no-such-initiative"], "no-such-initiative"),
    "an export of the wrong shape": (
        ["audit", "verify-export", "{wrong}", "--public-key", "{key}"],
        "is not an audit export",
    ),
    "an export that is binary": (
        ["audit", "verify-export", "{binary}", "--public-key", "{key}"],
        "is not an audit export",
    ),
    "a public key that is not one": (
        ["audit", "verify-export", "{wrong}", "--public-key", "{wrong}"],
        "not a PEM public key",
    ),
    "record from binary stdin": (["record", "{binary}"], "not a JSON object"),
}


#: Bad input that is also an attempt to read a customer's data: recorded in the access log.
LOGGED_ATTEMPTS = {"an unknown customer": ("360", "nobody", "not-found")}


def _touchpoints(ledger_dir: Path) -> int:
    from crm_ledger import bootstrap
    from crm_ledger.config import Settings

    with bootstrap.build(Settings.from_env({}, data_dir=ledger_dir)) as services:
        return services.ledger.count_events()


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_bad_options_and_arguments_are_one_line(
    name: str, runner: CliRunner, ledger_dir: Path, tmp_path: Path
) -> None:
    args, expected = OPTIONS[name]
    key = tmp_path / "public.pem"
    key.write_bytes(
        runner.invoke(cli, ["--data-dir", str(ledger_dir), "audit", "public-key"]).stdout_bytes
    )
    files = {
        "{wrong}": tmp_path / "wrong.jsonl",
        "{binary}": tmp_path / "binary.bin",
        "{key}": key,
    }
    files["{wrong}"].write_text('{"kind": "header"}\n[1, 2]\n')
    files["{binary}"].write_bytes(os.urandom(2048))
    argv = [str(files.get(a, a)) for a in args]
    before = _fingerprint(ledger_dir)
    touchpoints_before = _touchpoints(ledger_dir)
    _one_line_exit_1(runner.invoke(cli, ["--data-dir", str(ledger_dir), *argv]), expected)
    if name in LOGGED_ATTEMPTS:  # the attempt itself is kept: in the access log, and only there
        from crm_ledger import bootstrap
        from crm_ledger.config import Settings

        with bootstrap.build(Settings.from_env({}, data_dir=ledger_dir)) as services:
            last = services.access.every()[-1][1]
            assert (last.action, last.subject, last.outcome) == LOGGED_ATTEMPTS[name]
            assert services.ledger.count_events() == touchpoints_before
        return
    assert _fingerprint(ledger_dir) == before
