"""crm-ledger: an event-sourced customer-interaction ledger.

The names below are imported on first use, so that ``import crm_ledger`` (and the CLI's start)
does not load the event store, SQL or Kafka libraries until something needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_WHERE = {
    "Touchpoint": "crm_ledger.aggregates",
    "BatchResult": "crm_ledger.application",
    "CustomerView": "crm_ledger.application",
    "HistoryEntry": "crm_ledger.application",
    "Ledger": "crm_ledger.application",
    "Position": "crm_ledger.application",
    "Settings": "crm_ledger.config",
    "CrmLedgerError": "crm_ledger.errors",
    "Publisher": "crm_ledger.adapters.kafka",
}

if TYPE_CHECKING:
    from crm_ledger.adapters.kafka import Publisher
    from crm_ledger.aggregates import Touchpoint
    from crm_ledger.application import BatchResult, CustomerView, HistoryEntry, Ledger, Position
    from crm_ledger.config import Settings
    from crm_ledger.errors import CrmLedgerError


def __getattr__(name: str) -> object:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
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
