"""The audit's verdict on a ledger a contract test wrote."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from crm_ledger.adapters.crypto import SealedValues, create_key_pair, load_signer
from crm_ledger.audit import Auditor

if TYPE_CHECKING:
    from pathlib import Path

    from crm_ledger.application import Ledger


def assert_verified(ledger: Ledger, keys: Path) -> None:
    """`audit verify` finds nothing wrong, and it read every stored event (``keys``: a
    folder for the auditor's new key pair)."""
    create_key_pair(keys)
    recorder: Any = ledger.recorder
    auditor = Auditor(recorder, load_signer(keys), ledger.log_head, SealedValues())
    result = auditor.verify()
    assert result.ok, result.findings
    assert result.events == sum(1 for _ in recorder.stored_records()) > 0
