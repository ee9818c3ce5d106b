"""The Ledger application: write use cases, reads of one customer, and the plain values and
ports around them."""

from crm_ledger.application.ledger import (
    DEFAULT_CACHE_SIZE,
    ERASURE_SOURCE,
    MAX_ATTEMPTS,
    OPEN_ATTEMPTS,
    Ledger,
)
from crm_ledger.application.records import (
    RECORDS_KWARG,
    BatchRecords,
    BatchResult,
    CustomerView,
    HistoryEntry,
    KeyWrapping,
    LedgerRecorder,
    LogMapper,
    LogPage,
    LogRecord,
    OutboxLetter,
    Position,
    Receipt,
    Rejection,
    StoredCopy,
    batch_records,
)

__all__ = [
    "DEFAULT_CACHE_SIZE",
    "ERASURE_SOURCE",
    "MAX_ATTEMPTS",
    "OPEN_ATTEMPTS",
    "RECORDS_KWARG",
    "BatchRecords",
    "BatchResult",
    "CustomerView",
    "HistoryEntry",
    "KeyWrapping",
    "Ledger",
    "LedgerRecorder",
    "LogMapper",
    "LogPage",
    "LogRecord",
    "OutboxLetter",
    "Position",
    "Receipt",
    "Rejection",
    "StoredCopy",
    "batch_records",
]
