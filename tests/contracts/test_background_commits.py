"""Batches committed in the background (``record_many(wait=False)``: by a commit process on a
SQLite file, by a commit thread on PostgreSQL): the same stored history as committing each
batch before the next, and nothing half-stored or assumed when a batch in flight fails, does
not answer, or either process is killed."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from psycopg.sql import SQL, Identifier

from crm_ledger.adapters.eventstore import drop_postgres_schema, postgres_env, sqlite_env
from crm_ledger.aggregates import Touchpoint, customer_uuid
from crm_ledger.application import Ledger, Position
from crm_ledger.errors import BatchesNotStored
from tests.contracts.verifying import assert_verified
from tests.factories import AT, tp
from tests.integration.conftest import wait_until

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["sqlite", "postgres"])
def envs(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[[str], dict[str, str]]]:
    """Ledgers by name on SQLite files, then in PostgreSQL schemas (dropped afterwards)."""
    if request.param == "sqlite":
        yield lambda name: sqlite_env(str(tmp_path / f"{name}.sqlite"))
        return
    url = request.getfixturevalue("pg_url")
    schemas: dict[str, str] = {}

    def env(name: str) -> dict[str, str]:
        schema = schemas.setdefault(name, f"t_{os.urandom(6).hex()}_{name}")
        return postgres_env(url, schema)

    yield env
    for schema in schemas.values():
        drop_postgres_schema(url, schema)


@contextlib.contextmanager
def held(ledger: Ledger) -> Iterator[None]:
    """No batch commits meanwhile: the commit process is stopped (SQLite), or another
    session holds the table lock a commit takes first (PostgreSQL)."""
    recorder: Any = ledger.recorder
    committer = recorder.committer
    if hasattr(committer, "pid"):
        os.kill(committer.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(committer.pid, signal.SIGCONT)
        return
    table = SQL("{}.{}").format(
        Identifier(recorder.datastore.schema), Identifier(recorder.events_table_name)
    )
    with recorder.datastore.transaction(commit=False) as curs:
        # EXCLUSIVE: reads go on (a batch's preparation reads), appends wait.
        curs.execute(SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(table))
        yield


def _batches() -> list[list[Touchpoint]]:
    """Five batches over a few customers: personal data to seal, a merge, a customer past a
    snapshot interval, an event sent again while its first copy is in flight, and one sent
    again with other content."""
    first = tp("OrderPlaced", "B1", order_id="first")
    batches = [
        [tp("CustomerRegistered", c) for c in ("A1", "B1", "M1")] + [first],
        [tp("InteractionRecorded", "A1", at=AT + timedelta(minutes=i)) for i in range(150)],
        [first, tp("CustomersMerged", "M1", survivor_id="B1")]
        + [tp("InteractionRecorded", "A1", at=AT + timedelta(hours=i)) for i in range(150)],
        [tp("OrderPlaced", "M1", order_id="routed"), tp("InteractionRecorded", "B1")],
        [tp("OrderPlaced", "B1", order_id="other", event_id=first.event_id)],
    ]
    return batches


def _record(ledger: Ledger, *, wait: bool) -> list[tuple[int, int, int]]:
    results = []
    for n, batch in enumerate(_batches_once):
        r = ledger.record_many(batch, [Position("t", 0, n + 1)], wait=wait)
        results.append((r.recorded, r.duplicates, len(r.rejected)))
    ledger.flush()
    return results


_batches_once = _batches()


def _stored(ledger: Ledger) -> dict[str, Any]:
    """What the ledger holds, independent of when it was recorded."""
    streams = {
        c: [(r.version, r.kind, r.event_id, r.occurred, _unsealed(r.data)) for r in records]
        for c in ("A1", "B1", "M1")
        if (records := ledger.read_stream(c))
    }
    customers = {c: _business(ledger.customer(c)) for c in ("A1", "B1", "M1")}
    return {
        "streams": streams,
        "customers": customers,
        "positions": ledger.positions("t"),
        "receipts": ledger.ledger_recorder.count_receipts(),
    }


def _business(view: Any) -> dict[str, Any]:
    """A customer view without the moments it was recorded (each ledger has its own)."""
    return {k: v for k, v in dataclasses.asdict(view).items() if "record" not in k}


def _unsealed(data: dict[str, Any]) -> dict[str, Any]:
    """Sealed values differ by key and nonce: compare that they are sealed (the customer
    views compare what they open to)."""
    return {k: "sealed" if str(v).startswith("enc1:") else v for k, v in data.items()}


def test_background_batches_store_the_same_history_as_waited_ones(
    envs: Callable[[str], dict[str, str]], tmp_path: Path
) -> None:
    with Ledger(envs("waited")) as waited:
        expected_results = _record(waited, wait=True)
        expected = _stored(waited)
    with Ledger(envs("background")) as ledger:
        results = _record(ledger, wait=False)
        assert ledger.ledger_recorder.batches_sent == len(_batches_once)  # none waited
        assert (
            results
            == expected_results
            == [(4, 0, 0), (150, 0, 0), (151, 1, 0), (2, 0, 0), (0, 0, 1)]
        )
        assert _stored(ledger) == expected
        assert ledger.customer("B1").orders == 2  # its own, and the one routed from M1
        # Snapshots went with their batch, taken of the aggregate in memory, and open.
        snapshots = list(ledger.snapshots.get(customer_uuid("A1"))) if ledger.snapshots else []
        assert [s.originator_version for s in snapshots] == [302]  # the batch passed 200
        assert_verified(ledger, tmp_path / "keys")
    with Ledger(envs("background")) as reopened:
        assert _stored(reopened) == expected
        rebuilt = reopened.repository.get(customer_uuid("A1"))
        assert rebuilt.interactions == 300


def test_an_event_sent_again_while_its_first_copy_is_in_flight_is_a_duplicate(
    envs: Callable[[str], dict[str, str]],
) -> None:
    with Ledger(envs("ledger")) as ledger:
        ledger.record_many([tp("CustomerRegistered", "D1")], wait=False)
        ledger.flush()
        committer = ledger.recorder.committer  # type: ignore[attr-defined]
        committer.depth = 3  # none of the three batches below waits for an answer
        with held(ledger):  # nothing commits: they all stay in flight
            order = tp("OrderPlaced", "D1", order_id="O1")
            first = ledger.record_many([order], wait=False)
            again = ledger.record_many([order, tp("InteractionRecorded", "D1")], wait=False)
            changed = dataclasses.replace(order, data={**order.data, "amount_minor": 1})
            conflicting = ledger.record_many([changed], wait=False)
            assert ledger.batches_in_flight == 3
            assert ledger.ledger_recorder.count_receipts() == 1
        ledger.flush()
        assert (first.recorded, again.recorded, again.duplicates) == (1, 1, 1)
        assert [type(r.error).__name__ for r in conflicting.rejected] == ["ConflictingDuplicate"]
        assert ledger.customer("D1").orders == 1
        assert ledger.ledger_recorder.count_receipts() == 3


@pytest.mark.parametrize("depth", [1, 2])
def test_a_failed_batch_in_flight_is_reported_with_those_after_it_and_nothing_is_assumed(
    envs: Callable[[str], dict[str, str]], tmp_path: Path, depth: int
) -> None:
    env = envs("ledger")
    with Ledger(env) as ledger, Ledger(env) as other:
        registered = [tp("CustomerRegistered", "C1"), tp("CustomerRegistered", "C2")]
        ledger.record_many(registered, wait=False)
        ledger.flush()
        ledger.recorder.committer.depth = depth  # type: ignore[attr-defined]
        # Another writer moves C1 on behind this ledger's cached aggregate and chain head.
        other.record(tp("InteractionRecorded", "C1"))
        failing = [tp("OrderPlaced", "C1", order_id="mine")]
        after = [tp("OrderPlaced", "C2", order_id="after")]
        ledger.record_many(failing, [Position("t", 0, 1)], wait=False)
        if depth == 1:  # the next batch waits for the failed one's answer: its call raises
            with pytest.raises(BatchesNotStored) as raised:
                ledger.record_many(after, [Position("t", 0, 2)], wait=False)
        else:  # both are sent; the flush raises for both
            ledger.record_many(after, [Position("t", 0, 2)], wait=False)
            with pytest.raises(BatchesNotStored) as raised:
                ledger.flush()
        assert raised.value.batches == depth
        assert "conflict" in str(raised.value)
        assert ledger.positions("t") == {}  # neither batch is stored, not even the good one
        assert [h.details.get("order_id") for h in ledger.history("C2")] == [None]
        assert ledger.batches_in_flight == 0

        # Sent again, both are stored on the stored state (not on what the failed one
        # assumed), and the chain verifies.
        ledger.record_many(failing, [Position("t", 0, 1)], wait=False)
        ledger.record_many(after, [Position("t", 0, 2)], wait=False)
        ledger.flush()
        kinds = [h.event_type for h in ledger.history("C1")]
        assert kinds == ["CustomerRegistered", "InteractionRecorded", "OrderPlaced"]
        assert ledger.positions("t") == {0: 2}
        # The aggregate in memory is the stored one, not the one the failed batch changed.
        mine = ledger.customer("C1")
        assert (mine.orders, mine.interactions, mine.version) == (1, 1, 4)
        with Ledger(env) as fresh:
            assert fresh.customer("C1") == mine
        assert_verified(ledger, tmp_path / "keys")


def _rotating_batches() -> list[list[Touchpoint]]:
    """Twelve batches, each about three of seven customers in turn, each sending again the
    first event of the batch before it."""
    customers = [f"E{i}" for i in range(7)]
    batches = [[tp("CustomerRegistered", c) for c in customers]]
    for n in range(12):
        at = AT + timedelta(minutes=n)
        batch = [tp("InteractionRecorded", customers[(n * 3 + k) % 7], at=at) for k in range(3)]
        batches.append([*batch, batches[-1][0]])
    return batches


@pytest.mark.parametrize("depth", [1, 2, 16])
def test_aggregates_the_cache_lets_go_of_in_flight_come_from_their_batch(
    envs: Callable[[str], dict[str, str]], tmp_path: Path, depth: int
) -> None:
    # A cache of two customers lets go of aggregates whose batch is still in flight: read
    # again from the store they would be a version behind (a conflict, or a broken chain).
    # Depth 1 answers one batch while the next is sent, so "in flight" stays 1 throughout.
    batches = _rotating_batches()
    with Ledger(envs("waited")) as waited:
        expected = [waited.record_many(b) for b in batches]
        views = {c: waited.customer(c) for c in (f"E{i}" for i in range(7))}
        assert len({v.version for v in views.values()}) > 1  # customers moved on unevenly
    env = {**envs("ledger"), "AGGREGATE_CACHE_MAXSIZE": "2"}
    with Ledger(env) as ledger:
        results = [ledger.record_many(batches[0], wait=False)]
        ledger.flush()
        committer = ledger.recorder.committer  # type: ignore[attr-defined]
        committer.depth = depth
        # Held, every batch stays in flight until the end.
        with held(ledger) if depth >= len(batches) else contextlib.nullcontext():
            results += [ledger.record_many(b, wait=False) for b in batches[1:]]
            in_flight = ledger.batches_in_flight
        ledger.flush()

        assert in_flight == min(depth, len(batches) - 1)
        assert [(r.recorded, r.duplicates) for r in results] == [
            (r.recorded, r.duplicates) for r in expected
        ]
        assert sum(r.duplicates for r in results) == len(batches) - 1
        for customer, view in views.items():
            assert _business(ledger.customer(customer)) == _business(view)
        assert_verified(ledger, tmp_path / "keys")


def _commit_processes() -> list[int]:
    found = subprocess.run(
        ["pgrep", "-f", "crm_ledger.adapters.eventstore.sqlite_writer"],
        capture_output=True,
        text=True,
        check=False,
    )
    return [int(pid) for pid in found.stdout.split()]


def test_a_killed_commit_process_fails_its_batches_and_a_new_one_takes_over(
    tmp_path: Path,
) -> None:
    with Ledger(sqlite_env(str(tmp_path / "ledger.sqlite"))) as ledger:
        before = set(_commit_processes())
        ledger.record_many([tp("CustomerRegistered", "K1")], [Position("t", 0, 1)], wait=False)
        ledger.flush()
        (mine,) = set(_commit_processes()) - before
        # Stopped, it cannot read the next batch before it is killed: that batch is lost.
        os.kill(mine, signal.SIGSTOP)
        batch = [tp("OrderPlaced", "K1", order_id="O1")]
        ledger.record_many(batch, [Position("t", 0, 2)], wait=False)
        os.kill(mine, signal.SIGKILL)
        with pytest.raises(BatchesNotStored, match="the commit process ended") as raised:
            ledger.flush()
        assert raised.value.batches == 1
        assert ledger.positions("t") == {0: 1}
        ledger.record_many(batch, [Position("t", 0, 2)], wait=False)
        ledger.flush()
        (successor,) = set(_commit_processes()) - before
        assert successor != mine
        assert ledger.customer("K1").orders == 1
        assert ledger.positions("t") == {0: 2}
    assert not set(_commit_processes()) - before  # closing the ledger ends it


def test_a_postgres_batch_that_does_not_answer_is_cancelled_and_sent_again(
    pg_url: str, pg_schema: str
) -> None:
    with Ledger(postgres_env(pg_url, pg_schema)) as ledger:
        ledger.record_many([tp("CustomerRegistered", "H1")], [Position("t", 0, 1)], wait=False)
        ledger.flush()
        committer = ledger.recorder.committer  # type: ignore[attr-defined]
        committer.answer_timeout = 0.5
        batch = [tp("OrderPlaced", "H1", order_id="O1")]
        with held(ledger):
            ledger.record_many(batch, [Position("t", 0, 2)], wait=False)
            with pytest.raises(BatchesNotStored, match="canceling statement") as raised:
                ledger.flush()
        assert raised.value.batches == 1
        assert ledger.positions("t") == {0: 1}
        assert committer.alive  # the thread answered: it takes the batch again
        ledger.record_many(batch, [Position("t", 0, 2)], wait=False)
        ledger.flush()
        assert ledger.customer("H1").orders == 1
        assert ledger.positions("t") == {0: 2}


WRITER = textwrap.dedent(
    """
    import sys
    from crm_ledger.adapters.eventstore import postgres_env, sqlite_env
    from crm_ledger.application import Ledger, Position
    from tests.factories import tp

    env = sqlite_env(sys.argv[1]) if len(sys.argv) == 2 else postgres_env(*sys.argv[1:])
    with Ledger(env) as ledger:
        for n in range(1, 10_000):
            batch = [tp("OrderPlaced", f"C{i}", order_id=f"{n}-{i}") for i in range(50)]
            ledger.record_many(batch, [Position("t", 0, n)], wait=False)
            if n == 3:
                print("writing", flush=True)
    """
)


@pytest.mark.parametrize("moment", [0.0, 0.3, 0.9])
def test_a_ledger_killed_with_batches_in_flight_keeps_whole_batches_only(
    envs: Callable[[str], dict[str, str]],
    request: pytest.FixtureRequest,
    tmp_path: Path,
    moment: float,
) -> None:
    """SIGKILL while batches are in flight: every stored batch is whole (its position, its
    receipts, its events), a SQLite commit process ends by itself, and the chain verifies."""
    env = envs("ledger")
    if "SQLITE_DBNAME" in env:
        where = [env["SQLITE_DBNAME"]]
    else:
        where = [request.getfixturevalue("pg_url"), env["POSTGRES_SCHEMA"]]
    before = set(_commit_processes())
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, *where], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    assert child.stdout.readline() == "writing\n"
    wait_until(lambda: _stored_positions(where) >= 3 + moment * 20, 60, "batches stored")
    child.kill()
    child.wait()
    child.stdout.close()
    wait_until(lambda: not set(_commit_processes()) - before, 30, "the commit process ended")
    with Ledger(env) as ledger:
        position = ledger.positions("t")[0]
        # Batch n holds 50 orders and stores position n: whole batches, and nothing else.
        assert ledger.ledger_recorder.count_receipts() == 50 * position
        assert sum(ledger.customer(f"C{c}").orders for c in range(50)) == 50 * position
        assert_verified(ledger, tmp_path / "keys")


def _stored_positions(where: list[str]) -> int:
    """The newest position stored in the ledger (0 before its tables exist)."""
    import sqlite3

    query = "SELECT max(next_offset) FROM {}ledger_positions"
    if len(where) == 1:
        with sqlite3.connect(where[0], timeout=30) as conn:
            try:
                row = conn.execute(query.format("")).fetchone()
            except sqlite3.OperationalError:  # the tables are not made yet
                return 0
        return int(row[0] or 0)
    with psycopg.connect(where[0], autocommit=True) as pg:
        try:
            found = pg.execute(query.format(f'"{where[1]}".')).fetchone()  # type: ignore[arg-type]
        except psycopg.errors.UndefinedTable:
            return 0
    return int(found[0] or 0) if found else 0
