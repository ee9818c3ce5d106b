"""Tamper-evident history: every stored event is hash-chained within its stream, chain heads
are checkpointed and signed, and ``verify`` recomputes everything from the stored bytes.

Each event's *content hash* covers exactly what is stored (stream id, version, topic and the
state bytes); its *chain hash* covers the previous event's chain hash and its own content
hash. The event store writes both in the same transaction as the event. A checkpoint signs
(Ed25519) a digest of every stream's head at that moment, so that rewriting an event *and* its
chain afterwards is still found: the recomputed chain no longer reaches the signed head.
"""

from crm_ledger.audit.auditor import Auditor
from crm_ledger.audit.export import verify_export
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

__all__ = [
    "ERASED_TOPIC",
    "GENESIS",
    "AuditStore",
    "Auditor",
    "ChainLink",
    "Checkpoint",
    "Finding",
    "KeyCheck",
    "Receipts",
    "Signer",
    "SnapshotCheck",
    "StoredRecord",
    "Verification",
    "chain_hash",
    "checkpoint_link",
    "checkpoint_payload",
    "content_hash",
    "heads_digest",
    "verify_export",
]
