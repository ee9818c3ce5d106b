"""Every route against every role: the expected status comes from the routes' own
declarations, so a route added without roles fails here; CSRF, rate limiting, masking,
time travel and error bodies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from crm_ledger.web.registry import routes as registry_routes
from crm_ledger.web.roles import ROLES
from tests.web.conftest import PASSWORD, csrf_of, signed_in

ROOT = Path(__file__).resolve().parents[2]
#: Routes anyone may reach without signing in (every other route must declare roles).
PUBLIC = {("/signin", "GET"), ("/signin", "POST")} | {
    (a.path, m)
    for a, _ in registry_routes(None)
    for m in a.methods  # schemas, not people
}
WHO = [*ROLES, None]
#: The query a route needs to answer 200 (searches need something to search for).
QUERIES = {"/api/customers": "?q=C1", "/search": "?q=C1"}
#: A value each path parameter can take.
PATH_VALUES = {
    "{customer_id}": "C1",
    "{initiative_id}": "loyalty",
    "{schema_id}": "1",
    "{subject}": "crm_ledger.events.OrderPlaced",
    "{version}": "latest",
    "{kind}": "html",
}
#: What an allowed role gets where it is not 200 (or 303 after a form): this console has no
#: Kafka, so a redrive says so (tests/integration/test_console_kafka.py redrives for real).
ALLOWED_STATUS = {("/operations/redrive", "POST"): 400}
#: The schema registry's POSTs take a schema, not a form.
REGISTRY_POSTS = {
    "/subjects/{subject}",
    "/subjects/{subject}/versions",
    "/compatibility/subjects/{subject}/versions",
    "/compatibility/subjects/{subject}/versions/{version}",
}
ORDER_PLACED = json.loads((ROOT / "schemas" / "OrderPlaced.avsc").read_text())


def test_every_route_declares_its_roles(console: dict[str, Any]) -> None:
    declared = console["app"].state.console.access
    assert declared
    for access in declared:
        for method in access.methods:
            if (access.path, method) in PUBLIC:
                assert not access.roles
            else:
                assert access.roles, f"{method} {access.path} declares no roles"
                assert access.roles <= set(ROLES)


def _cases(app: Any) -> list[tuple[str, str, bool, frozenset[str]]]:
    return [(a.path, m, a.api, a.roles) for a in app.state.console.access for m in a.methods]


@pytest.mark.parametrize("role", WHO, ids=lambda r: r or "anonymous")
def test_every_route_answers_each_role_as_declared(
    console: dict[str, Any], role: str | None
) -> None:
    app = console["app"]
    client = signed_in(app, role)
    table = []
    for path, method, api, roles in _cases(app):
        url = path
        for name, value in PATH_VALUES.items():
            url = url.replace(name, value)
        url += QUERIES.get(path, "")
        if method == "POST":
            if path == "/signin":
                continue  # signing in is tested below
            if path in REGISTRY_POSTS:
                response = client.post(url, json={"schema": json.dumps(ORDER_PLACED)})
            else:
                response = client.post(url, data={"csrf": csrf_of(client)})
            if role is not None and role in roles:
                client = signed_in(app, role)  # /signout ended the session
        else:
            response = client.get(url)
        if not roles:
            expected = 200
        elif role is None:
            expected = 401 if api else 303
        elif role not in roles:
            expected = 403
        else:
            expected = ALLOWED_STATUS.get((path, method), 303 if method == "POST" else 200)
        table.append((method, url, role, response.status_code, expected))
    wrong = [row for row in table if row[3] != row[4]]
    assert not wrong, "\n".join(f"{m} {u} as {r}: {s}, expected {e}" for m, u, r, s, e in wrong)


def test_a_form_without_its_csrf_token_is_refused(console: dict[str, Any]) -> None:
    client = signed_in(console["app"], "agent")
    refused = client.post("/signout", data={"csrf": "forged"})
    assert refused.status_code == 403
    assert "form expired" in refused.text
    assert client.get("/api/me").json()["name"] == "agent"  # still signed in


def test_failed_sign_ins_are_rate_limited(console: dict[str, Any]) -> None:
    client = signed_in(console["app"], None)
    token = csrf_of(client)
    statuses = [
        client.post(
            "/signin", data={"name": "admin", "password": "wrong", "csrf": token}
        ).status_code
        for _ in range(6)
    ]
    assert statuses == [401] * 5 + [429]
    locked = client.post("/signin", data={"name": "admin", "password": PASSWORD, "csrf": token})
    assert locked.status_code == 429  # even the right password waits
    other = signed_in(console["app"], "agent")  # another name is not locked out
    assert other.get("/api/me").json()["role"] == "agent"


def test_a_disabled_user_cannot_sign_in(console: dict[str, Any]) -> None:
    client = signed_in(console["app"], None)
    done = client.post(
        "/signin", data={"name": "gone", "password": PASSWORD, "csrf": csrf_of(client)}
    )
    assert done.status_code == 401


def test_analysts_see_personal_fields_masked(console: dict[str, Any]) -> None:
    agent = signed_in(console["app"], "agent").get("/api/customers/C1").json()
    analyst = signed_in(console["app"], "analyst").get("/api/customers/C1").json()
    assert agent["customer"]["profile"]["email"] == "ada.m@example.org"
    masked = analyst["customer"]["profile"]["email"]
    assert masked.startswith("a")
    assert "@" not in masked
    assert analyst["customer"]["profile"]["segment"] == "smb"  # not personal: shown
    found = signed_in(console["app"], "analyst").get("/api/customers", params={"q": "C1"}).json()
    assert found[0]["name"] != "Ada Meyer"


def test_time_travel_shows_what_the_ledger_knew_then(console: dict[str, Any]) -> None:
    client = signed_in(console["app"], "agent")
    now = client.get("/api/customers/C1").json()
    then = client.get("/api/customers/C1", params={"as_of": console["between"].isoformat()}).json()
    assert now["customer"]["orders"] == 2
    assert then["customer"]["orders"] == 1
    assert then["customer"]["profile"]["email"] == "ada@example.org"
    page = client.get("/customers/C1", params={"as_of": console["between"].isoformat()})
    assert "what the ledger knew at" in page.text


def test_errors_are_pages_or_json_with_the_right_status(console: dict[str, Any]) -> None:
    client = signed_in(console["app"], "agent")
    missing = client.get("/api/customers/NOBODY")
    assert missing.status_code == 404
    assert "not found" in missing.json()["error"]
    page = client.get("/customers/NOBODY")
    assert page.status_code == 404
    assert "not found" in page.text
    bad = client.get("/api/customers/C1", params={"as_of": "yesterday"})
    assert bad.status_code == 400
    assert "is not a time" in bad.json()["error"]


def test_every_response_carries_the_security_headers(console: dict[str, Any]) -> None:
    response = signed_in(console["app"], None).get("/signin")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert response.headers["x-frame-options"] == "DENY"
    cookie = signed_in(console["app"], None)
    done = cookie.post(
        "/signin", data={"name": "agent", "password": PASSWORD, "csrf": csrf_of(cookie)}
    )
    set_cookie = done.headers["set-cookie"].lower()
    assert "httponly" in set_cookie
    assert "samesite=strict" in set_cookie
