"""Seeds derived from named parts, so every random stream (an LRB batch, a store's shuffle) is addressable."""

from __future__ import annotations

import hashlib


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from a tuple of parts (stable across runs and platforms, unlike hash())."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)
