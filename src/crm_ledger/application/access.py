"""The access log: who read a customer's personal data, and who did what as an administrator,
kept as events of one reserved stream in the event store, so the hash chain, `audit
checkpoint` and `audit verify` cover each record as they cover the customers' events.

A record names people by their user names and customers by their ids, never by personal
data. Records are appended in batches by one writer; a batch that loses a race with another
process (two writers took the same next version) is retried after the head it lost to.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.persistence import IntegrityError, StoredEvent

from crm_ledger.errors import StoreUnavailable

if TYPE_CHECKING:
    from collections.abc import Sequence

    from eventsourcing.persistence import ApplicationRecorder

#: The reserved stream of the access log (no customer, organisation or initiative has it).
ACCESS_STREAM = uuid5(NAMESPACE_URL, "crm-ledger:access-log")
#: The topic of an access record: its class (projections read no such topic).
ACCESS_TOPIC = "crm_ledger.application.access:AccessRecord"
#: A batch that loses a race for the next versions is retried this many times.
ATTEMPTS = 20


@dataclass(frozen=True, slots=True)
class AccessRecord:
    """One read of a customer's data, or one administrative act, allowed or refused."""

    at: datetime
    actor: str
    role: str
    client: str  # console, api or cli
    action: str
    subject: str | None  # a customer id, a user name, a snapshot; never personal data
    outcome: str  # allowed, refused, not-found, failed
    as_of: datetime | None = None
    valid_at: datetime | None = None

    def encoded(self) -> bytes:
        """The record as stored (sorted JSON, times in ISO 8601)."""
        values = {
            k: v.isoformat() if isinstance(v, datetime) else v for k, v in asdict(self).items()
        }
        return json.dumps(values, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def decoded(cls, state: bytes) -> AccessRecord:
        values: dict[str, Any] = json.loads(state)
        for name in ("at", "as_of", "valid_at"):
            if values.get(name) is not None:
                values[name] = datetime.fromisoformat(values[name])
        return cls(**values)


def append(recorder: ApplicationRecorder, records: Sequence[AccessRecord]) -> int:
    """Append ``records`` to the access stream in one transaction; the version of the last."""
    for _ in range(ATTEMPTS):
        newest = recorder.select_events(ACCESS_STREAM, desc=True, limit=1)
        version = newest[0].originator_version if newest else 0
        stored = [
            StoredEvent(ACCESS_STREAM, version + n, ACCESS_TOPIC, r.encoded())
            for n, r in enumerate(records, start=1)
        ]
        try:
            recorder.insert_events(stored)
        except IntegrityError:
            continue  # another process took those versions: append after its records
        return version + len(records)
    msg = f"the access log lost {ATTEMPTS} races for its next versions in a row"
    raise StoreUnavailable(msg)


def read(recorder: ApplicationRecorder) -> list[tuple[int, AccessRecord]]:
    """Every access record with its version, oldest first."""
    return [
        (s.originator_version, AccessRecord.decoded(s.state))
        for s in recorder.select_events(ACCESS_STREAM)
    ]


def is_access_stream(stream: UUID) -> bool:
    return stream == ACCESS_STREAM
