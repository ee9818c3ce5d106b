"""Tamper evidence on each real store: change the stored rows behind the ledger's back (a
byte of a payload, a deleted event, two swapped, a forged one, an altered checkpoint) and
`audit verify` finds and locates each one."""

from __future__ import annotations

import hashlib
import sqlite3
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

from crm_ledger.adapters.crypto import SealedValues, create_key_pair, load_signer
from crm_ledger.adapters.receipts import ReceiptFile
from crm_ledger.aggregates import customer_uuid
from crm_ledger.application import Ledger
from crm_ledger.audit import Auditor, chain_hash, content_hash
from tests.factories import AT, tp

if TYPE_CHECKING:
    from pathlib import Path


class Rows:
    """Raw access to the event store's tables, as someone with database access has."""

    def __init__(self, store_env: dict[str, str], pg_url: str | None) -> None:
        self.sqlite = "SQLITE_DBNAME" in store_env
        if self.sqlite:
            self.conn: Any = sqlite3.connect(store_env["SQLITE_DBNAME"])
            self.events = "stored_events"
        else:
            self.conn = psycopg.connect(pg_url or "", autocommit=True)
            schema = store_env["POSTGRES_SCHEMA"]
            self.conn.execute(f"SET search_path TO {schema}")
            self.events = "crmledger_events"

    def run(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        if not self.sqlite:
            sql = sql.replace("?", "%s")
        cursor = self.conn.execute(sql.format(events=self.events), params)
        rows = cursor.fetchall() if cursor.description else []
        if self.sqlite:
            self.conn.commit()
        return rows

    def key(self, customer: str) -> Any:
        stream = customer_uuid(customer)
        return stream.hex if self.sqlite else stream

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def history(
    ledger: Ledger, store_env: dict[str, str], request: pytest.FixtureRequest, tmp_path: Path
) -> Any:
    """Three customers with a few events each, a signed checkpoint, then one more event each."""
    for c in ("C1", "C2", "C3"):
        ledger.record_many(
            [tp("CustomerRegistered", c)]
            + [tp("OrderPlaced", c, order_id=f"{c}-{i}", amount_minor=100 + i) for i in range(4)]
        )
    create_key_pair(tmp_path / "keys")
    auditor = Auditor(
        ledger.recorder,  # type: ignore[arg-type]
        load_signer(tmp_path / "keys"),
        ledger.log_head,
        SealedValues(),
        receipts=ReceiptFile(tmp_path / "keys" / "receipts.jsonl"),
    )
    auditor.checkpoint()
    for c in ("C1", "C2", "C3"):
        ledger.record(tp("InteractionRecorded", c, at=AT))
    pg_url = None if "SQLITE_DBNAME" in store_env else request.getfixturevalue("pg_url")
    rows = Rows(store_env, pg_url)
    yield auditor, rows
    rows.close()


def found(auditor: Auditor) -> set[tuple[str, int | None, str]]:
    result = auditor.verify()
    return {(f.stream.hex(), f.version, f.problem) for f in result.findings}


def stream(customer: str) -> str:
    return customer_uuid(customer).hex


def test_an_untouched_history_verifies(history: Any) -> None:
    auditor, _ = history
    result = auditor.verify()
    assert result.ok, result.findings
    assert (result.events, result.streams, result.checkpoints) == (21, 3, 1)


def test_a_changed_byte_in_a_payload_is_found(history: Any) -> None:
    auditor, rows = history
    (state,) = rows.run(
        "SELECT state FROM {events} WHERE originator_id=? AND originator_version=3", rows.key("C2")
    )[0]
    forged = bytes(state).replace(b'"amount_minor":100', b'"amount_minor":900')
    assert forged != bytes(state)
    rows.run(
        "UPDATE {events} SET state=? WHERE originator_id=? AND originator_version=3",
        forged,
        rows.key("C2"),
    )
    assert found(auditor) == {
        (stream("C2"), 3, "modified"),
        (stream("C2"), 6, "history changed"),  # the signed head no longer follows
    }


def test_a_deleted_event_is_found(history: Any) -> None:
    auditor, rows = history
    # The newest event, after the checkpoint: its receipt is the witness.
    rows.run("DELETE FROM {events} WHERE originator_id=? AND originator_version=7", rows.key("C1"))
    assert found(auditor) == {(stream("C1"), 7, "deleted")}


def test_an_event_deleted_from_the_middle_is_found(history: Any) -> None:
    auditor, rows = history
    rows.run("DELETE FROM {events} WHERE originator_id=? AND originator_version=3", rows.key("C1"))
    problems = found(auditor)
    assert (stream("C1"), 3, "deleted") in problems
    assert (stream("C1"), 6, "history changed") in problems  # the signed head moved


def test_two_swapped_events_are_found(history: Any) -> None:
    auditor, rows = history
    key = rows.key("C3")
    ((s3,),) = rows.run(
        "SELECT state FROM {events} WHERE originator_id=? AND originator_version=3", key
    )
    ((s4,),) = rows.run(
        "SELECT state FROM {events} WHERE originator_id=? AND originator_version=4", key
    )
    rows.run("UPDATE {events} SET state=? WHERE originator_id=? AND originator_version=3", s4, key)
    rows.run("UPDATE {events} SET state=? WHERE originator_id=? AND originator_version=4", s3, key)
    assert found(auditor) == {
        (stream("C3"), 3, "reordered"),
        (stream("C3"), 4, "reordered"),
        (stream("C3"), 6, "history changed"),
    }


def test_a_forged_event_is_found(history: Any) -> None:
    auditor, rows = history
    ((topic, state, content, chained),) = rows.run(
        "SELECT topic, state, content_hash, chain_hash FROM {events} "
        "WHERE originator_id=? AND originator_version=7",
        rows.key("C1"),
    )
    # The forger copies the newest event and its hashes as a version 8.
    rows.run(
        "INSERT INTO {events} (originator_id, originator_version, topic, state, content_hash, "
        "chain_hash) VALUES (?,?,?,?,?,?)",
        rows.key("C1"),
        8,
        topic,
        state,
        content,
        chained,
    )
    assert found(auditor) == {
        (stream("C1"), 8, "reordered"),  # it holds the event chained as version 7
        (stream("C1"), 8, "chain broken"),
    }


def test_a_rewritten_event_with_a_recomputed_chain_is_found_by_the_checkpoint(
    history: Any,
) -> None:
    auditor, rows = history
    key = rows.key("C2")
    ((_topic, state),) = rows.run(
        "SELECT topic, state FROM {events} WHERE originator_id=? AND originator_version=2", key
    )
    forged = bytes(state).replace(b'"region":"north"', b'"region":"south"')
    rows.run(
        "UPDATE {events} SET state=? WHERE originator_id=? AND originator_version=2", forged, key
    )
    # The forger also rewrites the chain from there on, consistently.
    raw = customer_uuid("C2").bytes
    events = rows.run(
        "SELECT originator_version, topic, state FROM {events} "
        "WHERE originator_id=? ORDER BY originator_version",
        key,
    )
    previous = bytes(32)
    for version, t, s in events:
        content = content_hash(raw, version, t, bytes(s))
        previous = chain_hash(previous, content)
        rows.run(
            "UPDATE {events} SET content_hash=?, chain_hash=? "
            "WHERE originator_id=? AND originator_version=?",
            content,
            previous,
            key,
            version,
        )
    assert found(auditor) == {(stream("C2"), 6, "history changed")}


def test_an_altered_checkpoint_is_found(history: Any) -> None:
    auditor, rows = history
    rows.run(
        "UPDATE ledger_checkpoint_heads SET chain_hash=? WHERE originator_id=?",
        hashlib.sha256(b"forged").digest(),
        customer_uuid("C1").bytes,
    )
    assert found(auditor) == {("", None, "checkpoint altered")}


def test_erasure_leaves_no_personal_value_in_any_table(
    ledger: Ledger, store_env: dict[str, str], request: pytest.FixtureRequest
) -> None:
    personal = {
        "name": "Ximena Oyelaran",
        "email": "xo@example.org",
        "phone": "+1 555 0100",
        "address": "1 Elm St",
    }
    ledger.record_many(
        [
            tp("CustomerRegistered", "C7", **personal),
            tp("InteractionRecorded", "C7", note="Ximena asked for a call back"),
            tp("OrderPlaced", "C7", amount_minor=4200),
            # enough events for a snapshot, which holds the profile too
            *(tp("InteractionRecorded", "C7") for _ in range(200)),
        ]
    )
    secrets = [*personal.values(), "Ximena asked for a call back"]
    assert ledger.customer("C7").profile["name"] == personal["name"]
    assert ledger.erase("C7", reason="request") == ["C7"]
    assert ledger.customer("C7").profile == {}
    details = next(h.details for h in ledger.history("C7") if h.event_type == "CustomerRegistered")
    assert details["email"] is None
    assert details["country"] == "DE"

    pg_url = None if "SQLITE_DBNAME" in store_env else request.getfixturevalue("pg_url")
    rows = Rows(store_env, pg_url)
    try:
        if rows.sqlite:
            tables = [t for (t,) in rows.run("SELECT name FROM sqlite_master WHERE type='table'")]
        else:
            tables = [
                t
                for (t,) in rows.run(
                    "SELECT table_name FROM information_schema.tables WHERE table_schema=?",
                    store_env["POSTGRES_SCHEMA"],
                )
            ]
        assert "ledger_keys" in tables
        snapshots = next(t for t in tables if t.endswith("snapshots"))
        assert rows.run(f"SELECT count(*) FROM {snapshots}")[0][0] >= 1
        for table in tables:
            for row in rows.run(f"SELECT * FROM {table}"):
                text = b" ".join(
                    bytes(v) if isinstance(v, bytes | memoryview) else str(v).encode() for v in row
                )
                for secret in secrets:
                    assert secret.encode() not in text, (table, secret)
        ((key,),) = rows.run(
            "SELECT data_key FROM ledger_keys WHERE originator_id=?", customer_uuid("C7").bytes
        )
        assert key is None
    finally:
        rows.close()


def _key_of(rows: Rows, customer: str) -> Any:
    return customer_uuid(customer).bytes


def test_a_data_key_nulled_without_customer_erased_is_found(history: Any) -> None:
    auditor, rows = history
    assert found(auditor) == set()
    rows.run("UPDATE ledger_keys SET data_key=NULL WHERE originator_id=?", _key_of(rows, "C2"))
    assert found(auditor) == {(stream("C2"), None, "key destroyed")}


def test_a_data_key_replaced_is_found(history: Any) -> None:
    auditor, rows = history
    rows.run(
        "UPDATE ledger_keys SET data_key=? WHERE originator_id=?", b"k" * 32, _key_of(rows, "C1")
    )
    assert found(auditor) == {(stream("C1"), None, "key changed")}


def test_a_data_key_row_deleted_is_found(history: Any) -> None:
    auditor, rows = history
    rows.run("DELETE FROM ledger_keys WHERE originator_id=?", _key_of(rows, "C3"))
    assert found(auditor) == {(stream("C3"), None, "key missing")}


def test_a_key_destroyed_by_erase_is_not_a_finding(ledger: Ledger, history: Any) -> None:
    auditor, _rows = history
    ledger.erase("C1", reason="request")
    assert found(auditor) == set()


def test_an_edited_snapshot_is_never_used_and_verify_names_it(
    store_env: dict[str, str], request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    from crm_ledger.application import Ledger

    key = b"s" * 32
    with Ledger(store_env, snapshot_key=key) as ledger:
        ledger.record_many(
            [tp("CustomerRegistered", "C9")]
            + [tp("OrderPlaced", "C9", order_id=f"O{i}", amount_minor=100) for i in range(229)]
        )
        assert ledger.customer("C9").orders == 229
    pg_url = None if "SQLITE_DBNAME" in store_env else request.getfixturevalue("pg_url")
    rows = Rows(store_env, pg_url)
    table = "stored_snapshots" if rows.sqlite else "crmledger_snapshots"
    try:
        [(version, state)] = rows.run(f"SELECT originator_version, state FROM {table}")
        state = bytes(state)
        assert b'"orders":' in state
        with Ledger(store_env, snapshot_key=key) as ledger:  # an untouched snapshot is used
            stream_id = customer_uuid("C9")
            assert [s.originator_version for s in ledger.snapshots.get(stream_id)] == [version]
        forged = state.replace(b'"orders":198', b'"orders":9198')
        assert forged != state
        rows.run(f"UPDATE {table} SET state=?", forged)
        create_key_pair(tmp_path / "keys")
        with Ledger(store_env, snapshot_key=key) as ledger:
            assert list(ledger.snapshots.get(stream_id)) == []  # never used...
            assert ledger.customer("C9").orders == 229  # ...the events tell the truth
            auditor = Auditor(
                ledger.recorder,  # type: ignore[arg-type]
                load_signer(tmp_path / "keys"),
                ledger.log_head,
                SealedValues(),
                ledger.mapper,  # type: ignore[arg-type]
            )
            assert found(auditor) == {(stream("C9"), version, "snapshot altered")}
    finally:
        rows.close()


def _three_checkpoints(history: Any, ledger: Ledger) -> tuple[Auditor, Rows]:
    auditor, rows = history
    for _ in range(2):
        ledger.record(tp("InteractionRecorded", "C1", at=AT))
        auditor.checkpoint()
    assert [cp.checkpoint_id for cp in auditor.store.checkpoints()] == [1, 2, 3]
    assert found(auditor) == set()
    return auditor, rows


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("created_at", "2020-01-01T00:00:00+00:00"),
        ("position", 1),
        ("streams", 2),
        ("digest", b"\x00" * 32),
        ("signature", b"\x01" * 64),
    ],
)
def test_every_field_of_a_checkpoint_is_signed(
    history: Any, ledger: Ledger, column: str, value: Any
) -> None:
    auditor, rows = _three_checkpoints(history, ledger)
    rows.run(f"UPDATE ledger_checkpoints SET {column}=? WHERE checkpoint_id=2", value)
    problems = {(problem, detail.split(":")[0]) for problem, detail in problems_of(auditor)}
    assert ("checkpoint altered", "checkpoint 2") in problems


def problems_of(auditor: Auditor) -> set[tuple[str, str]]:
    return {(f.problem, f.detail) for f in auditor.verify().findings}


def test_a_checkpoint_removed_from_the_middle_breaks_the_link_and_the_copy(
    history: Any, ledger: Ledger
) -> None:
    auditor, rows = _three_checkpoints(history, ledger)
    rows.run("DELETE FROM ledger_checkpoint_heads WHERE checkpoint_id=2")
    rows.run("DELETE FROM ledger_checkpoints WHERE checkpoint_id=2")
    problems = {p for p, _ in problems_of(auditor)}
    assert {"checkpoint altered", "checkpoint removed"} <= problems


def test_every_checkpoint_removed_is_found_against_the_auditors_copy(
    history: Any, ledger: Ledger
) -> None:
    auditor, rows = _three_checkpoints(history, ledger)
    rows.run("DELETE FROM ledger_checkpoint_heads")
    rows.run("DELETE FROM ledger_checkpoints")
    result = auditor.verify()
    assert result.checkpoints == 0
    removed = [f.detail for f in result.findings if f.problem == "checkpoint removed"]
    assert [d.split(" signed")[0] for d in removed] == [
        "checkpoint 1",
        "checkpoint 2",
        "checkpoint 3",
    ]


def test_a_history_re_signed_with_a_key_that_is_not_the_auditors_is_found(
    history: Any, ledger: Ledger, tmp_path: Path
) -> None:
    auditor, rows = history
    # Rewrite an event and its chain, then sign the new heads with a key of one's own.
    [(state,)] = rows.run(
        "SELECT state FROM {events} WHERE originator_id=? AND originator_version=3",
        rows.key("C2"),
    )
    forged = bytes(state).replace(b'"amount_minor":101', b'"amount_minor":901')
    rows.run(
        "UPDATE {events} SET state=? WHERE originator_id=? AND originator_version=3",
        forged,
        rows.key("C2"),
    )
    links = rows.run(
        "SELECT originator_version, content_hash FROM {events} WHERE originator_id=? "
        "ORDER BY originator_version",
        rows.key("C2"),
    )
    previous = bytes(32)
    topics = dict(
        rows.run(
            "SELECT originator_version, topic FROM {events} WHERE originator_id=?",
            rows.key("C2"),
        )
    )
    for version, content in links:
        if version == 3:
            content = content_hash(customer_uuid("C2").bytes, 3, topics[3], forged)
        previous = chain_hash(previous, bytes(content))
        rows.run(
            "UPDATE {events} SET content_hash=?, chain_hash=? "
            "WHERE originator_id=? AND originator_version=?",
            bytes(content),
            previous,
            rows.key("C2"),
            version,
        )
    create_key_pair(tmp_path / "forger")
    forger = Auditor(
        ledger.recorder,  # type: ignore[arg-type]
        load_signer(tmp_path / "forger"),
        ledger.log_head,
    )
    rows.run("DELETE FROM ledger_checkpoint_heads")
    rows.run("DELETE FROM ledger_checkpoints")
    forger.checkpoint()
    assert forger.verify().ok  # consistent under the forger's own key...
    problems = {p for p, _ in problems_of(auditor)}  # ...not under the auditor's
    assert {"checkpoint altered", "checkpoint removed"} <= problems


def test_a_ledger_with_its_chain_in_a_table_of_its_own_moves_it_into_the_events(
    history: Any, store_env: dict[str, str]
) -> None:
    """Ledgers written before the chain became columns of the events table: opening one moves
    the chain in and drops the old table; what was signed still verifies, and appends go on."""
    auditor, rows = history
    if rows.sqlite:
        rows.conn.create_function("unhex", 1, bytes.fromhex)  # SQLite has it from 3.41
    rows.run(
        "CREATE TABLE ledger_chain AS SELECT {stream} AS originator_id, originator_version, "
        "content_hash, chain_hash FROM {events}".replace(
            "{stream}", "unhex(originator_id)" if rows.sqlite else "uuid_send(originator_id)"
        )
    )
    rows.run("ALTER TABLE {events} DROP COLUMN content_hash")
    rows.run("ALTER TABLE {events} DROP COLUMN chain_hash")
    with Ledger(store_env) as reopened:
        reopened.record(tp("InteractionRecorded", "C1", at=AT))
    assert rows.run("SELECT COUNT(*) FROM {events} WHERE chain_hash IS NULL") == [(0,)]
    result = auditor.verify()
    assert result.ok, result.findings
    assert result.events == 22
    tables = (
        "SELECT name FROM sqlite_master WHERE name='ledger_chain'"
        if rows.sqlite
        else "SELECT tablename FROM pg_tables WHERE tablename='ledger_chain' "
        "AND schemaname = current_schema()"
    )
    assert rows.run(tables) == []
