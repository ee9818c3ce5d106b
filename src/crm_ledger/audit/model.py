"""The audit's vocabulary: the hashes, what the store holds, findings, and the ports the
auditor works through (the event store, the signer, key and snapshot checks, the receipts)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence
    from datetime import datetime


#: The chain hash before a stream's first event.
GENESIS = bytes(32)


def content_hash(stream: bytes, version: int, topic: str, state: bytes) -> bytes:
    """SHA-256 of an event exactly as stored."""
    return hashlib.sha256(
        b"".join((stream, version.to_bytes(8, "big"), topic.encode(), b"\x00", state))
    ).digest()


def chain_hash(previous: bytes, content: bytes) -> bytes:
    """SHA-256 of the previous event's chain hash followed by this event's content hash."""
    return hashlib.sha256(previous + content).digest()


def checkpoint_payload(
    created_at: datetime, position: int, streams: int, digest: bytes, previous: bytes
) -> bytes:
    """What a checkpoint's signature covers: every field, and the link to the one before."""
    micros = round(created_at.timestamp() * 1_000_000)
    return b"".join(
        (
            b"crm-ledger checkpoint 2\x00",
            micros.to_bytes(8, "big", signed=True),
            position.to_bytes(8, "big"),
            streams.to_bytes(8, "big"),
            digest,
            previous,
        )
    )


def checkpoint_link(payload: bytes, signature: bytes) -> bytes:
    """The link the next checkpoint signs: SHA-256 of this one's payload and signature."""
    return hashlib.sha256(payload + signature).digest()


def heads_digest(heads: Iterable[tuple[bytes, int, bytes]]) -> bytes:
    """One digest of (stream, version, chain hash) heads, in stream order."""
    h = hashlib.sha256()
    for stream, version, chained in sorted(heads):
        h.update(stream)
        h.update(version.to_bytes(8, "big"))
        h.update(chained)
    return h.digest()


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """An event as stored: stream id (16 bytes), version, topic, state bytes."""

    stream: bytes
    version: int
    topic: str
    state: bytes


@dataclass(frozen=True, slots=True)
class ChainLink:
    """The chain row the store wrote beside an event."""

    stream: bytes
    version: int
    content: bytes
    chained: bytes


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Signed heads of every stream at one moment."""

    checkpoint_id: int
    created_at: datetime
    position: int
    streams: int
    digest: bytes
    signature: bytes


@dataclass(frozen=True, slots=True)
class Finding:
    """Something wrong with the stored history, located by stream and version."""

    stream: bytes
    version: int | None
    problem: str
    detail: str = ""


@dataclass
class Verification:
    """What ``verify`` checked and found."""

    events: int = 0
    streams: int = 0
    checkpoints: int = 0
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return not self.findings


class AuditStore(Protocol):
    """The event store's audit queries."""

    def stored_records(self) -> Iterator[StoredRecord]:
        """Every stored event, by stream then version."""
        ...

    def chain_links(self) -> Iterator[ChainLink]:
        """Every chain row, by stream then version."""
        ...

    def chain_heads(self) -> list[tuple[bytes, int, bytes]]:
        """(stream, version, chain hash) of every stream's newest event."""
        ...

    def orphan_receipts(self) -> list[tuple[bytes, int]]:
        """(stream, version) of every receipt whose event is no longer stored."""
        ...

    def stream_chain(self, stream: bytes) -> list[ChainLink]:
        """One stream's chain rows, in version order."""
        ...

    def stream_records(self, stream: bytes) -> list[StoredRecord]:
        """One stream's stored events, in version order."""
        ...

    def save_checkpoint(
        self,
        created: datetime,
        position: int,
        digest: bytes,
        signature: bytes,
        heads: Sequence[tuple[bytes, int, bytes]],
    ) -> Checkpoint:
        """Store a checkpoint and its heads."""
        ...

    def checkpoints(self) -> list[Checkpoint]:
        """Every checkpoint, oldest first."""
        ...

    def checkpoint_heads(self, checkpoint_id: int) -> list[tuple[bytes, int, bytes]]:
        """The heads a checkpoint signed."""
        ...

    def key_rows(self) -> list[tuple[bytes, bytes | None]]:
        """(stream, data key) of every key row; None where the key was destroyed."""
        ...

    def snapshot_rows(self) -> Iterator[StoredRecord]:
        """Every stored snapshot."""
        ...


class SnapshotCheck(Protocol):
    """Tells whether a stored snapshot's seal matches its content (the event store's mapper)."""

    def snapshot_trusted(self, stream: bytes, version: int, topic: str, state: bytes) -> bool:
        """Whether the snapshot is as the ledger sealed it."""
        ...


class KeyCheck(Protocol):
    """Tells sealed personal values apart and whether a data key opens one (crypto adapter)."""

    marker: bytes

    def opens(self, key: bytes, stream: bytes, field: str, value: str) -> bool:
        """Whether ``key`` is the key that sealed ``value`` of ``field`` in ``stream``."""
        ...


#: The topic ending of the event that alone may destroy a customer's data key.
ERASED_TOPIC = ":Customer.CustomerErased"


class Receipts(Protocol):
    """The auditor's own copy of every checkpoint, kept where the database's owner cannot
    rewrite it (a file the auditor keeps)."""

    def append(self, receipt: dict[str, Any]) -> None:
        """Keep one more checkpoint's receipt."""

    def read(self) -> list[dict[str, Any]] | None:
        """Every receipt kept, oldest first; None when there is no copy at all."""
        ...


class Signer(Protocol):
    """Signs and verifies checkpoint digests (Ed25519 in the crypto adapter)."""

    def sign(self, data: bytes) -> bytes:
        """The signature of ``data``."""
        ...

    def verify(self, signature: bytes, data: bytes) -> bool:
        """Whether ``signature`` is this key's signature of ``data``."""
        ...
