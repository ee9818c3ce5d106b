"""An in-memory ledger store (eventsourcing's POPO recorder plus the ledger's receipts,
positions, hash chain, data keys and outbox), for unit tests of the services without files.

It keeps the same promises as the SQLite and PostgreSQL recorders, checked by the same
contract tests: a batch's events, chain links, keys, receipts, positions and outbox letters
are all written or none are (everything is checked under the lock before anything changes).
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any, ClassVar

from eventsourcing.persistence import IntegrityError
from eventsourcing.popo import POPOAggregateRecorder, POPOApplicationRecorder, POPOFactory
from eventsourcing.utils import get_topic

from crm_ledger.adapters.eventstore.mapper import LedgerMapper
from crm_ledger.adapters.eventstore.recording import LedgerRecording, stream_bytes
from crm_ledger.application import OutboxLetter, StoredCopy, batch_records

if TYPE_CHECKING:
    from collections.abc import Sequence
    from uuid import UUID

    from eventsourcing.persistence import AggregateRecorder, ApplicationRecorder, StoredEvent


class LedgerMemoryRecorder(LedgerRecording, POPOApplicationRecorder):
    """The ledger's recorder on plain Python objects."""

    events_table_name: ClassVar[str] = "stored_events"

    def __init__(self) -> None:
        super().__init__()
        self._chain: dict[bytes, dict[int, tuple[bytes, bytes]]] = {}
        self._keys: dict[bytes, bytes | None] = {}
        self._receipts: dict[UUID, tuple[UUID, int]] = {}
        self._positions: dict[tuple[str, int], int] = {}
        self._outbox: dict[int, OutboxLetter] = {}
        self._outbox_ids = itertools.count(1)
        self._links: list[tuple[bytes, int, bytes, bytes]] = []

    # Writing: check everything, then change everything.

    def _assert_uniqueness(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> None:
        super()._assert_uniqueness(stored_events, **kwargs)
        receipts = batch_records(kwargs).receipts
        ids = [r.event_id for r in receipts]
        if len(set(ids)) < len(ids) or any(i in self._receipts for i in ids):
            raise IntegrityError("an event_id of the batch is stored already")
        streams = [stream_bytes(s.originator_id) for s in stored_events]
        wanted = self.heads.missing(streams, stored_events)
        found = {
            stream: (version, self._chain[stream][version][1])
            for stream, version in wanted.items()
            if version in self._chain.get(stream, {})
        }
        self._links = self.heads.chain(streams, stored_events, found)

    def _update_table(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        ids = super()._update_table(stored_events, **kwargs)
        for stream, version, content, chained in self._links:
            self._chain.setdefault(stream, {})[version] = (content, chained)
        self._keys.update(self.data_keys.take_pending())
        records = batch_records(kwargs)
        for r in records.receipts:
            self._receipts[r.event_id] = (r.originator_id, r.originator_version)
        for p in records.positions:
            key = (p.source, p.partition)
            self._positions[key] = max(self._positions.get(key, 0), p.next_offset)
        for letter in records.dead_letters:
            self._outbox[next(self._outbox_ids)] = letter
        return ids

    # Keys.

    def load_key(self, stream: bytes) -> bytes | None:
        """The stream's data key; None if it has none or it was destroyed."""
        with self._database_lock:
            return self._keys.get(stream)

    def destroy_key(self, stream: bytes) -> None:
        """Destroy the stream's data key."""
        with self._database_lock:
            self._keys[stream] = None
        self.data_keys.forget(stream)

    def rewrap_keys(self) -> int:
        """Wrap every live data key again by the current KEK; how many."""
        with self._database_lock:
            live = [(k, v) for k, v in self._keys.items() if v is not None]
            for k, v in live:
                self._keys[k] = self.data_keys.rewrapped(k, v) or v
        return len(live)

    # Reading.

    def existing_ids(self, originator_ids: Sequence[UUID]) -> set[UUID]:
        """The subset of ``originator_ids`` that have stored events."""
        with self._database_lock:
            return {i for i in originator_ids if self._stored_events_index.get(str(i))}

    def receipted_events(self, event_ids: Sequence[UUID]) -> list[StoredCopy]:
        """The stored events of those of ``event_ids`` already stored."""
        found = []
        with self._database_lock:
            for event_id in event_ids:
                if event_id not in self._receipts:
                    continue
                stream, version = self._receipts[event_id]
                s = self._stored_events[self._stored_events_index[str(stream)][version]]
                found.append(StoredCopy(event_id, stream, version, s.topic, s.state))
        return found

    def pending_dead_letters(self, limit: int) -> list[tuple[int, OutboxLetter]]:
        """Up to ``limit`` outbox letters not yet sent, oldest first, with their ids."""
        with self._database_lock:
            return sorted(self._outbox.items())[:limit]

    def remove_dead_letters(self, ids: Sequence[int]) -> None:
        """Forget outbox letters the dead-letter topic acknowledged."""
        with self._database_lock:
            for i in ids:
                self._outbox.pop(i, None)

    def reset_positions(self, source: str) -> int:
        """Forget every stored position of ``source``; how many partitions had one."""
        with self._database_lock:
            keys = [k for k in self._positions if k[0] == source]
            for k in keys:
                del self._positions[k]
            return len(keys)

    def positions(self, source: str) -> dict[int, int]:
        """Partition -> next offset stored for ``source``."""
        with self._database_lock:
            return {p: o for (s, p), o in self._positions.items() if s == source}

    def select_log(self, after: int, limit: int) -> list[tuple[Any, ...]]:
        """(position, originator id, version, topic, state) of notifications after ``after``."""
        with self._database_lock:
            chosen = self._stored_events[after : after + limit]
            return [
                (after + i + 1, s.originator_id, s.originator_version, s.topic, s.state)
                for i, s in enumerate(chosen)
            ]

    def select_stream(self, originator_id: UUID) -> list[tuple[Any, ...]]:
        """(0, originator id, version, topic, state) of one stream's events, in order."""
        return [
            (0, s.originator_id, s.originator_version, s.topic, s.state)
            for s in self.select_events(originator_id)
        ]

    def count_receipts(self) -> int:
        """How many distinct events the ledger holds."""
        with self._database_lock:
            return len(self._receipts)


class LedgerMemorySnapshots(POPOAggregateRecorder):
    """Snapshots on plain Python objects."""

    events_table_name: ClassVar[str] = "snapshots"


class LedgerMemoryFactory(POPOFactory):
    """eventsourcing's POPO infrastructure with the ledger's recorders."""

    def aggregate_recorder(self, purpose: str = "events") -> AggregateRecorder:
        """The snapshot store."""
        return LedgerMemorySnapshots()

    def application_recorder(self) -> ApplicationRecorder:
        """The ledger's recorder."""
        return LedgerMemoryRecorder()


def memory_env() -> dict[str, str]:
    """eventsourcing settings for an in-memory ledger (gone when the Ledger is)."""
    return {
        "PERSISTENCE_MODULE": get_topic(LedgerMemoryFactory),
        "MAPPER_TOPIC": get_topic(LedgerMapper),
    }
