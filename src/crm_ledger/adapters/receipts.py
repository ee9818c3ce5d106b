"""The auditor's copy of checkpoint receipts: a JSON Lines file outside the database."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from crm_ledger.errors import ConfigurationError

if TYPE_CHECKING:
    from pathlib import Path


class ReceiptFile:
    """Checkpoint receipts appended to a file the auditor keeps (and may copy elsewhere)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, receipt: dict[str, Any]) -> None:
        """Add one receipt, flushed to disk before the checkpoint is reported."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(receipt, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read(self) -> list[dict[str, Any]] | None:
        """Every receipt, oldest first; None if there is no file."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigurationError(f"cannot read the auditor's copy {self.path}: {e}") from None
        receipts = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                receipt = json.loads(line)
            except ValueError:
                msg = f"the auditor's copy {self.path}, line {number}, is not a receipt"
                raise ConfigurationError(msg) from None
            if not isinstance(receipt, dict):
                raise ConfigurationError(
                    f"the auditor's copy {self.path}, line {number}, is not a receipt"
                )
            receipts.append(receipt)
        return receipts
