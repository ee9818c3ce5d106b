"""Keys and signatures (the ``cryptography`` package): Ed25519 for signed checkpoints."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from crm_ledger.errors import ConfigurationError, InvalidInput

if TYPE_CHECKING:
    from pathlib import Path

PRIVATE_KEY_FILE = "signing-key.pem"
PUBLIC_KEY_FILE = "signing-key.pub.pem"


class Ed25519Signer:
    """Signs with the ledger's private key (when present) and verifies with its public key."""

    def __init__(self, public: Ed25519PublicKey, private: Ed25519PrivateKey | None = None) -> None:
        self.public = public
        self.private = private

    def sign(self, data: bytes) -> bytes:
        """The signature of ``data``."""
        if self.private is None:
            raise ConfigurationError("no private signing key here: cannot sign a checkpoint")
        return self.private.sign(data)

    def verify(self, signature: bytes, data: bytes) -> bool:
        """Whether ``signature`` is this key's signature of ``data``."""
        try:
            self.public.verify(signature, data)
        except InvalidSignature:
            return False
        return True

    def public_pem(self) -> str:
        """The public key, PEM-encoded, for auditors."""
        return self.public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()


def create_key_pair(folder: Path) -> bool:
    """Create the signing key pair in ``folder`` unless it exists; True if created."""
    private_path = folder / PRIVATE_KEY_FILE
    if private_path.exists():
        return False
    folder.mkdir(parents=True, exist_ok=True)
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    descriptor = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as f:
        f.write(pem)
    (folder / PUBLIC_KEY_FILE).write_text(Ed25519Signer(private.public_key()).public_pem())
    return True


def load_signer(folder: Path) -> Ed25519Signer:
    """The ledger's signer from ``folder`` (the private key is optional for verifying)."""
    private_path, public_path = folder / PRIVATE_KEY_FILE, folder / PUBLIC_KEY_FILE
    if private_path.exists():
        private = serialization.load_pem_private_key(private_path.read_bytes(), password=None)
        if not isinstance(private, Ed25519PrivateKey):
            raise ConfigurationError(f"{private_path} is not an Ed25519 private key")
        return Ed25519Signer(private.public_key(), private)
    if public_path.exists():
        return Ed25519Signer(load_public_key(public_path.read_bytes()))
    msg = f"no signing key in {folder}; `crm-ledger init` creates one"
    raise ConfigurationError(msg)


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM bytes."""
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError as e:
        raise InvalidInput(f"not a PEM public key: {e}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise InvalidInput("not an Ed25519 public key")
    return key
