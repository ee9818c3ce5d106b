"""Per-customer data keys in memory: expanded keys (ciphers) are cached for recent streams
only, and a stream keeps one key whatever the cache dropped."""

from __future__ import annotations

from crm_ledger.adapters import crypto
from crm_ledger.adapters.crypto import DataKeys


def test_ciphers_are_bounded_and_a_stream_keeps_its_key_after_its_cipher_is_dropped() -> None:
    looked_up: list[bytes] = []

    def load(stream: bytes) -> bytes | None:
        looked_up.append(stream)
        return None  # the store has no key for any of these streams

    keys = DataKeys(load)
    first = b"\x01" * 16
    # A stream's opening batch: its first sealed value makes its key, with no look-up.
    early = keys.seal(first, "email", "ada@example.org", fresh=True)
    others = [i.to_bytes(16, "big") for i in range(2, crypto.CIPHER_CACHE_SIZE + 50)]
    for stream in others:
        keys.seal(stream, "email", "x@example.org", fresh=True)
    assert len(keys.ciphers) <= crypto.CIPHER_CACHE_SIZE
    assert first not in keys.ciphers  # dropped from the cache...
    late = keys.seal(first, "name", "Ada", fresh=True)  # ...and the same batch seals again
    assert looked_up == []
    assert len(keys.pending) == len(others) + 1  # one key per stream, none made twice
    assert keys.open(first, "email", early) == "ada@example.org"
    assert keys.open(first, "name", late) == "Ada"
