"""crm-ledger: an event-sourced customer-interaction ledger."""

from crm_ledger.aggregates import Touchpoint
from crm_ledger.application import BatchResult, CustomerView, HistoryEntry, Ledger, Position
from crm_ledger.config import Settings
from crm_ledger.errors import CrmLedgerError

__version__ = "0.1.0"

__all__ = [
    "BatchResult",
    "CrmLedgerError",
    "CustomerView",
    "HistoryEntry",
    "Ledger",
    "Position",
    "Settings",
    "Touchpoint",
    "__version__",
]
