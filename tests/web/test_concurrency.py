"""The console serves requests side by side while the read models catch up: every answer is
whole, the value list kept between catch-ups is dropped when new records arrive, and the gate
holds readers back while a catch-up writes."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import pytest

from crm_ledger.web.app import SharedGate
from tests.clock import moment_between
from tests.factories import AT, tp
from tests.web.conftest import console_over, signed_in

if TYPE_CHECKING:
    from collections.abc import Iterator

    from starlette.testclient import TestClient


@pytest.fixture
def busy(tmp_path: Any) -> Iterator[dict[str, Any]]:
    events = [tp("CustomerRegistered", "C1"), tp("OrderPlaced", "C1")]
    with console_over(tmp_path, events, {"analyst": "admin"}) as (_, services, app):
        yield {"app": app, "services": services, "at": moment_between()}


def _orders(client: TestClient, query: str = "") -> int:
    answer = client.get(f"/api/customers/C1{query}")
    assert answer.status_code == 200, answer.text
    return sum(int(v["orders"]) for v in answer.json()["values"])


def test_requests_side_by_side_with_catch_ups_all_answer_whole(busy: dict[str, Any]) -> None:
    app, services = busy["app"], busy["services"]
    console = app.state.console
    clients = [signed_in(app, "analyst") for _ in range(6)]
    as_of = "?" + urlencode({"as_of": busy["at"].isoformat()})
    written = threading.Event()

    def write() -> None:
        for n in range(20):
            at = AT + timedelta(days=n + 1)
            services.ledger.record_many([tp("OrderPlaced", "C1", order_id=f"W{n}", at=at)])
            console.caught_up = float("-inf")  # the next request catches up
        written.set()

    def read(client: TestClient) -> list[int]:
        seen = []
        while not written.is_set():
            seen.append(_orders(client))
            assert _orders(client, as_of) == 1  # the past does not move
            assert client.get("/api/value").status_code == 200
            assert client.get("/api/customers/C1/journey").status_code == 200
        return seen

    with ThreadPoolExecutor(len(clients) + 1) as pool:
        readers = [pool.submit(read, c) for c in clients]
        pool.submit(write).result(timeout=120)
        seen = [f.result(timeout=120) for f in readers]
    for counts in seen:  # each client sees the orders grow, never shrink
        assert counts == sorted(counts)
        assert all(1 <= c <= 21 for c in counts)
    console.caught_up = float("-inf")
    assert _orders(clients[0]) == 21


def test_the_kept_value_list_is_dropped_when_new_records_arrive(busy: dict[str, Any]) -> None:
    app, services = busy["app"], busy["services"]
    client = signed_in(app, "analyst")

    def top() -> list[tuple[str, int]]:
        answer = client.get("/api/value")
        assert answer.status_code == 200, answer.text
        return [(r["subject"], r["orders"]) for r in answer.json()["rows"]]

    assert top() == [("C1", 1)]
    assert top() == [("C1", 1)]  # kept
    services.ledger.record_many([tp("CustomerRegistered", "C2"), tp("OrderPlaced", "C2")])
    services.ledger.record_many([tp("OrderPlaced", "C2", order_id="O2")])
    app.state.console.caught_up = float("-inf")
    assert top() == [("C2", 2), ("C1", 1)]


def test_the_gate_holds_readers_back_while_a_writer_waits_and_writes() -> None:
    gate = SharedGate()
    order: list[str] = []
    writer_waiting, reader_done = threading.Event(), threading.Event()

    def writer() -> None:
        writer_waiting.set()
        with gate.exclusive():
            order.append("write")

    def late_reader() -> None:
        with gate.shared():
            order.append("late read")
        reader_done.set()

    with gate.shared():
        first = threading.Thread(target=writer)
        first.start()
        assert writer_waiting.wait(5)
        # wait (on the gate's own state) until the writer is queued behind this reader
        deadline = threading.Event()
        for _ in range(500):
            if gate._waiting:
                break
            deadline.wait(0.01)
        assert gate._waiting == 1
        second = threading.Thread(target=late_reader)
        second.start()
        assert not reader_done.wait(0.2)  # held back: a writer is waiting
        assert order == []
    first.join(5)
    second.join(5)
    assert order == ["write", "late read"]


def test_the_value_list_of_a_replayed_snapshot_is_what_was_known_then(
    busy: dict[str, Any],
) -> None:
    app, services = busy["app"], busy["services"]
    services.ledger.record_many([tp("CustomerRegistered", "C2"), tp("OrderPlaced", "C2")])
    services.ledger.record_many([tp("OrderPlaced", "C2", order_id="O2")])
    services.projections.replay("before", as_of=busy["at"], valid_at=None)
    client = signed_in(app, "analyst")
    live = client.get("/api/value").json()
    then = client.get("/api/value?snapshot=before").json()
    assert [(r["subject"], r["orders"]) for r in live["rows"]] == [("C2", 2), ("C1", 1)]
    assert [(r["subject"], r["orders"]) for r in then["rows"]] == [("C1", 1)]
    assert then["snapshots"][0]["name"] == "before"
    page = client.get("/value?snapshot=before")
    assert "Showing snapshot before" in page.text
    assert 'value="before" selected' in page.text
    unknown = client.get("/api/value?snapshot=nope")
    assert unknown.status_code in (400, 404)
    assert "nope" in unknown.json()["error"]


def test_the_journey_pages_on_a_keyset_that_new_touches_do_not_shift(
    busy: dict[str, Any],
) -> None:
    app, services = busy["app"], busy["services"]
    orders = [
        tp("OrderPlaced", "C9", order_id=f"J{n}", at=AT + timedelta(hours=n)) for n in range(119)
    ]
    services.ledger.record_many([tp("CustomerRegistered", "C9"), *orders])
    client = signed_in(app, "analyst")

    def pages(query: str, *, record_after_first: bool = False) -> list[list[dict[str, Any]]]:
        found, url = [], f"/api/customers/C9/journey?{query}"
        while url:
            answer = client.get(url)
            assert answer.status_code == 200, answer.text
            body = answer.json()
            found.append(body["touches"])
            if record_after_first and len(found) == 1:  # a touch recorded after page 1
                services.ledger.record_many(
                    [tp("OrderPlaced", "C9", order_id="NEW", at=AT + timedelta(days=30))]
                )
                app.state.console.caught_up = float("-inf")
            url = f"/api/customers/C9/journey?{body['next_query']}" if body["next_query"] else ""
        return found

    newest = pages("order=newest", record_after_first=True)
    assert [len(p) for p in newest] == [50, 50, 20]
    seen = [t["event_id"] for p in newest for t in p]
    assert len(set(seen)) == 120  # nothing twice, nothing skipped, the new one not in page 2+
    times = [t["occurred_at"] for p in newest for t in p]
    assert times == sorted(times, reverse=True)
    oldest = [t["occurred_at"] for p in pages("order=oldest") for t in p]
    assert oldest == sorted(oldest)
    assert len(oldest) == 121  # the touch recorded during the first walk is there now
    window = client.get("/api/customers/C9/journey?from=2025-03-02&to=2025-03-02").json()
    assert {t["occurred_at"][:10] for t in window["touches"]} == {"2025-03-02"}
    assert len(window["touches"]) == 24
    for bad in ("after=nonsense", "after=2025-01-01T00:00~", "from=yesterday", "to=2025-13-01"):
        refused = client.get(f"/api/customers/C9/journey?{bad}")
        assert refused.status_code == 400, bad
        assert refused.json()["error"]
