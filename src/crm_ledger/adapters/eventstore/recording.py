"""What both event store recorders add to eventsourcing's: the hash chain's heads, the data
keys, the outbox layout, and small helpers shared by the SQLite and PostgreSQL modules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast
from uuid import UUID

from eventsourcing.persistence import IntegrityError, StoredEvent

from crm_ledger.adapters.crypto import DataKeys
from crm_ledger.application import OutboxLetter
from crm_ledger.audit import (
    GENESIS,
    StoredRecord,
    chain_hash,
    content_hash,
)
from crm_ledger.errors import BatchesNotStored, StoreUnavailable

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

T = TypeVar("T")


#: How many ids one dedup look-up sends at a time (SQLite's variable limit is 32766).
LOOKUP_CHUNK = 900


def chunks(items: Sequence[UUID]) -> Iterable[Sequence[UUID]]:
    for start in range(0, len(items), LOOKUP_CHUNK):
        yield items[start : start + LOOKUP_CHUNK]


def as_bytes(value: Any) -> bytes:
    """Stored bytes, also when a row was rewritten with another type (SQLite allows it)."""
    if isinstance(value, bytes | memoryview):
        return bytes(value)
    return str(value).encode()


def raw_cursor(cursor: Any) -> Any:
    """The sqlite3 cursor inside eventsourcing's wrapper (for row_factory, fetchmany)."""
    return getattr(cursor, "sqlite_cursor", cursor)


def stream_bytes(originator_id: UUID | str) -> bytes:
    return originator_id.bytes if isinstance(originator_id, UUID) else bytes.fromhex(originator_id)


def byte_chunks(items: Sequence[bytes]) -> Iterable[Sequence[bytes]]:
    for start in range(0, len(items), LOOKUP_CHUNK):
        yield items[start : start + LOOKUP_CHUNK]


#: Every stream's newest event's chain hash (for checkpoints); {events} is the events table.
HEADS_QUERY = (
    "SELECT c.originator_id, c.originator_version, c.chain_hash FROM {events} c "
    "JOIN (SELECT originator_id, MAX(originator_version) AS v FROM {events} "
    "GROUP BY originator_id) m ON m.originator_id = c.originator_id "
    "AND m.v = c.originator_version"
)

#: Chain heads kept in memory, so that most batches need no look-up.
HEADS_CACHE_SIZE = 200_000


class ChainHeads:
    """The newest chain hash of recently written streams.

    A head enters the cache only after its transaction committed, and is used only when its
    version is exactly the one before a batch's first event of that stream; anything else is
    looked up in the chain table. So a stale entry (another writer moved the stream on) is
    never used: its version no longer fits.
    """

    def __init__(self) -> None:
        #: Heads kept between transactions, at most.
        self.limit = HEADS_CACHE_SIZE
        self.known: dict[bytes, tuple[int, bytes]] = {}
        self.pending: dict[bytes, tuple[int, bytes]] = {}

    def missing(
        self, streams: Sequence[bytes], stored_events: Sequence[StoredEvent]
    ) -> dict[bytes, int]:
        """Streams whose previous head must be read: stream -> the version needed.
        ``streams`` holds each event's stream id as bytes."""
        firsts: dict[bytes, int] = {}
        for stream, s in zip(streams, stored_events, strict=True):
            firsts.setdefault(stream, s.originator_version)
        return {
            stream: version - 1
            for stream, version in firsts.items()
            if version > 1 and self.known.get(stream, (0, b""))[0] != version - 1
        }

    def chain(
        self,
        streams: Sequence[bytes],
        stored_events: Sequence[StoredEvent],
        found: dict[bytes, tuple[int, bytes]],
    ) -> list[tuple[bytes, int, bytes, bytes]]:
        """Chain rows for a batch's events; their heads wait for the commit."""
        links = []
        current: dict[bytes, tuple[int, bytes]] = {}
        for stream, s in zip(streams, stored_events, strict=True):
            head = current.get(stream) or found.get(stream) or self.known.get(stream)
            version, previous = head if head is not None else (0, GENESIS)
            if s.originator_version <= version:
                # Another writer appended to this stream first: the batch is retried.
                msg = f"stream {stream.hex()} moved on to version {version}"
                raise IntegrityError(msg)
            if s.originator_version != version + 1:
                msg = (
                    f"the hash chain of stream {stream.hex()} ends at version {version}, but "
                    f"the next event is version {s.originator_version}: run "
                    "`crm-ledger audit verify`"
                )
                raise StoreUnavailable(msg)
            content = content_hash(stream, s.originator_version, s.topic, s.state)
            chained = chain_hash(previous, content)
            links.append((stream, s.originator_version, content, chained))
            current[stream] = (s.originator_version, chained)
        self.pending = current
        return links

    def discard(self) -> None:
        """Forget the heads of a transaction that did not commit."""
        self.pending = {}

    def forget_all(self) -> None:
        """Forget every head, kept or pending (the limit stays)."""
        self.known = {}
        self.pending = {}

    def settle(self) -> None:
        """Keep the heads of the transaction that just committed."""
        pending, self.pending = self.pending, {}
        self.known.update(pending)
        if len(self.known) > self.limit:  # the oldest go, down to half the limit
            for stream in list(self.known)[: len(self.known) - self.limit // 2]:
                del self.known[stream]


class Committer(Protocol):
    """Commits the batches handed to it in order, in the background (SQLite's commit
    process, PostgreSQL's commit thread)."""

    @property
    def alive(self) -> bool:
        """Whether it can still take batches."""
        ...

    @property
    def in_flight(self) -> int:
        """Batches handed over whose outcome was not read yet."""
        ...

    def submit(self, batch: Any) -> None:
        """Hand a batch over (BatchesNotStored if an earlier one failed)."""

    def flush(self) -> None:
        """Wait for every outcome (BatchesNotStored if a batch was not stored)."""

    def close(self) -> None:
        """Wait for the outcomes in hand, then stop."""


class BackgroundCommits:
    """Batches prepared on the caller's thread (their chain heads and data keys counted as
    known at once) and committed by a ``Committer`` while the next is prepared. If one fails,
    every head and key in memory is forgotten: some came from batches that were not stored,
    and a stale one would chain or seal the next batch wrongly."""

    committer: Committer | None = None
    _sent = 0
    heads: ChainHeads
    data_keys: DataKeys

    def new_committer(self) -> Committer:
        """The store's committer, started on the first batch sent."""
        raise NotImplementedError

    def hand_over(self, prepare: Callable[[], Any]) -> None:
        """Prepare a batch (``settling`` it) and hand it to the committer."""
        if self.committer is not None and not self.committer.alive:
            # Gone: the outcomes it gave count, the batches it did not answer are reported
            # lost (flush raises); then another one starts.
            self.flush()
            self.committer.close()
            self.committer = None
        if self.committer is None:
            self.committer = self.new_committer()
        batch = cast("LedgerRecording", self).settling(prepare)
        try:
            self.committer.submit(batch)
        except BatchesNotStored:
            self.forget_in_flight()
            raise
        self._sent += 1

    def flush(self) -> None:
        """Wait until every batch handed over is stored (raises BatchesNotStored, after
        forgetting what they assumed, if one is not)."""
        if self.committer is not None and self.committer.in_flight:
            try:
                self.committer.flush()
            except BatchesNotStored:
                self.forget_in_flight()
                raise

    @property
    def batches_in_flight(self) -> int:
        """Batches handed over whose outcome has not been read."""
        return 0 if self.committer is None else self.committer.in_flight

    @property
    def batches_sent(self) -> int:
        """Batches handed over so far."""
        return self._sent

    def forget_in_flight(self) -> None:
        """Forget every chain head and data key in memory (their limits stay)."""
        self.heads.forget_all()
        self.data_keys.forget_all()

    def close_committer(self) -> None:
        """Wait for the batches in flight, then stop the committer."""
        try:
            if self.committer is not None:
                self.committer.close()
        finally:
            self.committer = None


class LedgerRecording:
    """What both recorders add to eventsourcing's: the hash chain's heads and the data keys,
    settled only once a transaction committed, and one stream's stored records."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.heads = ChainHeads()
        self.data_keys = DataKeys(self.load_key)

    def load_key(self, stream: bytes) -> bytes | None:
        """The stream's data key (each store reads its own table)."""
        raise NotImplementedError

    def load_keys(self, streams: list[bytes]) -> dict[bytes, bytes]:
        """Stream -> stored data key of those of ``streams`` that have a live one (each store
        reads its own table; this default asks one at a time)."""
        keys = {stream: self.load_key(stream) for stream in streams}
        return {stream: key for stream, key in keys.items() if key is not None}

    def limit_streams(self, streams: int) -> None:
        """Keep at most ``streams`` data keys and twice as many chain heads in memory (as
        before the setting: a head known saves its stream's look-up at the next append)."""
        self.heads.limit = 2 * streams
        self.data_keys.limit = streams

    def prepare_keys(self, stream_ids: Sequence[UUID]) -> None:
        """Load the data keys of a batch's streams not in memory yet, with one look-up."""
        self.data_keys.preload((i.bytes for i in stream_ids), self.load_keys)

    def close(self) -> None:
        """Stop what the recorder runs in the background (nothing, unless a store has)."""

    def flush(self) -> None:
        """Wait for the batches committed in the background (none, unless a store has)."""

    @property
    def batches_in_flight(self) -> int:
        """Batches handed over to be committed in the background and not answered yet."""
        return 0

    @property
    def batches_sent(self) -> int:
        """Batches handed over to be committed in the background so far (only grows)."""
        return 0

    def select_stream(self, originator_id: UUID) -> list[tuple[Any, ...]]:
        """One stream's (0, id, version, topic, state) rows (each store queries its own)."""
        raise NotImplementedError

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        """eventsourcing's insert, then the chain heads it wrote become known (only once
        the transaction committed)."""
        insert = super().insert_events  # type: ignore[misc]
        result: Sequence[int] | None = self.settling(lambda: insert(stored_events, **kwargs))
        return result

    def settling(self, write: Callable[[], T]) -> T:
        """``write()``; then the chain heads and data keys it made are kept, or forgotten
        if it raised."""
        try:
            result = write()
        except BaseException:
            self.heads.discard()
            self.data_keys.settle(committed=False)
            raise
        self.heads.settle()
        self.data_keys.settle(committed=True)
        return result

    def stream_records(self, stream: bytes) -> list[StoredRecord]:
        """One stream's stored events, in version order."""
        return [
            StoredRecord(stream, row[2], str(row[3]), as_bytes(row[4]))
            for row in self.select_stream(UUID(bytes=stream))
        ]


OUTBOX_FIELDS = (
    "source_topic, source_partition, source_offset, message_key, message_value, "
    "error_class, error_message, refused_at"
)
OUTBOX_COLUMNS = (
    "{id}, source_topic TEXT NOT NULL, source_partition INTEGER NOT NULL, "
    "source_offset BIGINT NOT NULL, message_key BLOB, message_value BLOB, "
    "error_class TEXT NOT NULL, error_message TEXT NOT NULL, refused_at TEXT NOT NULL"
)
SQLITE_ID = "id INTEGER PRIMARY KEY AUTOINCREMENT"


def outbox_letter(row: Any) -> OutboxLetter:
    return OutboxLetter(
        row["source_topic"],
        row["source_partition"],
        row["source_offset"],
        None if row["message_key"] is None else bytes(row["message_key"]),
        None if row["message_value"] is None else bytes(row["message_value"]),
        row["error_class"],
        row["error_message"],
        row["refused_at"],
    )


#: PRAGMA application_id of the ledger's SQLite files ("CRML"), so that the ledger never
#: writes into a file some other program made.
