"""Generated-image sets every method shares: shard collection from a Ray Data stream, the seeded
validation split of generated rows, the manifest reader, PNG decoding (no ray import here).
DIG-ZSL's row plan and generator live in :mod:`digzsl_ray.methods.digzsl.generation`.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np

def collect_shards(batches, expected: dict[str, int], write, on_rows=None) -> None:
    """Group the streamed rows of generation ``batches`` by their ``shard`` column and call
    ``write(shard_id, rows)`` the moment a shard has all ``expected[shard_id]`` rows, so a killed run
    leaves only whole shards; ``on_rows(n)`` after each batch. Raises when the stream ends with a
    shard incomplete."""
    pending: dict[str, list[dict]] = {}
    for batch in batches:
        n = len(batch["seed"])
        for i in range(n):
            row = {k: batch[k][i] for k in batch}
            sid = str(row["shard"])
            pending.setdefault(sid, []).append(row)
            if len(pending[sid]) == expected[sid]:
                write(sid, pending.pop(sid))
        if on_rows is not None:
            on_rows(n)
    if pending:
        raise RuntimeError(f"generation ended with incomplete shards: {sorted(pending)[:5]}")

def is_validation_row(seed: int, fraction: float) -> bool:
    """Deterministic held-out synthetic rows (for early stopping and calibration)."""
    if fraction <= 0:
        return False
    h = hashlib.sha256(str(int(seed)).encode()).digest()
    return int.from_bytes(h[:4], "little") / 2**32 < fraction

def read_manifest(dir_: Path) -> dict | None:
    p = Path(dir_) / "_manifest.json"
    return json.loads(p.read_text()) if p.is_file() else None

def decode_png(blob: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(blob)) as im:
        return np.asarray(im.convert("RGB"))
