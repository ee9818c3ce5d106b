"""The auditor's use cases: who recorded what and when, checkpoints, verification, exports
and erasure (with the date the Kafka copies expire)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from crm_ledger.aggregates import customer_uuid
from crm_ledger.errors import NotFound

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from crm_ledger.application import Ledger
    from crm_ledger.audit import Auditor


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One fact about a customer: who, which service, both times, and its hashes."""

    version: int
    fact: str
    actor: str | None
    source: str
    occurred_at: datetime
    recorded_at: datetime
    event_id: str
    content_hash: str | None
    chain_hash: str | None


@dataclass(frozen=True, slots=True)
class SignedCheckpoint:
    """A checkpoint just signed, and where its receipt was kept."""

    checkpoint: int
    created_at: datetime
    position: int
    streams: int
    digest: str
    receipt: str


@dataclass(frozen=True, slots=True)
class Problem:
    """One difference verification found, by stream (and its subject) and version."""

    stream: str
    subject: str
    version: int | None
    problem: str
    detail: str


@dataclass(frozen=True, slots=True)
class VerificationReport:
    """What `verify` checked, how long it took, and every problem found."""

    ok: bool
    events: int
    touchpoints: int
    streams: int
    checkpoints: int
    seconds: float
    findings: list[Problem]


@dataclass(frozen=True, slots=True)
class Erasure:
    """An erasure done: the keys destroyed, and when the copies Kafka still holds expire."""

    customer_id: str
    keys_destroyed: list[str]
    reason: str
    kafka_copies_expire_by: datetime
    kafka_topics: list[str]


@dataclass(frozen=True, slots=True)
class StreamStatus:
    """One customer's stream as an auditor would check it from its export: every event's
    hashes and the chain recomputed, and the newest signed checkpoint that covers it."""

    customer_id: str
    events: int
    verified: bool
    problems: list[str]
    checkpoint: int | None
    checkpoint_at: datetime | None
    #: Events the checkpoint signed; those after it are recorded but not signed yet.
    signed_events: int


class AuditService:
    """Audit use cases over one ledger (the auditor opened on first use)."""

    def __init__(
        self,
        ledger: Ledger,
        auditor: Callable[[], Auditor],
        *,
        receipts: str,
        retention_days: int,
        topics: list[str],
    ) -> None:
        self.ledger = ledger
        self._auditor = auditor
        self.receipts = receipts
        self.retention_days = retention_days
        self.topics = topics

    def history(self, customer_id: str, as_of: datetime | None = None) -> list[AuditEntry]:
        """Every fact about ``customer_id`` recorded by ``as_of``, with its chain hashes."""
        entries = self.ledger.history(customer_id, as_of=as_of)
        chain = self._auditor().store.stream_chain(customer_uuid(customer_id).bytes)
        links = {link.version: link for link in chain}
        rows = []
        for e in entries:
            link = links.get(e.version)
            rows.append(
                AuditEntry(
                    version=e.version,
                    fact=e.event_type,
                    actor=e.actor,
                    source=e.source,
                    occurred_at=e.occurred_at,
                    recorded_at=e.recorded_at,
                    event_id=str(e.event_id),
                    content_hash=link.content.hex() if link else None,
                    chain_hash=link.chained.hex() if link else None,
                )
            )
        return rows

    def checkpoint_time(self, checkpoint_id: int) -> datetime:
        """When checkpoint ``checkpoint_id`` was signed: what the ledger knew then is every
        event recorded by that moment (a signed, shareable point in recorded time)."""
        for cp in self._auditor().store.checkpoints():
            if cp.checkpoint_id == checkpoint_id:
                return cp.created_at
        msg = f"no checkpoint {checkpoint_id}; `audit checkpoint` signs one"
        raise NotFound(msg)

    def checkpoint(self) -> SignedCheckpoint:
        """Sign the head of every stream's chain."""
        cp = self._auditor().checkpoint()
        return SignedCheckpoint(
            checkpoint=cp.checkpoint_id,
            created_at=cp.created_at,
            position=cp.position,
            streams=cp.streams,
            digest=cp.digest.hex(),
            receipt=self.receipts,
        )

    def verify(self, since: int | None = None) -> VerificationReport:
        """Recompute every hash and chain and check them against the signed checkpoints."""
        started = time.perf_counter()
        result = self._auditor().verify(since=since)
        seconds = time.perf_counter() - started
        names = {f.stream: self.ledger.stream_name(f.stream) for f in result.findings if f.stream}
        findings = [
            Problem(
                stream=f.stream.hex() if f.stream else "",
                subject=names.get(f.stream) or "",
                version=f.version,
                problem=f.problem,
                detail=f.detail,
            )
            for f in result.findings
        ]
        return VerificationReport(
            ok=result.ok,
            events=result.events,
            touchpoints=self.ledger.count_events(),
            streams=result.streams,
            checkpoints=result.checkpoints,
            seconds=seconds,
            findings=findings,
        )

    def export(self, customer_id: str) -> Iterator[dict[str, Any]]:
        """The customer's events with the proofs to check them offline, line by line."""
        self.ledger.customer(customer_id)  # a clear error for an unknown customer
        for line in self._auditor().export(customer_uuid(customer_id).bytes):
            if line["kind"] == "header":
                line["customer_id"] = customer_id
            yield line

    def status(self, customer_id: str) -> StreamStatus:
        """Check the customer's stream as its offline export would be checked."""
        from crm_ledger.audit import verify_export

        lines = list(self.export(customer_id))
        header = lines[0]
        stream = bytes.fromhex(header["stream"])
        signed = 0
        for line in lines:
            if line["kind"] == "checkpoint_heads":
                signed = max((v for s, v, _ in line["heads"] if s == stream.hex()), default=0)
        findings = verify_export(lines, self._auditor().signer)
        checkpoint = header["checkpoint"]
        return StreamStatus(
            customer_id=customer_id,
            events=int(header["events"]),
            verified=not [f for f in findings if f.problem != "unsigned"],
            problems=[f"{f.problem}: {f.detail}" for f in findings if f.problem != "unsigned"],
            checkpoint=checkpoint["id"] if checkpoint else None,
            checkpoint_at=datetime.fromisoformat(checkpoint["created_at"]) if checkpoint else None,
            signed_events=signed,
        )

    def erase(self, customer_id: str, *, reason: str, actor: str | None = None) -> Erasure:
        """Erase the customer's personal data; copies in Kafka expire with its retention."""
        erased = self.ledger.erase(customer_id, reason=reason, actor=actor)
        return Erasure(
            customer_id=customer_id,
            keys_destroyed=erased,
            reason=reason,
            kafka_copies_expire_by=datetime.now(UTC) + timedelta(days=self.retention_days),
            kafka_topics=self.topics,
        )
