"""The console on each real store (SQLite, then PostgreSQL): search, the 360 live and as of a
past moment, the journey, the value list and the audit status, with requests side by side."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import pytest

from crm_ledger import bootstrap
from crm_ledger.config import Settings
from crm_ledger.web.app import create_app
from tests.clock import moment_between
from tests.factories import AT, tp
from tests.web.conftest import PASSWORD, signed_in

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture(params=["sqlite", "postgres"])
def on_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    options: dict[str, Any] = {}
    if request.param == "postgres":
        options = {
            "database_url": request.getfixturevalue("pg_url"),
            "database_schema": request.getfixturevalue("pg_schema"),
        }
    settings = Settings(data_dir=tmp_path / "ledger", **options)
    with bootstrap.build(settings, create=True) as services:
        bootstrap.create_signing_key(settings)
        services.ledger.record_many(
            [
                tp("CustomerRegistered", "C1", email="ada@example.org"),
                tp("OrderPlaced", "C1", order_id="O1", at=AT + timedelta(days=1)),
            ]
        )
        between = moment_between()
        services.ledger.record_many([tp("OrderPlaced", "C1", order_id="O2", at=AT + timedelta(2))])
    users = bootstrap.open_users(settings)
    users.add("admin", "admin", PASSWORD)
    with bootstrap.build(settings, read_only=True) as services:  # as `crm-ledger serve` does
        services.read_models.catch_up()
        app = create_app(services, users, b"s" * 32)
        yield {"app": app, "between": between}


def test_the_console_answers_on_each_store(on_store: dict[str, Any]) -> None:
    client = signed_in(on_store["app"], "admin")
    past = urlencode({"as_of": on_store["between"].isoformat()})

    def orders(query: str = "") -> int:
        answer = client.get(f"/api/customers/C1{query}")
        assert answer.status_code == 200, answer.text
        return sum(int(v["orders"]) for v in answer.json()["values"])

    def round_trip(_: int) -> tuple[Any, ...]:
        found = client.get("/api/customers", params={"q": "ada@example.org"}).json()
        journey = client.get("/api/customers/C1/journey").json()["touches"]
        value = client.get("/api/value").json()["rows"]
        audit = client.get("/api/customers/C1/audit").json()
        return (
            orders(),
            orders(f"?{past}"),
            tuple(m["customer_id"] for m in found),
            tuple((r["subject"], r["orders"]) for r in value),
            tuple(t["kind"] for t in journey),
            audit["verified"],
        )

    with ThreadPoolExecutor(4) as pool:
        answers = set(pool.map(round_trip, range(12)))
    assert len(answers) == 1, answers  # the same answer to every request side by side
    live, then, found, value, kinds, verified = answers.pop()
    assert (live, then, found, value, verified) == (2, 1, ("C1",), (("C1", 2),), True)
    assert kinds == ("OrderPlaced", "OrderPlaced", "CustomerRegistered")  # newest first
    page = client.get(f"/customers/C1?{past}")
    assert page.status_code == 200
    assert "ada@example.org" in page.text
