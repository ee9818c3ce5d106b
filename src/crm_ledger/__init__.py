"""crm-ledger: an event-sourced customer-interaction ledger."""

from crm_ledger.aggregates import Touchpoint
from crm_ledger.application import BatchResult, CustomerView, HistoryEntry, Ledger, Position
from crm_ledger.config import Settings
from crm_ledger.errors import CrmLedgerError

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # The Publisher needs kafka-python; import it only when someone asks for it.
    if name == "Publisher":
        from crm_ledger.adapters.kafka import Publisher

        return Publisher
    raise AttributeError(name)


__all__ = [
    "BatchResult",
    "CrmLedgerError",
    "CustomerView",
    "HistoryEntry",
    "Ledger",
    "Position",
    "Publisher",
    "Settings",
    "Touchpoint",
    "__version__",
]
