"""Exports for spreadsheets and notebooks: customers, orders, timelines, lifetime value and
predicted CLV, streamed a batch at a time; personal fields only when asked for."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from crm_ledger.errors import InvalidInput
from crm_ledger.projections.contributions import moment
from crm_ledger.projections.customer_360 import CUSTOMERS
from crm_ledger.projections.journey_timeline import TOUCHES
from crm_ledger.projections.lifetime_value import LTV
from crm_ledger.services.ports import LIVE, RowStream

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence
    from pathlib import Path

    from crm_ledger.application import Ledger
    from crm_ledger.services.predictions import Predictions
    from crm_ledger.services.read_models import ReadModels

KINDS = ("customers", "orders", "timeline", "ltv", "clv")
PERSONAL = {"name": "text", "email": "text", "phone": "text"}

COLUMNS: dict[str, dict[str, str]] = {
    "customers": {
        "customer_id": "text",
        "segment": "text",
        "region": "text",
        "country": "text",
        "registered_at": "time",
        "merged_into": "text",
        "erased": "bool",
    },
    "orders": {
        "customer_id": "text",
        "kind": "text",
        "order_id": "text",
        "occurred_at": "time",
        "recorded_at": "time",
        "amount_minor": "int",
        "currency": "text",
        "channel": "text",
        "event_id": "text",
    },
    "timeline": {
        "customer_id": "text",
        "occurred_at": "time",
        "recorded_at": "time",
        "kind": "text",
        "channel": "text",
        "device": "text",
        "detail": "text",
        "direction": "text",
        "campaign": "text",
        "amount_minor": "int",
        "currency": "text",
        "score": "int",
        "consent_granted": "bool",
        "event_id": "text",
    },
    "ltv": {
        "customer_id": "text",
        "currency": "text",
        "orders": "int",
        "gross_minor": "int",
        "refunded_minor": "int",
        "net_minor": "int",
        "margin_minor": "int",
        "first_order_at": "time",
        "last_order_at": "time",
    },
    "clv": {
        "customer_id": "text",
        "frequency": "float",
        "recency": "float",
        "age": "float",
        "monetary": "float",
        "p_alive": "float",
        "expected_purchases": "float",
        "expected_spend": "float",
        "clv": "float",
    },
}


class ExportWriter(Protocol):
    """A file being written in batches (the export adapter)."""

    rows: int

    def write(self, batch: Sequence[Mapping[str, Any]]) -> None:
        """Append rows."""
        ...

    def close(self) -> None:
        """Finish the file."""
        ...


@dataclass(frozen=True, slots=True)
class Exported:
    """An export written: what, where, how many rows, and whether personal data is in it."""

    kind: str
    file: str
    rows: int
    personal: bool


class Exports:
    """Writes one kind of rows to a file."""

    def __init__(
        self,
        ledger: Callable[[], Ledger],
        models: ReadModels,
        store: RowStream,
        predictions: Callable[[], Predictions],
        open_file: Callable[[Path, Mapping[str, str]], ExportWriter],
    ) -> None:
        self._ledger = ledger
        self.models = models
        self.store = store
        self._predictions = predictions
        self._open = open_file

    def export(
        self,
        kind: str,
        path: Path,
        *,
        customer: str | None = None,
        include_personal: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> Exported:
        """Write every row of ``kind`` (one customer's, with ``customer``) to ``path``."""
        if kind not in KINDS:
            raise InvalidInput(f"export what? one of {', '.join(KINDS)}, got {kind!r}")
        if include_personal and kind != "customers":
            raise InvalidInput("personal fields are exported with customers only")
        columns = dict(COLUMNS[kind]) | (PERSONAL if include_personal else {})
        batches = self._batches(kind, customer, include_personal)
        writer = self._open(path, columns)
        try:
            for batch in batches:
                writer.write(batch)
                if progress is not None:
                    progress(writer.rows)
        finally:
            writer.close()
        return Exported(kind, str(path), writer.rows, include_personal)

    def _batches(
        self, kind: str, customer: str | None, personal: bool
    ) -> Iterator[list[dict[str, Any]]]:
        sets = self.models.sets(LIVE)
        label = {name: s.label for name, s in sets.items()}
        streams = self._streams(customer)
        if kind == "customers":
            for rows in self.store.stream_rows(CUSTOMERS, label["customer_360"], where=streams):
                yield [self._customer(r, personal) for r in rows]
        elif kind in ("orders", "timeline"):
            ids = self._ids(label["customer_360"])
            where = dict(streams or {})
            if kind == "orders":
                where["kind"] = ["OrderPlaced", "OrderRefunded"]
            for rows in self.store.stream_rows(TOUCHES, label["journey_timeline"], where=where):
                yield [_touch(kind, r, ids) for r in rows]
        elif kind == "ltv":
            ids = self._ids(label["customer_360"])
            for rows in self.store.stream_rows(LTV, label["lifetime_value"], where=streams):
                yield [_value(r, ids) for r in rows]
        else:
            predictions = self._predictions()
            model = predictions.model()
            chosen = [customer] if customer else ()
            rows = predictions.store.clv_rows(model.model_id, customers=chosen)
            for start in range(0, len(rows), 10_000):
                yield [{c: r[c] for c in COLUMNS["clv"]} for r in rows[start : start + 10_000]]

    def _streams(self, customer: str | None) -> dict[str, list[str]] | None:
        if customer is None:
            return None
        return {"stream": self.models.stream_ids(customer)}

    def _ids(self, label: str) -> dict[str, str]:
        ids: dict[str, str] = {}
        for rows in self.store.stream_rows(CUSTOMERS, label):
            ids.update((r["stream"], r["customer_id"]) for r in rows)
        return ids

    def _customer(self, row: Mapping[str, Any], personal: bool) -> dict[str, Any]:
        out = {c: row.get(c) for c in COLUMNS["customers"]}
        out["registered_at"] = _time(row["registered_at"])
        out["erased"] = bool(row["erased"])
        out["merged_into"] = row["merged_into"] or None
        if personal:
            profile = self._ledger().customer(row["customer_id"]).profile
            out |= {f: profile.get(f) for f in PERSONAL}
        return out


def _touch(kind: str, row: Mapping[str, Any], ids: Mapping[str, str]) -> dict[str, Any]:
    common = {
        "customer_id": ids.get(row["stream"], row["stream"]),
        "occurred_at": _time(row["occurred"]),
        "recorded_at": _time(row["recorded"]),
        "kind": row["kind"],
        "channel": row["channel"],
        "amount_minor": row["amount_minor"],
        "currency": row["currency"],
        "event_id": row["event_id"],
    }
    if kind == "orders":
        return common | {"order_id": row["detail"]}
    granted = row["granted"]
    return common | {
        "device": row["device"],
        "detail": row["detail"],
        "direction": row["direction"],
        "campaign": row["campaign"],
        "score": row["score"],
        "consent_granted": None if granted is None else bool(granted),
    }


def _value(row: Mapping[str, Any], ids: Mapping[str, str]) -> dict[str, Any]:
    return {
        "customer_id": ids.get(row["stream"], row["stream"]),
        "currency": row["currency"],
        "orders": row["orders"],
        "gross_minor": row["gross_minor"],
        "refunded_minor": row["refunded_minor"],
        "net_minor": row["gross_minor"] - row["refunded_minor"],
        "margin_minor": row["margin_minor"],
        "first_order_at": _time(row["first_order_at"]),
        "last_order_at": _time(row["last_order_at"]),
    }


def _time(value: int | None) -> Any:
    return None if value is None else moment(value)
