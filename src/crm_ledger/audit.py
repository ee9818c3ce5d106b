"""Tamper-evident history: every stored event is hash-chained within its stream, chain heads
are checkpointed and signed, and ``verify`` recomputes everything from the stored bytes.

Each event's *content hash* covers exactly what is stored (stream id, version, topic and the
state bytes); its *chain hash* covers the previous event's chain hash and its own content
hash. The event store writes both in the same transaction as the event. A checkpoint signs
(Ed25519) a digest of every stream's head at that moment, so that rewriting an event *and* its
chain afterwards is still found: the recomputed chain no longer reaches the signed head.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from crm_ledger.aggregates import customer_uuid
from crm_ledger.errors import InvalidInput

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence

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


class Auditor:
    """Checkpoints and verification of the stored history."""

    def __init__(
        self,
        store: AuditStore,
        signer: Signer,
        head: Callable[[], int],
        keys: KeyCheck | None = None,
        snapshots: SnapshotCheck | None = None,
        receipts: Receipts | None = None,
    ) -> None:
        self.store = store
        self.signer = signer
        self.head = head  # the log's newest position, asked for when a checkpoint is signed
        self.keys = keys
        self.snapshots = snapshots
        self.receipts = receipts

    def checkpoint(self) -> Checkpoint:
        """Sign the current heads of every stream, every field of the checkpoint and its link
        to the previous one; hand the receipt to the auditor's copy."""
        previous = GENESIS
        for cp in self.store.checkpoints():
            payload = checkpoint_payload(
                cp.created_at, cp.position, cp.streams, cp.digest, previous
            )
            previous = checkpoint_link(payload, cp.signature)
        heads = self.store.chain_heads()
        digest = heads_digest(heads)
        created, position = datetime.now(UTC), self.head()
        payload = checkpoint_payload(created, position, len(heads), digest, previous)
        signature = self.signer.sign(payload)
        cp = self.store.save_checkpoint(created, position, digest, signature, heads)
        if self.receipts is not None:
            self.receipts.append(_receipt(cp, previous))
        return cp

    def verify(self, *, since: int | None = None) -> Verification:
        """Recompute every content and chain hash from the stored events, compare them with
        the stored chain and with the signed checkpoints (from checkpoint ``since`` on, when
        given), and report each difference by stream and version."""
        result = Verification()
        if since is not None:
            newest = max((cp.checkpoint_id for cp in self.store.checkpoints()), default=0)
            if since > newest:
                what = f"the newest is {newest}" if newest else "there are none yet"
                raise InvalidInput(f"no checkpoint {since}: {what}")
        signed = self._signed_heads(since, result)
        recomputed: dict[tuple[bytes, int], bytes] = {}
        facts = _KeyFacts(self.keys.marker if self.keys else None)
        records = itertools.groupby(
            map(facts.note, self.store.stored_records()), key=lambda r: r.stream
        )
        links = itertools.groupby(self.store.chain_links(), key=lambda c: c.stream)
        for stream, stream_records, stream_links in _merge(records, links):
            result.streams += 1
            result.events += len(stream_records)
            result.findings += _check_stream(
                stream, stream_records, stream_links, signed, recomputed
            )
        for (stream, version), expected in sorted(signed.items()):
            actual = recomputed.get((stream, version))
            for checkpoint_id, chained in expected:
                if actual != chained:
                    what = "no longer stored" if actual is None else "no longer reached"
                    result.findings.append(
                        Finding(
                            stream,
                            version,
                            "history changed",
                            f"checkpoint {checkpoint_id}'s signed head is {what}",
                        )
                    )
        if self.keys is not None:
            result.findings += facts.findings(self.store.key_rows(), self.keys)
        if self.snapshots is not None:
            result.findings += self._snapshot_findings(self.snapshots)
        return result

    def _snapshot_findings(self, check: SnapshotCheck) -> list[Finding]:
        """Snapshots whose seal does not match (the ledger never uses them)."""
        return [
            Finding(r.stream, r.version, "snapshot altered", "its seal does not match; not used")
            for r in self.store.snapshot_rows()
            if not check.snapshot_trusted(r.stream, r.version, r.topic, r.state)
        ]

    def export(self, stream: bytes) -> Iterator[dict[str, Any]]:
        """One stream's events with the proofs an auditor needs offline: each event's stored
        bytes and hashes, the newest checkpoint that signed the stream's chain, and every head
        that checkpoint signed (its digest covers them all)."""
        records = self.store.stream_records(stream)
        links = {link.version: link for link in self.store.stream_chain(stream)}
        checkpoint, heads, previous, before = None, [], GENESIS, GENESIS
        for cp in self.store.checkpoints():
            cp_heads = self.store.checkpoint_heads(cp.checkpoint_id)
            if any(h[0] == stream for h in cp_heads):
                checkpoint, heads, previous = cp, cp_heads, before
            before = checkpoint_link(_payload_of(cp, before), cp.signature)
        yield {
            "kind": "header",
            "stream": stream.hex(),
            "events": len(records),
            "checkpoint": None
            if checkpoint is None
            else {
                "id": checkpoint.checkpoint_id,
                "created_at": checkpoint.created_at.isoformat(),
                "position": checkpoint.position,
                "streams": checkpoint.streams,
                "digest": checkpoint.digest.hex(),
                "previous": previous.hex(),
                "signature": checkpoint.signature.hex(),
            },
        }
        for r in records:
            link = links.get(r.version)
            yield {
                "kind": "event",
                "version": r.version,
                "topic": r.topic,
                "state": base64.b64encode(r.state).decode(),
                "content_hash": link.content.hex() if link else None,
                "chain_hash": link.chained.hex() if link else None,
            }
        if checkpoint is not None:
            yield {
                "kind": "checkpoint_heads",
                "heads": [[s.hex(), v, h.hex()] for s, v, h in sorted(heads)],
            }

    def _signed_heads(
        self, since: int | None, result: Verification
    ) -> dict[tuple[bytes, int], list[tuple[int, bytes]]]:
        """(stream, version) -> [(checkpoint, chain hash)] of every intact checkpoint; each
        checkpoint's fields, heads, signature and link to the one before are checked."""
        signed: dict[tuple[bytes, int], list[tuple[int, bytes]]] = {}
        checkpoints = self.store.checkpoints()
        previous = GENESIS
        for cp in checkpoints:
            payload = checkpoint_payload(
                cp.created_at, cp.position, cp.streams, cp.digest, previous
            )
            previous = checkpoint_link(payload, cp.signature)
            if since is not None and cp.checkpoint_id < since:
                continue
            result.checkpoints += 1
            heads = self.store.checkpoint_heads(cp.checkpoint_id)
            intact = (
                heads_digest(heads) == cp.digest
                and len(heads) == cp.streams
                and self.signer.verify(cp.signature, payload)
            )
            if not intact:
                result.findings.append(
                    Finding(
                        b"",
                        None,
                        "checkpoint altered",
                        f"checkpoint {cp.checkpoint_id}: its fields, heads, signature or link "
                        "to the checkpoint before do not match",
                    )
                )
                continue
            for stream, version, chained in heads:
                signed.setdefault((stream, version), []).append((cp.checkpoint_id, chained))
        result.findings += self._against_receipts(checkpoints)
        return signed

    def _against_receipts(self, checkpoints: Sequence[Checkpoint]) -> list[Finding]:
        """Checkpoints the auditor's copy holds that the database no longer does."""
        if self.receipts is None:
            return []
        kept = self.receipts.read()
        if kept is None:
            if not checkpoints:
                return []
            detail = f"{len(checkpoints)} checkpoints in the database, none in the auditor's copy"
            return [Finding(b"", None, "no auditor's copy", detail)]
        stored = {cp.signature.hex() for cp in checkpoints}
        return [
            Finding(
                b"",
                None,
                "checkpoint removed",
                f"checkpoint {r.get('id')} signed at {r.get('created_at')} is in the auditor's "
                "copy but not in the database",
            )
            for r in kept
            if r.get("signature") not in stored
        ]


def _payload_of(cp: Checkpoint, previous: bytes) -> bytes:
    return checkpoint_payload(cp.created_at, cp.position, cp.streams, cp.digest, previous)


def _receipt(cp: Checkpoint, previous: bytes) -> dict[str, Any]:
    return {
        "id": cp.checkpoint_id,
        "created_at": cp.created_at.isoformat(),
        "position": cp.position,
        "streams": cp.streams,
        "digest": cp.digest.hex(),
        "previous": previous.hex(),
        "signature": cp.signature.hex(),
    }


class _KeyFacts:
    """What the stored events say about data keys: which streams were erased, and one sealed
    value per key to try it on. A key may go only through CustomerErased."""

    def __init__(self, marker: bytes | None) -> None:
        self.marker = marker
        self.erased: set[bytes] = set()
        self.samples: dict[bytes, tuple[bytes, str, str]] = {}  # key's stream -> sample

    def note(self, record: StoredRecord) -> StoredRecord:
        """Take what a stored event says about keys (on the way through verification)."""
        if record.topic.endswith(ERASED_TOPIC):
            self.erased.add(record.stream)
        elif self.marker is not None and self.marker in record.state:
            self._sample(record)
        return record

    def _sample(self, record: StoredRecord) -> None:
        try:
            state = json.loads(record.state)
        except ValueError:
            return  # a modified event: the chain check reports it
        if not isinstance(state, dict):
            return
        sender = state.get("addressed_to")
        owner = customer_uuid(sender).bytes if isinstance(sender, str) else record.stream
        if owner in self.samples:
            return
        marker = self.marker.decode() if self.marker else ""
        for name, value in state.items():
            if isinstance(value, str) and value.startswith(marker):
                self.samples[owner] = (record.stream, name, value)
                return

    def findings(self, keys: list[tuple[bytes, bytes | None]], check: KeyCheck) -> list[Finding]:
        """A key destroyed without CustomerErased, missing, or not the one that sealed."""
        found: list[Finding] = []
        stored = dict(keys)
        for owner, key in sorted(stored.items()):
            if key is None and owner not in self.erased:
                found.append(
                    Finding(owner, None, "key destroyed", "its data key is gone, no CustomerErased")
                )
            elif key is not None and owner in self.samples:
                _stream, name, value = self.samples[owner]
                if not check.opens(key, owner, name, value):
                    found.append(
                        Finding(owner, None, "key changed", "its data key no longer opens its data")
                    )
        for owner in sorted(set(self.samples) - set(stored)):
            found.append(Finding(owner, None, "key missing", "sealed data, but no data key row"))
        return found


def verify_export(lines: Iterable[dict[str, Any]], signer: Signer) -> list[Finding]:
    """Check an export offline: every event's hashes from its bytes, the chain from the
    first event on, the stream's signed head, the checkpoint's digest and its signature."""
    items = list(lines)
    header = next((i for i in items if i.get("kind") == "header"), None)
    if header is None:
        return [Finding(b"", None, "not an export", "no header line")]
    stream = bytes.fromhex(header["stream"])
    findings: list[Finding] = []
    previous, stated = GENESIS, GENESIS  # recomputed from the bytes; as the export states
    chained_at: dict[int, bytes] = {}
    events = [i for i in items if i.get("kind") == "event"]
    for expected, item in enumerate(events, start=1):
        version = int(item["version"])
        if version != expected:
            findings.append(Finding(stream, expected, "missing", f"the export jumps to {version}"))
            break
        content = content_hash(stream, version, item["topic"], base64.b64decode(item["state"]))
        previous = chain_hash(previous, content)
        chained_at[version] = previous
        stated_content = bytes.fromhex(item.get("content_hash") or "")
        if stated_content != content:
            findings.append(Finding(stream, version, "modified", "bytes do not match the hash"))
        if bytes.fromhex(item.get("chain_hash") or "") != chain_hash(stated, stated_content):
            findings.append(Finding(stream, version, "chain broken", "the chain does not follow"))
        stated = bytes.fromhex(item.get("chain_hash") or "")
    if len(events) != header.get("events"):
        findings.append(Finding(stream, None, "missing", "the export lost or gained lines"))
    checkpoint = header.get("checkpoint")
    heads_line = next((i for i in items if i.get("kind") == "checkpoint_heads"), None)
    if checkpoint is None or heads_line is None:
        findings.append(Finding(stream, None, "unsigned", "no checkpoint covers this stream"))
        return findings
    heads = [(bytes.fromhex(s), int(v), bytes.fromhex(h)) for s, v, h in heads_line["heads"]]
    digest = bytes.fromhex(checkpoint["digest"])
    if heads_digest(heads) != digest:
        findings.append(Finding(stream, None, "checkpoint altered", "heads do not match digest"))
    payload = checkpoint_payload(
        datetime.fromisoformat(checkpoint["created_at"]),
        int(checkpoint["position"]),
        int(checkpoint["streams"]),
        digest,
        bytes.fromhex(checkpoint["previous"]),
    )
    if not signer.verify(bytes.fromhex(checkpoint["signature"]), payload):
        findings.append(Finding(stream, None, "bad signature", "not signed by this key"))
    for s, version, head in heads:
        if s == stream and chained_at.get(version) != head:
            findings.append(
                Finding(
                    stream, version, "history changed", "the chain does not reach the signed head"
                )
            )
    return findings


def _merge(
    records: Iterator[tuple[bytes, Iterator[StoredRecord]]],
    links: Iterator[tuple[bytes, Iterator[ChainLink]]],
) -> Iterator[tuple[bytes, list[StoredRecord], list[ChainLink]]]:
    """Streams of both sorted sequences side by side (either side may lack a stream)."""
    r = next(records, None)
    c = next(links, None)
    while r is not None or c is not None:
        if c is None or (r is not None and r[0] < c[0]):
            assert r is not None
            yield r[0], list(r[1]), []
            r = next(records, None)
        elif r is None or c[0] < r[0]:
            yield c[0], [], list(c[1])
            c = next(links, None)
        else:
            yield r[0], list(r[1]), list(c[1])
            r, c = next(records, None), next(links, None)


def _check_stream(
    stream: bytes,
    records: Sequence[StoredRecord],
    links: Sequence[ChainLink],
    signed: dict[tuple[bytes, int], list[tuple[int, bytes]]],
    recomputed: dict[tuple[bytes, int], bytes],
) -> list[Finding]:
    """Differences between one stream's events and its stored chain."""
    findings: list[Finding] = []
    stored = {link.version: link for link in links}
    previous = GENESIS  # the chain recomputed from the stored bytes alone
    seen: set[int] = set()
    for record in records:
        seen.add(record.version)
        content = content_hash(record.stream, record.version, record.topic, record.state)
        previous = chain_hash(previous, content)
        if (stream, record.version) in signed:
            recomputed[stream, record.version] = previous
        link = stored.get(record.version)
        if link is None:
            findings.append(
                Finding(stream, record.version, "inserted", "an event the store never chained")
            )
        elif link.content != content:
            moved = _chained_as(record, stored)
            if moved is not None:
                findings.append(
                    Finding(
                        stream,
                        record.version,
                        "reordered",
                        f"holds the event chained as version {moved}",
                    )
                )
            else:
                findings.append(
                    Finding(
                        stream,
                        record.version,
                        "modified",
                        "its content differs from what was chained",
                    )
                )
    # The stored chain on its own: each link must follow from the one before it.
    before = GENESIS
    for version in sorted(stored):
        link = stored[version]
        if link.chained != chain_hash(before, link.content):
            findings.append(
                Finding(
                    stream,
                    version,
                    "chain broken",
                    "the stored chain does not follow from its links",
                )
            )
        before = link.chained
    for version in sorted(set(stored) - seen):
        findings.append(Finding(stream, version, "deleted", "chained, but no longer stored"))
    return findings


def _chained_as(record: StoredRecord, stored: dict[int, ChainLink]) -> int | None:
    """The other version whose chained content ``record`` holds (an event moved), if any.
    Only asked for events that do not match their own link, so the search is rare."""
    for version, link in stored.items():
        if version != record.version and link.content == content_hash(
            record.stream, version, record.topic, record.state
        ):
            return version
    return None
