"""Erasure as a regulator would check it: after `erase`, read every file of the store (the
SQLite folder; PostgreSQL's whole data directory: tables, WAL, statistics) and the planner
statistics catalog, take every piece of candidate key material found there, and try it on the
erased customers' sealed fields: nothing may decrypt, for a customer and for a duplicate that
was merged into a survivor."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from crm_ledger.adapters.crypto import SEALED, WRAPPED, Keyring
from crm_ledger.aggregates import customer_uuid
from crm_ledger.application import Ledger
from tests.factories import tp

if TYPE_CHECKING:
    from collections.abc import Iterator

#: A wrapped data key: marker, KEK number, nonce, 32-byte key, tag.
WRAPPED_SIZE = len(WRAPPED) + 4 + 12 + 32 + 16


def _files(store_env: dict[str, str], pg_url: str | None) -> Iterator[Path]:
    if "SQLITE_DBNAME" in store_env:
        yield from Path(store_env["SQLITE_DBNAME"]).parent.rglob("*")
        return
    with psycopg.connect(pg_url or "", autocommit=True) as conn:
        conn.execute("CHECKPOINT")  # everything the server holds is in its files now
        row = conn.execute("SHOW data_directory").fetchone()
    assert row is not None
    folder = Path(row[0])
    if not folder.is_dir():
        pytest.fail(f"the PostgreSQL data directory {folder} must be readable by the tests")
    yield from folder.rglob("*")


def _sealed_fields(ledger: Ledger, customer: str) -> list[tuple[bytes, str, str]]:
    """(key's stream, field, sealed value) of every personal value sent for ``customer``: in
    its own stream, and routed to the survivor S7 after a merge."""
    found = []
    for stream in (customer_uuid(customer), customer_uuid("S7")):
        for row in ledger.ledger_recorder.select_stream(stream):
            state = bytes(row[4])
            if SEALED.encode() not in state:
                continue
            values = json.loads(state)
            own = customer if stream == customer_uuid(customer) else None
            if (values.get("addressed_to") or own) != customer:
                continue
            found += [
                (customer_uuid(customer).bytes, name, value)
                for name, value in values.items()
                if isinstance(value, str) and value.startswith(SEALED)
            ]
    return found


def _opens(key: bytes, stream: bytes, field: str, value: str) -> bool:
    raw = base64.urlsafe_b64decode(value[len(SEALED) :])
    try:
        AESGCM(key).decrypt(raw[:12], raw[12:], stream + field.encode())
    except (InvalidTag, ValueError):
        return False
    return True


def _candidate_keys(data: bytes, keyring: Keyring) -> Iterator[bytes]:
    """Every wrapped key in ``data`` whose KEK still exists (the rest nobody can unwrap)."""
    start = data.find(WRAPPED)
    while start >= 0:
        blob = data[start : start + WRAPPED_SIZE]
        kek = keyring.keks.get(int.from_bytes(blob[2:6], "big"))
        if kek is not None and len(blob) == WRAPPED_SIZE:
            yield blob  # tried below against each stream
        start = data.find(WRAPPED, start + 1)


def test_after_erase_nothing_in_any_file_or_catalog_decrypts_the_erased_data(
    store_env: dict[str, str], request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    pg_url = None if "SQLITE_DBNAME" in store_env else request.getfixturevalue("pg_url")
    keyring = Keyring(tmp_path / "keys")
    with Ledger(store_env, keyring=keyring) as ledger:
        ledger.record_many(
            [
                tp("CustomerRegistered", "C7", name="Ximena Oyelaran", email="xo@example.org"),
                tp("CustomerRegistered", "S7", name="Sam Survivor"),
                tp("CustomerRegistered", "D7", name="Dee Duplicate", email="dee@example.org"),
                tp("InteractionRecorded", "C7", note="Ximena asked for a call back"),
            ]
        )
        ledger.record(tp("CustomersMerged", "D7", survivor_id="S7"))
        ledger.record(tp("InteractionRecorded", "D7", note="Dee asked about the parcel"))
        data_keys: Any = ledger.mapper.data_keys  # type: ignore[attr-defined]
        raw = {c: data_keys.keys[customer_uuid(c).bytes] for c in ("C7", "D7", "S7")}
        sealed = {c: _sealed_fields(ledger, c) for c in ("C7", "D7")}
        assert all(len(v) >= 2 for v in sealed.values()), sealed
        assert all(_opens(raw[c], *s) for c in sealed for s in sealed[c])

        assert ledger.erase("C7", reason="request") == ["C7"]
        assert ledger.erase("D7", reason="request") == ["D7"]
        assert ledger.customer("S7").profile["name"] == "Sam Survivor"  # others stay readable

    keyring = Keyring(tmp_path / "keys")  # what is left of the KEKs after the rotations
    statistics = ""
    if pg_url is not None:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("ANALYZE")
            statistics = str(conn.execute("SELECT * FROM pg_stats").fetchall())
    tried = 0
    for path in _files(store_env, pg_url):
        if not path.is_file():
            continue
        data = path.read_bytes()
        for customer in ("C7", "D7"):
            key = raw[customer]
            assert key not in data, (path, customer)  # the raw key is in no file...
            assert key.hex() not in statistics, customer  # ...nor in the statistics
        for blob in _candidate_keys(data, keyring):
            for customer in ("C7", "D7"):
                unwrapped = keyring.unwrap(customer_uuid(customer).bytes, blob)
                tried += 1
                if unwrapped is not None:
                    assert not any(_opens(unwrapped, *s) for s in sealed[customer]), path
    assert tried > 0  # wrapped keys were found and tried (those of S7, still live)
