"""The newest position of a SQLite ledger's log, read with the standard library alone, so a
query over read models that are up to date answers without loading the event store and the
domain (eventsourcing, the mapper, the aggregates' event classes, the cryptography)."""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

#: The SQLite header's application id that marks a crm-ledger database ("CRML").
SQLITE_APPLICATION_ID = 0x43524D4C

#: eventsourcing's events table, as the SQLite recorder names it; a notification's position
#: is the row's rowid (eventsourcing's ``select_max_notification_id_statement``).
EVENTS_TABLE = "stored_events"


def sqlite_log_head(path: Path) -> int | None:
    """The largest notification id in the ledger at ``path`` (0 for an empty log), opened
    read-only; None when the file is missing, is not marked as a ledger (an old ledger is marked
    when it is next opened) or cannot be read: the caller then opens the Ledger, which says what
    is wrong."""
    if not path.is_file():
        return None
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error:
        return None
    try:
        if conn.execute("PRAGMA application_id").fetchone()[0] != SQLITE_APPLICATION_ID:
            return None
        row = conn.execute(f"SELECT MAX(rowid) FROM {EVENTS_TABLE}").fetchone()
    except sqlite3.Error:
        return None
    finally:
        conn.close()
    return int(row[0] or 0)
