"""Secrets kept as files in the key folder, read without loading the cryptography library
(a command that only needs the search index's key starts faster)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from crm_ledger.errors import ConfigurationError

if TYPE_CHECKING:
    from pathlib import Path


def secret_key(path: Path) -> bytes:
    """A 32-byte secret kept in ``path`` (readable by its owner only), made on first use."""
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        key = os.urandom(32)
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first: use theirs
            return secret_key(path)
        with os.fdopen(descriptor, "wb") as f:
            f.write(key)
    except OSError as e:
        raise ConfigurationError(f"cannot read the key {path}: {e.strerror}") from None
    if len(key) != 32:
        raise ConfigurationError(f"{path} is not a 32-byte key")
    return key
