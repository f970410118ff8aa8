"""Stable seeds derived from names, the same on every machine, actor and run."""

from __future__ import annotations

import hashlib


def class_seed(name: str, seed: int, tag: str = "dct-train") -> int:
    """A stable 31-bit seed for (purpose tag, class, seed), the same on every machine and actor.

    Distinct tags ("dct-train", "dct-eval", "generate-dct", ...) give unrelated seed streams, so no
    setting of the user-facing seeds makes one purpose reuse another's latents.
    """
    h = hashlib.sha256(f"{tag}\x00{name}\x00{seed}".encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF
