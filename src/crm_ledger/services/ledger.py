"""The ledger's own use cases: where it is, recording one event, a customer's history, key
rotation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import datetime

    from crm_ledger.aggregates import Touchpoint
    from crm_ledger.application import HistoryEntry, Ledger


class JsonDecoder(Protocol):
    """Turns an event given as a JSON object into a schema-checked touchpoint."""

    def from_json(self, obj: Any) -> Touchpoint:
        """The touchpoint, or InvalidInput naming the field at fault."""
        ...


#: What the two counts mean, so that they reconcile with `audit verify`.
COUNTS_NOTE = (
    "events: touchpoints received (one per event_id); stored_events: every event in the "
    "log, which audit verify checks: the touchpoints plus those the ledger records itself "
    "(opening each customer's and organisation's stream, and the access log's records)"
)


@dataclass(frozen=True, slots=True)
class LedgerStatus:
    """Which store holds the ledger, where, and what it holds."""

    store: str
    location: str
    events: int
    stored_events: int
    counts: str = COUNTS_NOTE


@dataclass(frozen=True, slots=True)
class Recorded:
    """One event given to the ledger, and whether it was new."""

    event_id: str
    type: str
    customer_id: str
    stored: bool


class LedgerService:
    """Status, recording and history over one ledger."""

    def __init__(
        self,
        ledger: Callable[[], Ledger],
        decoder: Callable[[], JsonDecoder],
        *,
        store: str,
        location: str,
    ) -> None:
        self._ledger = ledger  # opened on first use: bad input is refused before
        self._decoder = decoder
        self.store = store
        self.location = location

    def status(self) -> LedgerStatus:
        """The store, its location and the number of events."""
        ledger = self._ledger()
        return LedgerStatus(self.store, self.location, ledger.count_events(), ledger.log_head())

    def record_json(self, obj: Any) -> Recorded:
        """Record one event given as a JSON object (a duplicate event_id is not stored)."""
        touchpoint = self._decoder().from_json(obj)
        stored = self._ledger().record(touchpoint)
        return Recorded(
            str(touchpoint.event_id), touchpoint.event_type, touchpoint.customer_id, stored
        )

    def history(
        self, customer_id: str, *, as_of: datetime | None = None, limit: int | None = None
    ) -> list[HistoryEntry]:
        """The customer's stored events recorded by ``as_of`` (the last ``limit``)."""
        entries = self._ledger().history(customer_id, as_of=as_of)
        return entries[-limit:] if limit else entries

    def rotate_keys(self) -> int:
        """Re-wrap every data key under a new key-encryption key; keys re-wrapped."""
        return self._ledger().rotate_keys()
