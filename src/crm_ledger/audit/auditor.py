"""The auditor: signs checkpoints and verifies the stored history, keys and snapshots."""

from __future__ import annotations

import base64
import itertools
import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from crm_ledger.aggregates import customer_uuid
from crm_ledger.audit.model import (
    ERASED_TOPIC,
    GENESIS,
    AuditStore,
    ChainLink,
    Checkpoint,
    Finding,
    KeyCheck,
    Receipts,
    Signer,
    SnapshotCheck,
    StoredRecord,
    Verification,
    chain_hash,
    checkpoint_link,
    checkpoint_payload,
    content_hash,
    heads_digest,
)
from crm_ledger.errors import InvalidInput

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence


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
        result.findings += [
            Finding(stream, version, "deleted", "its receipt remains, the event is gone")
            for stream, version in self.store.orphan_receipts()
        ]
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


def _compare_link(
    record: StoredRecord, content: bytes, stored: dict[int, ChainLink]
) -> Finding | None:
    """What is wrong between a stored event and the chain link of its version, if anything."""
    link = stored.get(record.version)
    if link is None:
        return Finding(
            record.stream, record.version, "inserted", "an event the store never chained"
        )
    if link.content == content:
        return None
    moved = _chained_as(record, stored)
    if moved is not None:
        detail = f"holds the event chained as version {moved}"
        return Finding(record.stream, record.version, "reordered", detail)
    detail = "its content differs from what was chained"
    return Finding(record.stream, record.version, "modified", detail)


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
        finding = _compare_link(record, content, stored)
        if finding is not None:
            findings.append(finding)
    # The stored chain on its own: each link must follow from the one before it.
    before = GENESIS
    for version in sorted(stored):
        link = stored[version]
        if link.chained != chain_hash(before, link.content):
            detail = "the stored chain does not follow from its links"
            findings.append(Finding(stream, version, "chain broken", detail))
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
