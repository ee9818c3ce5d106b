"""Checking one customer's export offline, with nothing but the file and the public key."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import TYPE_CHECKING, Any

from crm_ledger.audit.model import (
    GENESIS,
    Finding,
    Signer,
    chain_hash,
    checkpoint_payload,
    content_hash,
    heads_digest,
)

if TYPE_CHECKING:
    from collections.abc import Iterable


def verify_export(lines: Iterable[dict[str, Any]], signer: Signer) -> list[Finding]:
    """Check an export offline: every event's hashes from its bytes, the chain from the
    first event on, the stream's signed head, the checkpoint's digest and its signature."""
    items = list(lines)
    header = next((i for i in items if i.get("kind") == "header"), None)
    if header is None:
        return [Finding(b"", None, "not an export", "no header line")]
    stream = bytes.fromhex(header["stream"])
    events = [i for i in items if i.get("kind") == "event"]
    findings, chained_at = _check_events(stream, events)
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
            detail = "the chain does not reach the signed head"
            findings.append(Finding(stream, version, "history changed", detail))
    return findings


def _check_events(
    stream: bytes, events: list[dict[str, Any]]
) -> tuple[list[Finding], dict[int, bytes]]:
    """Each event's hashes from its bytes and the chain as stated; the chain hash recomputed
    at each version."""
    findings: list[Finding] = []
    previous, stated = GENESIS, GENESIS  # recomputed from the bytes; as the export states
    chained_at: dict[int, bytes] = {}
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
    return findings, chained_at
