"""The console's ASGI app: routes with their roles, sign-in, CSRF, security headers, and the
pages and JSON twins over one ``Services`` object."""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import secrets
import threading
import time
from collections import defaultdict, deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from crm_ledger.errors import CrmLedgerError, InvalidInput, NotFound, StoreUnavailable
from crm_ledger.projections.lifetime_value import minor_unit_exponent
from crm_ledger.services.ports import Moment
from crm_ledger.web.roles import ADMIN, AGENT, ANALYST, SEES_PERSONAL, Access, mask

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable, Iterator, MutableMapping

    from starlette.requests import Request
    from starlette.types import ASGIApp, Receive, Scope, Send

    from crm_ledger.adapters.avro import SchemaRegistry
    from crm_ledger.adapters.users import User, UserFile
    from crm_ledger.services import Services

HERE = Path(__file__).parent
LOG = logging.getLogger("crm_ledger.web")
T = TypeVar("T")
CUSTOMER_READERS = frozenset({AGENT, ANALYST, ADMIN})
#: Failed sign-ins allowed per client and name in the window, then 429.
SIGNIN_LIMIT, SIGNIN_WINDOW = 5, 300.0
JOURNEY_PAGE = 50
#: How stale the read models may be, in seconds (events recorded since show after it).
CATCH_UP_EVERY = 1.0
#: Service calls running at once. More threads than this only fight over the interpreter
#: lock: at 8 clients, 40 threads (Starlette's default pool) gave a p95 of 140 ms on the 360
#: where 2 gave 52 ms (scripts/bench_console.py, 2 cores).
CALL_THREADS = min(4, max(2, os.cpu_count() or 2))
#: How many kept answers (the value list per query) before they are all dropped.
KEPT_AT_MOST = 256
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


class Console:
    """The app's state: services (one per process, shared by the requests' threads), users,
    templates, the sign-in limiter and the read-model freshness.

    Requests run their service calls side by side on the console's own CALL_THREADS threads;
    catching the read models up (at most once every CATCH_UP_EVERY seconds, by whichever
    request finds it due) waits for the running calls and holds the next ones back while it
    writes. Answers that are costly and the same for everyone (the value list) are kept until
    the next catch-up that applies anything."""

    def __init__(self, services: Services, users: UserFile) -> None:
        self.services = services
        self.users = users
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        self.templates.env.filters["money"] = money
        self.templates.env.filters["amount"] = amount
        self.gate = SharedGate()
        self._catching = threading.Lock()
        self.failures: dict[tuple[str, str], deque[float]] = defaultdict(deque)
        self.access: list[Access] = []
        self.caught_up = float("-inf")
        self._kept: dict[Hashable, Any] = {}
        services.access.start()  # page views queue their records; a thread appends them
        self._threads = ThreadPoolExecutor(CALL_THREADS, thread_name_prefix="console")

    def render(self, request: Request, name: str, user: User | None, **context: Any) -> Response:
        """A page, with what every template needs (the user, the CSRF token, the path)."""
        context |= {"user": user, "csrf": csrf_token(request), "path": request.url.path}
        return self.templates.TemplateResponse(request, name, context)

    async def call(self, work: Callable[[Services], T]) -> T:
        """``work(services)`` on a worker thread, the read models caught up first when due
        (one call per page: each call waits its turn for a thread)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._threads, self._call, work)

    def _call(self, work: Callable[[Services], T]) -> T:
        self.catch_up_if_due()
        with self.gate.shared():
            return work(self.services)

    def remembered(self, key: Hashable, compute: Callable[[], T]) -> T:
        """``compute()``, kept under ``key`` until new records are applied (call it inside a
        service call, where the gate is held)."""
        if key not in self._kept:
            if len(self._kept) >= KEPT_AT_MOST:  # keys come from query strings
                self._kept.clear()
            self._kept[key] = compute()
        answer: T = self._kept[key]
        return answer

    def catch_up_if_due(self) -> None:
        """Catch the read models up unless it was done less than CATCH_UP_EVERY seconds ago
        or another thread is doing it now."""
        if time.monotonic() - self.caught_up < CATCH_UP_EVERY:
            return
        if not self._catching.acquire(blocking=False):
            return
        try:
            with self.gate.exclusive():
                if self.services.read_models.catch_up():
                    self._kept.clear()
                self.services.read_models.sets(Moment())  # the live tables, looked up once
                self.caught_up = time.monotonic()
        finally:
            self._catching.release()


class SharedGate:
    """Many holders at once, or one exclusive holder (who, once waiting, goes first)."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._holders = 0
        self._exclusive = False
        self._waiting = 0

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._changed:
            self._changed.wait_for(lambda: not self._exclusive and not self._waiting)
            self._holders += 1
        try:
            yield
        finally:
            with self._changed:
                self._holders -= 1
                self._changed.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._changed:
            self._waiting += 1
            self._changed.wait_for(lambda: not self._exclusive and not self._holders)
            self._waiting -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._changed:
                self._exclusive = False
                self._changed.notify_all()


def create_app(
    services: Services, users: UserFile, secret: bytes, registry: SchemaRegistry | None = None
) -> Starlette:
    """The console over ``services``; sessions signed with ``secret``; with ``registry``, its
    schemas served by the Schema Registry API too."""
    console = Console(services, users)
    routes: list[BaseRoute] = [
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    ]
    declared = _declared(console)
    if registry is not None:
        from crm_ledger.web.registry import routes as registry_routes

        declared += registry_routes(registry)
    for access, endpoint in declared:
        console.access.append(access)
        routes.append(
            Route(access.path, _guarded(console, access, endpoint), methods=list(access.methods))
        )
    middleware = [
        Middleware(SecurityHeaders),
        Middleware(
            SessionMiddleware,
            secret_key=secret.hex(),
            same_site="strict",
            max_age=8 * 3600,
            session_cookie="crm_ledger_session",
        ),
    ]
    app = Starlette(routes=routes, middleware=middleware)
    app.state.console = console
    return app


class SecurityHeaders:
    """A strict Content-Security-Policy (no inline script or style) and friends, everywhere."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = message.setdefault("headers", [])
                headers += [
                    (b"content-security-policy", CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"same-origin"),
                    (b"x-frame-options", b"DENY"),
                    (b"cache-control", b"no-store"),
                ]
            await send(message)

        await self.app(scope, receive, with_headers)


def _guarded(console: Console, access: Access, endpoint: Any) -> Any:
    async def handle(request: Request) -> Response:
        bearer = _bearer(request)
        user = console.users.by_token(bearer) if bearer else _current_user(console, request)
        response = await _answer(request, bearer, user)
        if access.logged:
            _log_access(console, request, access, response.status_code, user, bearer)
        return response

    async def _answer(request: Request, bearer: str | None, user: User | None) -> Response:
        if access.roles:
            if user is None:
                if bearer:
                    refused = {"error": "the API token is unknown or revoked"}
                    return JSONResponse(refused, status_code=401)
                if access.api:
                    return JSONResponse({"error": "sign in first"}, status_code=401)
                return RedirectResponse(f"/signin?next={request.url.path}", status_code=303)
            if user.role not in access.roles:
                return _error(console, request, access, 403, "your role may not see this page")
        # A token is sent by the program itself (no cookie a page could make a browser send).
        forgeable = access.csrf and not bearer
        if request.method == "POST" and forgeable and not _csrf_ok(request, await request.form()):
            return _error(console, request, access, 403, "the form expired: reload the page")
        try:
            response: Response = await endpoint(request, user)
        except NotFound as e:
            return _error(console, request, access, 404, str(e))
        except InvalidInput as e:
            return _error(console, request, access, 400, str(e))
        except StoreUnavailable as e:
            return _error(console, request, access, 503, str(e))
        except CrmLedgerError as e:
            return _error(console, request, access, 400, str(e))
        except Exception:  # a bug or a store returning what it should not: logged, not shown
            LOG.exception("%s %s failed", request.method, request.url.path)
            message = "the console could not answer this; the server log says why"
            return _error(console, request, access, 500, message)
        return response

    return handle


def _log_access(
    console: Console,
    request: Request,
    access: Access,
    status: int,
    user: User | None,
    bearer: str | None,
) -> None:
    """Queue the access record of a logged route's request (no personal data in it: the
    user's name, the customer's id, the moment asked for, what came of it)."""
    try:
        at = moment_of(request)
    except InvalidInput:
        at = Moment()
    outcome = {401: "refused", 403: "refused", 404: "not-found", 400: "invalid"}.get(
        status, "allowed" if status < 400 else "failed"
    )
    console.services.access.record(
        actor=user.name if user else "anonymous",
        role=user.role if user else "-",
        client="api" if access.api or bearer else "console",
        action=access.logged or "",
        subject=request.path_params.get("customer_id"),
        outcome=outcome,
        as_of=at.as_of,
        valid_at=at.valid_at,
    )


def _bearer(request: Request) -> str | None:
    """The API token of an ``Authorization: Bearer`` header, if any."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def _current_user(console: Console, request: Request) -> User | None:
    name = request.session.get("user")
    if not name:
        return None
    user = console.users.get(name)
    if user is None or user.disabled:
        request.session.clear()
        return None
    return user


def csrf_token(request: Request) -> str:
    """The session's CSRF token (made on first use)."""
    token = request.session.get("csrf")
    if not token:
        token = request.session["csrf"] = secrets.token_urlsafe(32)
    return str(token)


def _csrf_ok(request: Request, form: Any) -> bool:
    sent = str(form.get("csrf", "")) or request.headers.get("x-csrf-token", "")
    expected = request.session.get("csrf", "")
    return bool(expected) and hmac.compare_digest(sent, str(expected))


def _error(
    console: Console, request: Request, access: Access, status: int, message: str
) -> Response:
    if access.api:
        return JSONResponse({"error": message}, status_code=status)
    return console.templates.TemplateResponse(
        request,
        "error.html",
        {"status": status, "message": message, "user": None},
        status_code=status,
    )


def money(minor: int | None, currency: str | None) -> str:
    """An amount in minor units as people read it: 37818, EUR -> 378.18 EUR."""
    if minor is None:
        return ""
    places = minor_unit_exponent(currency or "")
    return f"{minor / 10**places:,.{places}f} {currency or ''}".strip()


def amount(value: float | None, currency: str | None) -> str:
    """A figure of a comparison: money (a currency given) in major units, counts as they are;
    two decimals."""
    if value is None:
        return ""
    scale = 10 ** minor_unit_exponent(currency) if currency else 1
    return f"{value / scale:,.2f}"


def moment_of(request: Request) -> Moment:
    """The moment a page shows: ?as_of= (recorded) and ?valid_at= (occurred), ISO 8601."""

    def when(name: str) -> datetime | None:
        value = request.query_params.get(name) or None
        if value is None:
            return None
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidInput(
                f"{name}: {value!r} is not a time such as 2025-03-01T12:00"
            ) from None
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)

    return Moment(as_of=when("as_of"), valid_at=when("valid_at"))


def masked_profile(profile: dict[str, Any], user: User | None) -> dict[str, Any]:
    if user is not None and user.role in SEES_PERSONAL:
        return profile
    personal = ("name", "email", "phone", "address")
    return {k: (mask(v) if k in personal else v) for k, v in profile.items()}


def _declared(console: Console) -> list[tuple[Access, Any]]:
    """Every route with its roles (the route tests read this list)."""
    from crm_ledger.web import pages

    return pages.routes(console)
