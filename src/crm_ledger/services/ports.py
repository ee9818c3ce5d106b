"""What the services need of the read models' store, and which moment a query answers at:
light modules (no numpy, no SQL), so an entrypoint can name them without loading either."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol
from uuid import UUID

from crm_ledger.projections.contributions import counts_at, micros

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

    from crm_ledger.application import LogRecord
    from crm_ledger.projections.contributions import Table


@dataclass(frozen=True, slots=True)
class Moment:
    """Which state to answer from: live, a snapshot, or one customer as of a time."""

    snapshot: str | None = None
    as_of: datetime | None = None
    valid_at: datetime | None = None

    @property
    def replays_history(self) -> bool:
        """True when the answer is projected from the event store as of a moment."""
        return self.as_of is not None or self.valid_at is not None

    def counts(self, record: LogRecord) -> bool:
        """Whether ``record`` counts at this moment."""
        return counts_at(
            record,
            as_of=micros(self.as_of) if self.as_of is not None else None,
            valid_at=micros(self.valid_at) if self.valid_at is not None else None,
        )


LIVE = Moment()


def plain(value: Any) -> Any:
    """A service result (``dataclasses.asdict`` of it) as JSON values: times in ISO 8601,
    UUIDs as text, tuples as lists; the shapes the console's JSON and the reports share."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


class QueryStore(Protocol):
    """The queries the SQL adapter answers on table sets."""

    def rows(
        self, spec: Table, label: str, column: str, values: Sequence[Any]
    ) -> list[dict[str, Any]]:
        """Rows whose ``column`` is one of ``values``."""
        ...

    def all_rows(self, spec: Table, label: str) -> list[dict[str, Any]]:
        """Every row of a table."""
        ...

    def consent_rows(self, touches: tuple[Table, str]) -> list[dict[str, Any]]:
        """Consent changes and outbound campaign touches."""
        ...

    def top_values(
        self,
        ltv: tuple[Table, str],
        customers: tuple[Table, str],
        links: tuple[Table, str] | None,
        *,
        currency: str,
        limit: int,
    ) -> list[dict[str, Any]]:
        """Highest net value per customer (or organisation, with ``links``)."""
        ...

    def currencies(self, ltv: tuple[Table, str]) -> list[tuple[str, int]]:
        """Currencies by number of orders."""
        ...

    def last_occurred(self, touches: tuple[Table, str], passive: Sequence[str]) -> int | None:
        """The business time of the latest touch of a kind not in ``passive``."""
        ...

    def weekly_activity(
        self, touches: tuple[Table, str], currency: str, passive: Sequence[str]
    ) -> list[tuple[Any, ...]]:
        """(stream, week, active touches, orders, net revenue, interactions) rows."""
        ...


class ClvStore(Protocol):
    """Where purchases are read and fitted models kept (the SQL adapter)."""

    def purchases(
        self, touches: tuple[Table, str], currency: str, *, until: int, as_of: int | None
    ) -> list[tuple[str, int, int]]:
        """(stream, occurred, amount in minor units) of the orders in ``currency``."""
        ...

    def save_clv(self, model: dict[str, Any], rows: Sequence[dict[str, Any]]) -> int:
        """Store a model and its per-customer rows."""
        ...

    def clv_model(self, model_id: int | None) -> dict[str, Any] | None:
        """A stored model, the latest by default."""
        ...

    def clv_rows(
        self, model_id: int, *, customers: Sequence[str] = (), top: int | None = None
    ) -> list[dict[str, Any]]:
        """Per-customer predictions of a model."""
        ...


class DirectoryStore(Protocol):
    """The directory queries of the read models' store."""

    def search(self, index: tuple[Table, str], column: str, token: str, limit: int) -> list[str]:
        """Customer ids whose ``column`` token is ``token``."""
        ...

    def directory_page(
        self,
        customers: tuple[Table, str],
        consents: tuple[Table, str],
        links: tuple[Table, str],
        *,
        where: Mapping[str, str],
        consent: tuple[str, str, bool] | None,
        organisation: str | None,
        after: str | None,
        limit: int,
    ) -> list[dict[str, Any]]:
        """Surviving customers matching the filters, in id order after ``after``."""
        ...

    def rows(self, spec: Table, label: str, column: str, values: Any) -> list[dict[str, Any]]:
        """Rows whose ``column`` is one of ``values``."""
        ...


class RowStream(Protocol):
    """The read models' store, read a batch at a time."""

    def stream_rows(
        self,
        spec: Table,
        label: str,
        *,
        where: Mapping[str, Sequence[Any]] | None = None,
        batch: int = 10_000,
    ) -> Iterator[list[dict[str, Any]]]:
        """Every row of a table, in batches."""
        ...
