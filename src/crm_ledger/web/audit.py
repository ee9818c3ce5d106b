"""The auditors' pages: a customer's stream checked as its export would be (shown on the 360),
the offline-verifiable export to download, the customer's history with both times and its
hashes, the signed checkpoints, and verification of the whole ledger."""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Any

from starlette.responses import JSONResponse, Response

from crm_ledger.errors import NotFound
from crm_ledger.services.ports import plain
from crm_ledger.web.roles import ADMIN, AGENT, ANALYST, AUDITOR, Access

if TYPE_CHECKING:
    from starlette.requests import Request

    from crm_ledger.adapters.users import User
    from crm_ledger.web.app import Console

AUDITORS = frozenset({AUDITOR, ADMIN})
ADMINS = frozenset({ADMIN})
#: Who sees whether a customer's stream is intact (no personal data in it).
STATUS_READERS = frozenset({AGENT, ANALYST, AUDITOR, ADMIN})


def routes(console: Console) -> list[tuple[Access, Any]]:
    """The audit routes and their roles."""
    page = _Audit(console)
    customer = "/customers/{customer_id}"
    return [
        (Access(f"{customer}/audit", ("GET",), STATUS_READERS, False), page.status),
        (Access(f"/api{customer}/audit", ("GET",), STATUS_READERS, True), page.api_status),
        (
            Access(
                f"{customer}/export.jsonl",
                ("GET",),
                AUDITORS,
                True,
                logged="audit-export",
            ),
            page.export,
        ),
        (
            Access(
                f"{customer}/report.{{kind}}",
                ("GET",),
                ADMINS,
                True,
                logged="subject-access-report",
            ),
            page.report,
        ),
        (Access("/audit", ("GET",), AUDITORS, False), page.home),
        (
            Access(
                f"/audit{customer}",
                ("GET",),
                AUDITORS,
                False,
                logged="audit-history",
            ),
            page.history,
        ),
        (
            Access(
                f"/api/audit{customer}",
                ("GET",),
                AUDITORS,
                True,
                logged="audit-history",
            ),
            page.api_history,
        ),
        (Access("/api/audit/verify", ("GET",), AUDITORS, True), page.api_verify),
    ]


class _Audit:
    def __init__(self, console: Console) -> None:
        self.console = console

    async def _status(self, request: Request) -> dict[str, Any]:
        customer_id = request.path_params["customer_id"]
        status = await self.console.call(lambda s: s.audit.status(customer_id))
        return dict(plain(dataclasses.asdict(status)))

    async def status(self, request: Request, user: User | None) -> Response:
        """The audit box of the 360 (loaded by htmx), or a page of its own."""
        fragment = request.headers.get("hx-request") == "true"
        name = "audit_status.html" if fragment else "audit_status_page.html"
        return self.console.render(request, name, user, a=await self._status(request))

    async def api_status(self, request: Request, user: User | None) -> Response:
        return JSONResponse(await self._status(request))

    async def export(self, request: Request, user: User | None) -> Response:
        customer_id = request.path_params["customer_id"]
        lines = await self.console.call(lambda s: list(s.audit.export(customer_id)))
        body = "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines)
        name = f"{customer_id}-audit-export.jsonl"
        return Response(
            body,
            media_type="application/x-ndjson",
            headers={"content-disposition": f'attachment; filename="{name}"'},
        )

    async def report(self, request: Request, user: User | None) -> Response:
        """The subject-access report (admins), as JSON or as the readable HTML page."""
        from crm_ledger.services.reports import subject_access, to_html, to_json

        customer_id, kind = request.path_params["customer_id"], request.path_params["kind"]
        if kind not in ("json", "html"):
            raise NotFound(f"no report as {kind!r}: report.json or report.html")
        report = await self.console.call(lambda s: subject_access(s, customer_id))
        body, media = (
            (to_json(report), "application/json")
            if kind == "json"
            else (
                to_html(report),
                "text/html; charset=utf-8",
            )
        )
        name = f"{customer_id}-subject-access.{kind}"
        return Response(
            body,
            media_type=media,
            headers={"content-disposition": f'attachment; filename="{name}"'},
        )

    async def _history(self, request: Request) -> list[dict[str, Any]]:
        customer_id = request.path_params["customer_id"]
        entries = await self.console.call(lambda s: s.audit.history(customer_id))
        return [plain(dataclasses.asdict(e)) for e in entries]

    async def home(self, request: Request, user: User | None) -> Response:
        customer_id = request.query_params.get("customer", "").strip()
        if customer_id:
            from starlette.responses import RedirectResponse

            return RedirectResponse(f"/audit/customers/{customer_id}", status_code=303)
        return self.console.render(request, "audit.html", user)

    async def history(self, request: Request, user: User | None) -> Response:
        customer_id = request.path_params["customer_id"]
        rows = await self._history(request)
        status = await self._status(request)
        return self.console.render(
            request, "audit_history.html", user, customer_id=customer_id, rows=rows, a=status
        )

    async def api_history(self, request: Request, user: User | None) -> Response:
        return JSONResponse(await self._history(request))

    async def api_verify(self, request: Request, user: User | None) -> Response:
        report = await self.console.call(lambda s: s.audit.verify())
        return JSONResponse(plain(dataclasses.asdict(report)))
