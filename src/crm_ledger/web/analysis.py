"""The analysts' pages: value (top customers and organisations, CSV), initiatives (the
before/during/after comparison with its interval, and its chart) and operations."""

from __future__ import annotations

import csv
import dataclasses
import io
from typing import TYPE_CHECKING, Any

from starlette.responses import JSONResponse, RedirectResponse, Response

from crm_ledger.errors import ConfigurationError, InvalidInput, KafkaUnavailable
from crm_ledger.projections.lifetime_value import Value
from crm_ledger.services.ports import Moment, plain
from crm_ledger.services.predictions import CustomerValue
from crm_ledger.web.roles import ADMIN, ANALYST, Access

if TYPE_CHECKING:
    from starlette.requests import Request

    from crm_ledger.adapters.users import User
    from crm_ledger.services import Services
    from crm_ledger.web.app import Console

ANALYSTS = frozenset({ANALYST, ADMIN})
OPERATORS = frozenset({ADMIN})
METRICS = ("net_revenue", "orders", "interactions")
VALUE_BY = ("customer", "organisation", "clv")
#: How deep the value list pages (page times limit rows at most).
MAX_VALUE_ROWS = 10_000
DEAD_LETTERS_SHOWN = 50


def routes(console: Console) -> list[tuple[Access, Any]]:
    """The analysis routes and their roles."""
    page = _Analysis(console)
    return [
        (Access("/value", ("GET",), ANALYSTS, False), page.value),
        (Access("/value.csv", ("GET",), ANALYSTS, True), page.value_csv),
        (Access("/api/value", ("GET",), ANALYSTS, True), page.api_value),
        (Access("/initiatives", ("GET",), ANALYSTS, False), page.initiatives),
        (Access("/initiatives/{initiative_id}", ("GET",), ANALYSTS, False), page.initiative),
        (Access("/initiatives/{initiative_id}/chart.svg", ("GET",), ANALYSTS, True), page.chart),
        (Access("/api/initiatives", ("GET",), ANALYSTS, True), page.api_initiatives),
        (Access("/api/initiatives/{initiative_id}", ("GET",), ANALYSTS, True), page.api_initiative),
        (Access("/operations", ("GET",), OPERATORS, False), page.operations),
        (Access("/api/operations", ("GET",), OPERATORS, True), page.api_operations),
        (Access("/operations/kafka", ("GET",), OPERATORS, False), page.kafka),
        (Access("/api/operations/kafka", ("GET",), OPERATORS, True), page.api_kafka),
        (
            Access(
                "/operations/redrive",
                ("POST",),
                OPERATORS,
                False,
                logged="redrive",
            ),
            page.redrive,
        ),
    ]


class _Analysis:
    def __init__(self, console: Console) -> None:
        self.console = console

    def render(self, request: Request, name: str, user: User | None, **context: Any) -> Response:
        return self.console.render(request, name, user, **context)

    # Value.

    async def _value(self, request: Request) -> dict[str, Any]:
        """Top customers or organisations by net value (live, or in a replayed snapshot), or
        customers by predicted value under the latest CLV model."""
        by = request.query_params.get("by", "customer")
        if by not in VALUE_BY:
            raise InvalidInput(f"by: one of {', '.join(VALUE_BY)}")
        limit = _int(request.query_params.get("limit", "25"), "limit", 1, 1000)
        page = _int(request.query_params.get("page", "1"), "page", 1, MAX_VALUE_ROWS // limit)
        currency = request.query_params.get("currency") or None
        snapshot = request.query_params.get("snapshot") or None
        upto = limit * page  # the top ``upto`` rows, of which this page shows the last ``limit``
        if by == "clv" and snapshot:
            raise InvalidInput("a CLV model has its own moment: leave the snapshot empty")
        at = Moment(snapshot=snapshot)
        kept = self.console.remembered

        def top(s: Services) -> tuple[list[Any], list[str]]:
            values = s.read_models.top(
                upto, at, by_organisation=by == "organisation", currency=currency
            )
            note = s.read_models.currency_note(at, currency)
            return [plain(dataclasses.asdict(v)) for v in values], [note] if note else []

        def read(s: Services) -> tuple[list[Any], list[str], list[dict[str, Any]]]:
            """One call for the whole page (each call waits its turn for a thread)."""
            if by == "clv":  # not kept: a model fitted since changes it, with no new record
                rows, notes = _predicted(s, upto)
            elif snapshot:  # not kept: a snapshot can be dropped and replayed under its name
                rows, notes = top(s)
            else:
                rows, notes = kept(("value", by, upto, currency), lambda: top(s))
            return rows, notes, _snapshots(s)  # not kept: a replay adds one, records none

        rows, notes, snapshots = await self.console.call(read)
        shown = rows[limit * (page - 1) :]
        more = len(rows) == upto and page < MAX_VALUE_ROWS // limit
        return {
            "by": by,
            "limit": limit,
            "page": page,
            "next_page": page + 1 if more else None,
            "first_rank": limit * (page - 1) + 1,
            "currency": currency or "",
            "snapshot": snapshot or "",
            "snapshots": snapshots,
            "rows": shown,
            "notes": notes,
        }

    async def value(self, request: Request, user: User | None) -> Response:
        return self.render(request, "value.html", user, **await self._value(request))

    async def api_value(self, request: Request, user: User | None) -> Response:
        return JSONResponse(await self._value(request))

    async def value_csv(self, request: Request, user: User | None) -> Response:
        data = await self._value(request)
        out = io.StringIO()
        kind = CustomerValue if data["by"] == "clv" else Value
        header = [f.name for f in dataclasses.fields(kind)]  # written even when nothing matched
        writer = csv.DictWriter(out, fieldnames=header, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(data["rows"])
        name = f"top-{data['by']}s-page-{data['page']}.csv"
        return Response(
            out.getvalue(),
            media_type="text/csv",
            headers={"content-disposition": f'attachment; filename="{name}"'},
        )

    # Initiatives.

    async def initiatives(self, request: Request, user: User | None) -> Response:
        found = await self.console.call(lambda s: s.read_models.initiatives())
        rows = [plain(dataclasses.asdict(i)) for i in found]
        return self.render(request, "initiatives.html", user, initiatives=rows)

    async def api_initiatives(self, request: Request, user: User | None) -> Response:
        found = await self.console.call(lambda s: s.read_models.initiatives())
        return JSONResponse([plain(dataclasses.asdict(i)) for i in found])

    async def _compare(self, request: Request) -> tuple[Any, dict[str, str]]:
        initiative_id = request.path_params["initiative_id"]
        metric = request.query_params.get("metric", "net_revenue")
        control = _pairs(request.query_params.get("control", ""))
        currency = request.query_params.get("currency") or None
        chosen = {
            "metric": metric,
            "control": request.query_params.get("control", ""),
            "currency": currency or "",
        }
        result = await self.console.call(
            lambda s: s.read_models.compare(
                initiative_id,
                control=control or None,
                metric=metric,
                currency=currency,
                resamples=1000,
            )
        )
        return result, chosen

    async def initiative(self, request: Request, user: User | None) -> Response:
        result, chosen = await self._compare(request)
        query = "&".join(f"{k}={v}" for k, v in chosen.items() if v)
        return self.render(
            request,
            "initiative.html",
            user,
            r=plain(dataclasses.asdict(result)),
            chosen=chosen,
            metrics=METRICS,
            query=query,
        )

    async def api_initiative(self, request: Request, user: User | None) -> Response:
        result, _ = await self._compare(request)
        return JSONResponse(plain(dataclasses.asdict(result)))

    async def chart(self, request: Request, user: User | None) -> Response:
        result, _ = await self._compare(request)
        svg = await self.console.call(lambda s: s.charts.impact_svg(result))
        return Response(svg, media_type="image/svg+xml")

    # Operations.

    async def _operations(self) -> dict[str, Any]:
        rows, status = await self.console.call(
            lambda s: (s.projections.status(), s.records.status())
        )
        return {
            "projections": [plain(dataclasses.asdict(r)) for r in rows],
            "status": plain(dataclasses.asdict(status)),
        }

    async def operations(self, request: Request, user: User | None) -> Response:
        redriven = request.query_params.get("redriven")
        shown = int(redriven) if redriven and redriven.isdigit() else None
        return self.render(
            request, "operations.html", user, redriven=shown, **await self._operations()
        )

    async def api_operations(self, request: Request, user: User | None) -> Response:
        return JSONResponse(await self._operations())

    async def _kafka(self) -> dict[str, Any]:
        """Ingest positions and lag per partition, and the latest dead letters; when Kafka
        cannot be reached, why (the rest of the console keeps working)."""

        def read(s: Services) -> dict[str, Any]:
            try:
                lag = [plain(dataclasses.asdict(r)) for r in s.kafka.lag()]
                letters = s.kafka.dead_letters(limit=DEAD_LETTERS_SHOWN)
            except (KafkaUnavailable, ConfigurationError) as e:
                return {"topic": s.kafka.topic, "error": str(e), "lag": [], "dead_letters": []}
            rows = [plain(dataclasses.asdict(d)) for d in letters]
            return {"topic": s.kafka.topic, "error": None, "lag": lag, "dead_letters": rows}

        return dict(await self.console.call(read))

    async def kafka(self, request: Request, user: User | None) -> Response:
        return self.render(request, "operations_kafka.html", user, k=await self._kafka())

    async def api_kafka(self, request: Request, user: User | None) -> Response:
        return JSONResponse(await self._kafka())

    async def redrive(self, request: Request, user: User | None) -> Response:
        """Re-publish the dead letters not redriven before (admins), then back to the page."""
        count = await self.console.call(lambda s: s.kafka.redrive())
        return RedirectResponse(f"/operations?redriven={count}", status_code=303)


def _predicted(s: Services, limit: int) -> tuple[list[dict[str, Any]], list[str]]:
    """The customers with the highest predicted value, and which model says so."""
    model = s.predictions.model()
    rows = [plain(dataclasses.asdict(v)) for v in s.predictions.top(limit, model.model_id)]
    note = (
        f"Predicted by CLV model {model.model_id} over {model.horizon:g} {model.unit}, in "
        f"{model.currency}, fitted on purchases up to {model.calibration_end:%Y-%m-%d}."
    )
    return rows, [note]


def _snapshots(s: Services) -> list[dict[str, Any]]:
    """The replayed snapshots (name and moment), for the value page's moment control."""
    seen: dict[str, dict[str, Any]] = {}
    for row in s.projections.status():
        if row.snapshot and row.snapshot not in seen:
            moment = {"name": row.snapshot, "as_of": row.as_of, "valid_at": row.valid_at}
            seen[row.snapshot] = plain(moment)
    return list(seen.values())


def _int(value: str, name: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise InvalidInput(f"{name}: a whole number, got {value!r}") from None
    if not low <= number <= high:
        raise InvalidInput(f"{name}: between {low} and {high}, got {number}")
    return number


def _pairs(value: str) -> dict[str, str]:
    pairs = {}
    for part in filter(None, (p.strip() for p in value.split(","))):
        key, sep, wanted = part.partition("=")
        if not sep or not key or not wanted:
            raise InvalidInput(f"control: use KEY=VALUE, e.g. region=south; got {part!r}")
        pairs[key.strip()] = wanted.strip()
    return pairs
