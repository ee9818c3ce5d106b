"""A small ledger, one user per role, and the console app over them (Starlette's test client)."""

from __future__ import annotations

from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pytest
from starlette.testclient import TestClient

from crm_ledger import bootstrap
from crm_ledger.adapters.avro import to_json
from crm_ledger.config import Settings
from crm_ledger.web.app import create_app
from crm_ledger.web.roles import ROLES
from tests.clock import moment_between
from tests.factories import AT, tp

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence
    from pathlib import Path

PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """C1 registered and ordering before a moment ``between``; a later order and profile
    change after it."""
    folder = tmp_path_factory.mktemp("console")
    settings = Settings.from_env({}, data_dir=folder / "ledger")
    services = bootstrap.build(settings, create=True)
    bootstrap.create_signing_key(settings)
    first = [tp("CustomerRegistered", "C1"), tp("OrderPlaced", "C1", at=AT + timedelta(days=1))]
    services.ledger.record_many(first)
    between = moment_between()
    later = [
        tp("OrderPlaced", "C1", order_id="O2", at=AT + timedelta(days=5)),
        tp("ProfileUpdated", "C1", at=AT + timedelta(days=6)),
    ]
    services.ledger.record_many(later)
    services.ledger.record_many(_initiative())
    users = bootstrap.open_users(settings)
    for role in ROLES:
        users.add(role, role, PASSWORD)
    users.add("gone", "agent", PASSWORD)
    users.disable("gone")
    app = create_app(services, users, b"s" * 32, bootstrap.open_registry(settings))
    yield {
        "app": app,
        "between": between,
        "settings": settings,
        "events": first + later,
        "json": [to_json(e) for e in first + later],
    }
    services.close()


@contextmanager
def console_over(
    folder: Path, events: Sequence[Any], users: Mapping[str, str]
) -> Iterator[tuple[Settings, Any, Any]]:
    """A ledger in ``folder`` holding ``events`` (with its signing key), users by name and
    role, and the console over it: (settings, services, app); the services closed after."""
    settings = Settings.from_env({}, data_dir=folder / "ledger")
    services = bootstrap.build(settings, create=True)
    try:
        bootstrap.create_signing_key(settings)
        services.ledger.record_many(list(events))
        made = bootstrap.open_users(settings)
        for name, role in users.items():
            made.add(name, role, PASSWORD)
        yield settings, services, create_app(services, made, b"s" * 32)
    finally:
        services.close()


def _initiative() -> list[Any]:
    """``loyalty``: region north exposed, the rest control, weekly orders around its window."""
    start = AT + timedelta(weeks=4)
    events = [tp("InitiativeStarted", "loyalty", at=start)]
    events += [tp("InitiativeEnded", "loyalty", at=start + timedelta(weeks=4))]
    for n in range(6):
        who = f"P{n}"
        region = "north" if n % 2 else "south"
        events.append(tp("CustomerRegistered", who, region=region, email=f"p{n}@example.org"))
        events += [
            tp("OrderPlaced", who, order_id=f"{who}-{w}", at=AT + timedelta(weeks=w, days=n % 3))
            for w in range(12)
        ]
    return events


def signed_in(app: Any, role: str | None) -> TestClient:
    """A client signed in as the user of ``role`` (anonymous for None)."""
    client = TestClient(app, follow_redirects=False)
    if role is not None:
        form = client.get("/signin")
        token = _csrf(form.text)
        done = client.post("/signin", data={"name": role, "password": PASSWORD, "csrf": token})
        assert done.status_code == 303, done.text
    return client


def _csrf(html: str) -> str:
    marker = 'name="csrf" value="'
    start = html.index(marker) + len(marker)
    return html[start : html.index('"', start)]


def csrf_of(client: TestClient) -> str:
    """The CSRF token of the client's session (read from a page)."""
    return _csrf(client.get("/signin").text)
