"""The ledger's contract: the same test bodies run on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from eventsourcing.persistence import StoredEvent
from eventsourcing.utils import get_topic

from crm_ledger.aggregates import Customer, customer_uuid
from crm_ledger.application import Ledger, OutboxLetter, Position
from crm_ledger.errors import (
    ConflictingDuplicate,
    CustomerNotFound,
    ErasedCustomerError,
    InvalidEvent,
    MergeError,
)
from tests.factories import AT, spy_on_key_look_ups, tp


@pytest.fixture
def ledger(any_ledger: Ledger) -> Ledger:
    """This contract holds on every store, the in-memory one included."""
    return any_ledger


def test_a_recorded_touchpoint_shows_in_the_customer_and_its_history(ledger: Ledger) -> None:
    registered = tp("CustomerRegistered", "C1", actor="agent-7")
    order = tp("OrderPlaced", "C1", at=AT + timedelta(days=3))
    result = ledger.record_many([registered, order])

    assert (result.recorded, result.duplicates, result.rejected) == (2, 0, [])
    view = ledger.customer("C1")
    assert view.profile["email"] == "ada@example.org"
    assert view.lifecycle_stage == "customer"  # promoted from lead by the order
    assert view.orders == 1
    assert view.first_occurred_at == AT
    assert view.last_occurred_at == AT + timedelta(days=3)
    history = ledger.history("C1")
    assert [h.event_type for h in history] == ["CustomerRegistered", "OrderPlaced"]
    assert history[0].actor == "agent-7"
    assert history[0].event_id == registered.event_id
    assert history[1].occurred_at == AT + timedelta(days=3)
    assert history[1].recorded_at > AT + timedelta(days=365)  # the ledger's own clock
    assert history[1].details["amount_minor"] == 1299


def test_an_unknown_customer_is_reported_not_invented(ledger: Ledger) -> None:
    with pytest.raises(CustomerNotFound):
        ledger.customer("nobody")
    with pytest.raises(CustomerNotFound):
        ledger.history("nobody")


def test_a_duplicate_event_id_is_acknowledged_and_stored_nowhere(ledger: Ledger) -> None:
    order = tp("OrderPlaced", "C1")
    first = ledger.record_many([order, order])
    again = ledger.record_many([order])

    assert (first.recorded, first.duplicates) == (1, 1)
    assert (again.recorded, again.duplicates) == (0, 1)
    assert ledger.record(order) is False
    assert ledger.count_events() == 1
    assert ledger.customer("C1").orders == 1
    assert len(ledger.history("C1")) == 1


def test_dedup_is_permanent_across_restarts(store_env: dict[str, str]) -> None:
    order = tp("OrderPlaced", "C1")
    with Ledger(store_env) as first:
        assert first.record(order) is True
    with Ledger(store_env) as second:
        assert second.record(order) is False
        assert second.count_events() == 1


def test_a_bad_event_is_rejected_and_the_rest_of_the_batch_is_stored(ledger: Ledger) -> None:
    good = tp("OrderPlaced", "C1")
    negative = tp("OrderPlaced", "C2", amount_minor=-5)
    future = tp("InteractionRecorded", "C3", at=datetime.now(UTC) + timedelta(days=30))
    result = ledger.record_many([good, negative, future])

    assert result.recorded == 1
    assert [(r.index, type(r.error)) for r in result.rejected] == [
        (1, InvalidEvent),
        (2, InvalidEvent),
    ]
    assert result.rejected[0].error.field == "amount_minor"  # type: ignore[attr-defined]
    assert result.rejected[1].error.field == "occurred_at"  # type: ignore[attr-defined]
    with pytest.raises(CustomerNotFound):  # no trace of a customer opened for a refused event
        ledger.customer("C2")


def test_events_after_a_merge_are_routed_to_the_survivor_until_unmerged(ledger: Ledger) -> None:
    ledger.record_many([tp("CustomerRegistered", "S1"), tp("CustomerRegistered", "D1")])
    ledger.record(tp("CustomersMerged", "D1", survivor_id="S1"))
    routed = tp("OrderPlaced", "D1", order_id="O-after-merge")
    ledger.record(routed)

    survivor, duplicate = ledger.customer("S1"), ledger.customer("D1")
    assert duplicate.merged_into == "S1"
    assert survivor.merged_from == ["D1"]
    assert survivor.orders == 1
    assert duplicate.orders == 0
    assert ledger.history("S1")[-1].addressed_to == "D1"

    ledger.record(tp("CustomersUnmerged", "D1", survivor_id="S1"))
    ledger.record(tp("OrderPlaced", "D1", order_id="O-after-unmerge"))
    assert ledger.customer("D1").merged_into is None
    assert ledger.customer("D1").orders == 1
    assert ledger.customer("S1").merged_from == []
    assert ledger.customer("S1").orders == 1


def test_a_merge_that_does_not_fit_changes_neither_customer(ledger: Ledger) -> None:
    ledger.record_many([tp("CustomerRegistered", "A"), tp("CustomerRegistered", "B")])
    ledger.record(tp("CustomersMerged", "A", survivor_id="B"))
    before_a, before_b = ledger.customer("A"), ledger.customer("B")

    result = ledger.record_many([tp("CustomersMerged", "A", survivor_id="C")])
    assert isinstance(result.rejected[0].error, MergeError)
    with pytest.raises(MergeError):
        ledger.record(tp("CustomersUnmerged", "A", survivor_id="C"))

    assert ledger.customer("A") == before_a
    assert ledger.customer("B") == before_b
    with pytest.raises(CustomerNotFound):
        ledger.customer("C")


def test_an_erased_customer_accepts_no_personal_data_but_keeps_its_facts(ledger: Ledger) -> None:
    ledger.record_many([tp("CustomerRegistered", "C1"), tp("OrderPlaced", "C1")])
    ledger.record(tp("CustomerErased", "C1"))

    with pytest.raises(ErasedCustomerError, match="email"):
        ledger.record(tp("ProfileUpdated", "C1"))
    with pytest.raises(ErasedCustomerError, match="note"):
        ledger.record(tp("InteractionRecorded", "C1", note="called about parcel"))
    assert ledger.record(tp("OrderPlaced", "C1", order_id="O2")) is True
    assert ledger.record(tp("ProfileUpdated", "C1", email=None, address=None)) is True

    view = ledger.customer("C1")
    assert view.erased
    assert view.profile == {"segment": "smb"}
    assert view.orders == 2


def test_organisations_and_initiatives_keep_their_own_state(ledger: Ledger) -> None:
    ledger.record_many(
        [
            tp("OrganisationRegistered", "ORG1"),
            tp("ContactLinkedToOrganisation", "C1", role="buyer"),
            tp("ContactLinkedToOrganisation", "C2", role="finance"),
            tp("InitiativeStarted", "INI1"),
            tp("InitiativeEnded", "INI1", at=AT + timedelta(days=90)),
        ]
    )
    org = ledger.organisation("ORG1")
    assert org is not None
    assert org.profile["name"] == "Acme BV"
    assert org.version == 2  # opened, registered: the contacts' links live in their own streams
    assert ledger.customer("C1").organisations == {"ORG1": "buyer"}
    assert ledger.customer("C2").organisations == {"ORG1": "finance"}
    initiative = ledger.initiative("INI1")
    assert initiative is not None
    assert (initiative.started_at, initiative.ended_at) == (AT, AT + timedelta(days=90))
    assert initiative.matches({"region": "north", "segment": "smb"})
    assert not initiative.matches({"region": "south"})
    assert ledger.organisation("INI1") is None


def test_history_as_of_shows_only_what_was_recorded_by_then(ledger: Ledger) -> None:
    ledger.record(tp("CustomerRegistered", "C1"))
    cutoff = ledger.history("C1")[-1].recorded_at
    ledger.record(tp("OrderPlaced", "C1"))

    assert [h.event_type for h in ledger.history("C1", as_of=cutoff)] == ["CustomerRegistered"]
    assert len(ledger.history("C1")) == 2
    assert ledger.history("C1", as_of=cutoff - timedelta(days=1)) == []


def test_positions_are_stored_with_the_events_in_one_transaction(ledger: Ledger) -> None:
    ledger.record_many([tp("OrderPlaced", "C1")], positions=[Position("crm.touchpoints", 0, 11)])
    ledger.record_many([], positions=[Position("crm.touchpoints", 0, 12)])
    ledger.record_many([tp("OrderPlaced", "C2")], positions=[Position("crm.touchpoints", 3, 7)])

    assert ledger.ledger_recorder.positions("crm.touchpoints") == {0: 12, 3: 7}
    assert ledger.ledger_recorder.positions("elsewhere") == {}


def test_a_stale_writer_retries_and_both_writes_survive(store_env: dict[str, str]) -> None:
    with Ledger(store_env) as one, Ledger(store_env) as two:
        one.record(tp("CustomerRegistered", "C1"))
        two.record(tp("OrderPlaced", "C1", order_id="O1"))  # two caches C1 at version 3
        one.record(tp("OrderPlaced", "C1", order_id="O2"))  # one moves C1 on behind two's back
        two.record(tp("OrderPlaced", "C1", order_id="O3"))  # conflict: reload and retry

        assert [h.details.get("order_id") for h in one.history("C1")] == [None, "O1", "O2", "O3"]
        assert two.customer("C1").orders == 3
        assert one.customer("C1").orders == 2  # one's view: what it has seen, never more
        one.record(tp("InteractionRecorded", "C1"))
        assert one.customer("C1").orders == 3


def test_a_long_lived_customer_is_snapshotted_and_rebuilds_the_same(ledger: Ledger) -> None:
    events = [tp("InteractionRecorded", "C1", at=AT + timedelta(hours=i)) for i in range(450)]
    ledger.record_many(events[:250])
    ledger.record_many(events[250:])

    snapshots = list(ledger.snapshots.get(customer_uuid("C1"))) if ledger.snapshots else []
    assert [s.originator_version for s in snapshots] == [200, 400]
    replayed = ledger.repository.get(customer_uuid("C1"), version=451)
    assert isinstance(replayed, Customer)
    assert replayed.interactions == ledger.customer("C1").interactions == 450


def test_an_order_stored_by_version_1_is_read_through_its_upcaster(
    store_env: dict[str, str],
) -> None:
    with Ledger(store_env) as ledger:
        ledger.record(tp("CustomerRegistered", "C1"))
    v1_state = {
        "timestamp": {"_type_": "datetime_iso", "_data_": "2024-05-01T10:00:00+00:00"},
        "event_id": {"_type_": "uuid_hex", "_data_": "0" * 31 + "1"},
        "occurred_at": {"_type_": "datetime_iso", "_data_": "2024-05-01T09:00:00+00:00"},
        "source": "legacy-shop",
        "actor": None,
        "correlation_id": None,
        "addressed_to": None,
        "order_id": "OLD-1",
        "amount_minor": 4200,
        "currency": "EUR",
        "channel": None,
    }
    old = StoredEvent(
        originator_id=customer_uuid("C1"),
        originator_version=3,
        topic=get_topic(Customer.OrderPlaced),
        state=json.dumps(v1_state).encode(),
    )
    with Ledger(store_env) as ledger:
        ledger.recorder.insert_events([old])

    with Ledger(store_env) as ledger:
        order = ledger.history("C1")[-1]
        orders = ledger.customer("C1").orders
    assert order.details == {
        "order_id": "OLD-1",
        "amount_minor": 4200,
        "currency": "EUR",
        "margin_minor": None,
        "items": 1,
        "channel": None,
    }
    assert orders == 1


def test_a_refused_event_sent_again_later_in_a_batch_is_judged_afresh(ledger: Ledger) -> None:
    register_again = tp("CustomerRegistered", "C1")
    batch = [
        tp("CustomerRegistered", "C1"),
        tp("CustomerErased", "C1"),
        register_again,  # refused: C1 is erased
        tp("CustomersMerged", "C1", survivor_id="C2"),
        register_again,  # judged again, not a duplicate: still refused, though it would be
        # routed to C2 now (an erased customer takes no personal data in any stream)
    ]
    result = ledger.record_many(batch)

    assert (result.recorded, result.duplicates, len(result.rejected)) == (3, 0, 2)
    assert all(isinstance(r.error, ErasedCustomerError) for r in result.rejected)
    assert [r.index for r in result.rejected] == [2, 4]
    assert "name" not in ledger.customer("C2").profile


def test_an_event_id_sent_again_with_other_content_is_refused_with_both_hashes(
    ledger: Ledger,
) -> None:
    order = tp("OrderPlaced", "C1", order_id="O1", amount_minor=1000)
    ledger.record(order)
    changed = dataclasses.replace(order, data={**order.data, "amount_minor": 99_000})
    elsewhere = dataclasses.replace(order, customer_id="C2")
    later = dataclasses.replace(order, occurred_at=order.occurred_at + timedelta(seconds=1))

    for conflicting in (changed, elsewhere, later):
        with pytest.raises(ConflictingDuplicate, match=r"stored sha256:[0-9a-f]{64}, received"):
            ledger.record(conflicting)
    result = ledger.record_many([order, changed])  # identical is quiet, changed is refused
    assert (result.recorded, result.duplicates) == (0, 1)
    assert [r.index for r in result.rejected] == [1]
    fresh = tp("OrderPlaced", "C3")
    within = ledger.record_many([fresh, dataclasses.replace(fresh, source="other")])
    assert (within.recorded, [r.index for r in within.rejected]) == (1, [1])
    assert ledger.customer("C1").orders == 1
    with pytest.raises(CustomerNotFound):
        ledger.customer("C2")


def test_a_resent_event_of_a_merged_or_erased_customer_stays_a_quiet_duplicate(
    ledger: Ledger,
) -> None:
    ledger.record_many([tp("CustomerRegistered", "S1"), tp("CustomerRegistered", "D1")])
    ledger.record(tp("CustomersMerged", "D1", survivor_id="S1"))
    routed = tp("InteractionRecorded", "D1", note="asked about the parcel")
    ledger.record(routed)
    registered = tp("CustomerRegistered", "E1")
    ledger.record(registered)
    ledger.erase("E1", reason="request")

    result = ledger.record_many([routed, registered])
    assert (result.recorded, result.duplicates, result.rejected) == (0, 2, [])
    with pytest.raises(ConflictingDuplicate):
        ledger.record(dataclasses.replace(routed, customer_id="S1"))


def test_refusals_wait_in_the_outbox_in_the_batch_transaction_until_sent(ledger: Ledger) -> None:
    letter = OutboxLetter("t", 0, 5, None, b"\x00bytes", "UndecodableMessage", "why", "now")
    result = ledger.record_many(
        [tp("OrderPlaced", "C1"), tp("OrderPlaced", "C1", amount_minor=-1)],
        [Position("t", 0, 7)],
        dead_letters=[letter],
        dead_letter_for=lambda i, e: letter._replace(offset=6, error_message=str(e)),
    )
    assert (result.recorded, len(result.rejected)) == (1, 1)
    pending = ledger.pending_dead_letters()
    assert [p[1].offset for p in pending] == [5, 6]
    assert pending[0][1] == letter
    assert "amount_minor" in pending[1][1].error_message
    ledger.dead_letters_sent([pending[0][0]])
    assert [p[1].offset for p in ledger.pending_dead_letters()] == [6]
    assert ledger.positions("t") == {0: 7}
    assert ledger.reset_positions("t") == 1
    assert ledger.positions("t") == {}


def test_personal_data_routed_to_a_survivor_stays_under_the_senders_key(
    store_env: dict[str, str],
) -> None:
    with Ledger(store_env) as ledger:
        ledger.record_many(
            [
                tp("CustomerRegistered", "S1", name="Sam Survivor"),
                tp("CustomerRegistered", "D1", name="Dee Duplicate"),
            ]
        )
        ledger.record(tp("CustomersMerged", "D1", survivor_id="S1"))
        routed = tp("InteractionRecorded", "D1", note="Dee asked about her parcel")
        own = tp("InteractionRecorded", "S1", note="Sam asked about his invoice")
        ledger.record_many([routed, own])
        duplicate_key = ledger.mapper.data_keys.keys[customer_uuid("D1").bytes]  # type: ignore[attr-defined]
        assert duplicate_key is not None
        assert ledger.erase("D1", reason="request") == ["D1"]

        # Non-personal facts of the erased duplicate are still taken (and routed)...
        assert ledger.record(tp("OrderPlaced", "D1", order_id="O-late")) is True
        # ...but no personal data, whichever stream it would land in.
        with pytest.raises(ErasedCustomerError, match="note"):
            ledger.record(tp("InteractionRecorded", "D1", note="Dee again"))
        with pytest.raises(ErasedCustomerError, match="email"):
            ledger.record(tp("ProfileUpdated", "D1"))

    with Ledger(store_env) as fresh:  # no key left in any cache
        notes = {h.event_id: h.details.get("note") for h in fresh.history("S1")}
        assert notes[routed.event_id] is None
        assert notes[own.event_id] == "Sam asked about his invoice"
        assert fresh.customer("S1").profile["name"] == "Sam Survivor"
        assert fresh.customer("S1").orders == 1
        stored_key = fresh.ledger_recorder.load_key(customer_uuid("D1").bytes)  # type: ignore[attr-defined]
        assert stored_key is None
        if "SQLITE_DBNAME" in store_env:  # every file of the store, as a regulator would read it
            folder = Path(store_env["SQLITE_DBNAME"]).parent
            for path in folder.iterdir():
                assert duplicate_key not in path.read_bytes(), path


def test_a_batch_loads_its_streams_keys_with_one_look_up(store_env: dict[str, str]) -> None:
    with Ledger(store_env) as writer:
        writer.record_many([tp("CustomerRegistered", c, name=f"N {c}") for c in ("K1", "K2")])
    with Ledger(store_env) as ledger:  # no key in memory yet
        asked, one_by_one = spy_on_key_look_ups(ledger)
        ledger.record_many(
            [tp("InteractionRecorded", c, note=f"call {c}") for c in ("K1", "K2", "K3")]
        )
        # One look-up for the stored streams (their events open as they load), one for the
        # new stream (sealed on save); none one at a time.
        stored = {customer_uuid(c).bytes for c in ("K1", "K2")}
        assert [set(a) for a in asked] == [stored, {customer_uuid("K3").bytes}]
        assert one_by_one == []
        # The keys found are the ones that sealed before: the new notes open with them.
        assert "call K1" in [h.details.get("note") for h in ledger.history("K1")]
    with Ledger(store_env) as fresh:
        notes = [h.details.get("note") for h in fresh.history("K2")]
        assert "call K2" in notes
        assert fresh.customer("K2").profile["name"] == "N K2"


def test_a_stream_without_a_key_is_asked_again_after_a_failed_batch(
    store_env: dict[str, str],
) -> None:
    """'No key' is remembered only until a transaction fails: another writer may have made
    one meanwhile."""
    with Ledger(store_env) as ledger:
        keys: Any = ledger.ledger_recorder.data_keys  # type: ignore[attr-defined]
        keys.preload([b"x" * 16], lambda streams: {})
        assert keys.keys[b"x" * 16] is None
        keys.settle(committed=False)
        assert b"x" * 16 not in keys.keys


def test_the_sqlite_log_head_is_read_without_opening_the_ledger(tmp_path: Path) -> None:
    """What a query peeks at before deciding whether the read models must catch up."""
    import sqlite3

    from crm_ledger.adapters.eventstore import claim_sqlite, sqlite_env
    from crm_ledger.adapters.eventstore.sqlite_head import sqlite_log_head

    path = tmp_path / "ledger.sqlite"
    assert sqlite_log_head(path) is None  # no ledger yet: the Ledger says what is wrong
    claim_sqlite(str(path), create=True)  # as `init` makes one
    with Ledger(sqlite_env(str(path))) as ledger:
        assert sqlite_log_head(path) == ledger.log_head() == 0
        ledger.record_many([tp("CustomerRegistered", "H1"), tp("OrderPlaced", "H1")])
        ledger.record_many([tp("OrderPlaced", "H1", order_id="O2")])
        head = ledger.log_head()
        assert head >= 3
        assert sqlite_log_head(path) == head
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE notes (x)")
    assert sqlite_log_head(other) is None
    (tmp_path / "text.sqlite").write_text("not a database")
    assert sqlite_log_head(tmp_path / "text.sqlite") is None


def _folded_into_the_file(path: Path) -> bool:
    """Every page the ledger holds is in the database file itself, none only in the log."""
    import sqlite3

    with sqlite3.connect(path) as conn:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    return bool(path.stat().st_size >= pages * page_size)


def test_committed_batches_are_folded_into_the_sqlite_file_by_a_thread_of_their_own(
    tmp_path: Path,
) -> None:
    """The writer's commit only appends to the write-ahead log (its own checkpoint threshold
    is far above these batches); the checkpoint thread copies the log into the file, and it
    stops with the ledger. A process that only reads starts none."""
    import threading

    from crm_ledger.adapters.eventstore import sqlite_env
    from crm_ledger.adapters.eventstore.sqlite_wal import THREAD_NAME
    from tests.integration.conftest import wait_until

    def checkpoint_threads() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == THREAD_NAME]

    path = tmp_path / "ledger.sqlite"
    with Ledger(sqlite_env(str(path))) as ledger:
        ledger.record_many([tp("CustomerRegistered", "W1")])
        for b in range(30):
            ledger.record_many(
                [tp("OrderPlaced", f"W{i}", order_id=f"O{b}-{i}") for i in range(200)]
            )
        wait_until(lambda: _folded_into_the_file(path), 30, "the log folded into the file")
        assert len(checkpoint_threads()) == 1
    assert checkpoint_threads() == []
    with Ledger(sqlite_env(str(path))) as reader:
        assert reader.customer("W1").customer_id == "W1"
        assert checkpoint_threads() == []
