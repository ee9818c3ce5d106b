"""The console's pages and their JSON twins: search, the customer 360 and the journey."""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from starlette.responses import JSONResponse, RedirectResponse, Response

from crm_ledger.errors import CrmLedgerError, InvalidInput
from crm_ledger.services.ports import plain
from crm_ledger.web.app import (
    CUSTOMER_READERS,
    JOURNEY_PAGE,
    SIGNIN_LIMIT,
    SIGNIN_WINDOW,
    masked_profile,
    moment_of,
)
from crm_ledger.web.roles import ANYONE, Access

if TYPE_CHECKING:
    from starlette.requests import Request

    from crm_ledger.adapters.users import User
    from crm_ledger.services import Services
    from crm_ledger.web.app import Console


def routes(console: Console) -> list[tuple[Access, Any]]:
    """Every route: (path, methods, roles, JSON or page) and its handler."""
    from crm_ledger.web import analysis, audit

    page = _Pages(console)
    public: frozenset[str] = frozenset()

    def reads(path: str, api: bool, logged: str) -> Access:
        """A GET that shows customers' data, logged in the access log."""
        return Access(path, ("GET",), CUSTOMER_READERS, api, logged=logged)

    one = "/customers/{customer_id}"
    return [
        *analysis.routes(console),
        *audit.routes(console),
        (Access("/signin", ("GET",), public, False), page.signin_form),
        (Access("/signin", ("POST",), public, False), page.signin),
        (Access("/signout", ("POST",), ANYONE, False), page.signout),
        (reads("/", False, "search"), page.search),
        (reads("/search", False, "search"), page.search_results),
        (reads(one, False, "360"), page.customer),
        (reads(f"{one}/journey", False, "journey"), page.journey),
        (Access("/api/me", ("GET",), ANYONE, True), page.api_me),
        (reads("/api/customers", True, "search"), page.api_find),
        (reads(f"/api{one}", True, "360"), page.api_customer),
        (reads(f"/api{one}/journey", True, "journey"), page.api_journey),
    ]


class _Pages:
    def __init__(self, console: Console) -> None:
        self.console = console

    def render(self, request: Request, name: str, user: User | None, **context: Any) -> Response:
        return self.console.render(request, name, user, **context)

    # Signing in and out.

    async def signin_form(self, request: Request, user: User | None) -> Response:
        return self.render(
            request, "signin.html", user, error=None, next=request.query_params.get("next", "/")
        )

    async def signin(self, request: Request, user: User | None) -> Response:
        form = await request.form()
        name, password = str(form.get("name", "")), str(form.get("password", ""))
        target = str(form.get("next", "/"))
        target = target if target.startswith("/") and not target.startswith("//") else "/"
        client = request.client.host if request.client else "?"
        recent = self.console.failures[(client, name)]
        now = time.monotonic()
        while recent and now - recent[0] > SIGNIN_WINDOW:
            recent.popleft()
        if len(recent) >= SIGNIN_LIMIT:
            response = self.render(
                request,
                "signin.html",
                None,
                next=target,
                error="too many failed attempts: wait a few minutes",
            )
            response.status_code = 429
            return response
        found = self.console.users.authenticate(name, password)
        if found is None:
            recent.append(now)
            response = self.render(
                request, "signin.html", None, next=target, error="wrong name or password"
            )
            response.status_code = 401
            return response
        recent.clear()
        request.session.clear()
        request.session["user"] = found.name
        if target == "/" and found.role == "auditor":  # search is not theirs: the audit is
            target = "/audit"
        return RedirectResponse(target, status_code=303)

    async def signout(self, request: Request, user: User | None) -> Response:
        request.session.clear()
        return RedirectResponse("/signin", status_code=303)

    # Search.

    async def search(self, request: Request, user: User | None) -> Response:
        query = request.query_params.get("q", "").strip()
        found = await self._find(query, user) if query else []
        return self.render(request, "search.html", user, query=query, found=found)

    async def search_results(self, request: Request, user: User | None) -> Response:
        query = request.query_params.get("q", "").strip()
        found = await self._find(query, user) if len(query) >= 2 else []
        return self.render(request, "results.html", user, query=query, found=found)

    async def _find(self, query: str, user: User | None) -> list[dict[str, Any]]:
        try:
            matches = await self.console.call(lambda s: s.directory.find(query, 20))
        except InvalidInput:
            return []
        return [_mask_match(dataclasses.asdict(m), user) for m in matches]

    # One customer.

    async def _customer(self, request: Request, user: User | None) -> dict[str, Any]:
        """The 360 view, and the customer's predicted value under the latest CLV model (null
        when no model exists or it predicts nothing for them)."""
        customer_id = request.path_params["customer_id"]
        at = moment_of(request)

        def read(s: Services) -> tuple[Any, Any, Any]:
            view = s.read_models.view(customer_id, at, last=10)
            try:
                model = s.predictions.model()
                return view, model, s.predictions.show(customer_id, model.model_id)
            except CrmLedgerError:
                return view, None, None

        view, model, predicted = await self.console.call(read)
        data = _view_json(view, user)
        data["predicted"] = None
        if predicted is not None:
            data["predicted"] = plain(dataclasses.asdict(predicted)) | {
                "model_id": model.model_id,
                "currency": model.currency,
                "horizon": model.horizon,
                "unit": model.unit,
                "calibration_end": model.calibration_end.isoformat(),
            }
        return data

    async def customer(self, request: Request, user: User | None) -> Response:
        customer_id = request.path_params["customer_id"]
        at = moment_of(request)
        data = await self._customer(request, user)
        return self.render(request, "customer.html", user, c=data, at=at, customer_id=customer_id)

    async def journey(self, request: Request, user: User | None) -> Response:
        customer_id = request.path_params["customer_id"]
        page = await self._journey(request, customer_id)
        return self.render(request, "journey.html", user, customer_id=customer_id, **page)

    async def _journey(self, request: Request, customer_id: str) -> dict[str, Any]:
        """One page of the journey: filtered by channel, kind and occurred dates, newest or
        oldest first, keyset-paged on (occurred, event id) after the cursor ``after``."""
        at = moment_of(request)
        params = request.query_params
        channel, kind = params.get("channel") or None, params.get("kind") or None
        start, end = _day(params.get("from"), "from"), _day(params.get("to"), "to", end=True)
        newest = params.get("order", "newest") != "oldest"
        cursor = _cursor(params.get("after"))

        def read(s: Services) -> list[Any]:
            return s.read_models.timeline(customer_id, at, start=start, end=end, channel=channel)

        steps = [t for t in await self.console.call(read) if kind is None or t.kind == kind]
        if newest:
            steps.reverse()
        if cursor is not None:
            steps = [t for t in steps if _beyond((t.occurred_at, t.event_id), cursor, newest)]
        shown = steps[:JOURNEY_PAGE]
        more = len(steps) > JOURNEY_PAGE
        following = None
        if more and shown:
            last = shown[-1]
            after = f"{last.occurred_at.isoformat()}~{last.event_id}"
            following = urlencode(
                {k: v for k, v in params.items() if k != "after"} | {"after": after}
            )
        return {
            "touches": [plain(dataclasses.asdict(t)) for t in shown],
            "next_query": following,
            "order": "newest" if newest else "oldest",
            "channel": channel or "",
            "kind": kind or "",
            "from": params.get("from", ""),
            "to": params.get("to", ""),
            "at": at,
        }

    # JSON.

    async def api_me(self, request: Request, user: User | None) -> Response:
        return JSONResponse(dataclasses.asdict(user) if user else {})

    async def api_find(self, request: Request, user: User | None) -> Response:
        query = request.query_params.get("q", "")
        matches = await self.console.call(lambda s: s.directory.find(query, 20))
        return JSONResponse([_mask_match(dataclasses.asdict(m), user) for m in matches])

    async def api_customer(self, request: Request, user: User | None) -> Response:
        return JSONResponse(await self._customer(request, user))

    async def api_journey(self, request: Request, user: User | None) -> Response:
        page = await self._journey(request, request.path_params["customer_id"])
        page["at"] = plain(dataclasses.asdict(page["at"]))
        return JSONResponse(page)


def _day(value: str | None, name: str, *, end: bool = False) -> datetime | None:
    """A date (or time) of a journey filter; ``to`` includes its whole day."""
    if not value:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"{name}: {value!r} is not a date such as 2025-03-01") from None
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    return when + timedelta(days=1) if end and len(value) <= len("2025-03-01") else when


def _beyond(key: tuple[datetime, str], cursor: tuple[datetime, str], newest: bool) -> bool:
    """Whether a touch comes after the cursor in the page order (never the cursor itself)."""
    return key < cursor if newest else key > cursor


def _cursor(value: str | None) -> tuple[datetime, str] | None:
    """The keyset cursor of a journey page: the last touch shown, as OCCURRED~EVENT_ID."""
    if not value:
        return None
    occurred, sep, event_id = value.partition("~")
    try:
        if not sep or not event_id:
            raise ValueError
        return datetime.fromisoformat(occurred), event_id
    except ValueError:
        raise InvalidInput(
            f"after: {value!r} is not a page cursor (use the Next page link)"
        ) from None


def _mask_match(match: dict[str, Any], user: User | None) -> dict[str, Any]:
    shown = masked_profile({k: match[k] for k in ("name", "email", "phone")}, user)
    return match | shown


def _view_json(view: Any, user: User | None) -> dict[str, Any]:
    data: dict[str, Any] = plain(dataclasses.asdict(view))
    data["customer"]["profile"] = masked_profile(data["customer"]["profile"], user)
    if user is None or user.role not in ("agent", "admin"):
        data["customer"]["identities"] = [[s, "•••"] for s, _ in data["customer"]["identities"]]
    return data
