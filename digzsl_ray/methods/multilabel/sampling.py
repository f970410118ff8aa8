"""Label-set sampling with a per-label quota (Diff-ZS-MLC ``generate_image_*/inference.py``, ``-mmln=2``).

Each draw takes ``set_size`` labels uniformly from the pool and removes duplicates. With
``redraw_single`` (COCO) a set that collapsed to one label gets one more draw (then dedupe again),
and a set holding an easy-confusion pair (``confusions``; COCO's default
:data:`COCO_CONFUSIONS`) is drawn again. Without it (NUS) single-label sets occur. A label leaves
the pool once ``quota`` accepted images hold it; sampling ends when the pool is empty.

Where the reference would loop forever (one label left but pairs required; every remaining pair a
confusion), we stop redrawing after ``max_redraws`` and take the last draw, and say so in
:attr:`LabelSetSampler.notes`.
"""

from __future__ import annotations

import numpy as np

COCO_CONFUSIONS: tuple[tuple[str, str], ...] = (
    ("skateboard", "snowboard"), ("elephant", "cow"), ("sink", "cup"), ("scissors", "knife"))


class LabelSetSampler:
    """Draws target label sets (tuples of label indices, sorted) until every label met its quota."""

    def __init__(self, labels: list[str], quota: int = 200, set_size: int = 2, redraw_single: bool = True,
                 confusions: tuple[tuple[str, str], ...] | list = (), seed: int = 0, max_redraws: int = 100):
        if quota < 1 or set_size < 1:
            raise ValueError(f"quota and set_size must be at least 1, got {quota} and {set_size}")
        unknown = sorted({n for pair in confusions for n in pair} - set(labels))
        if unknown:
            raise ValueError(f"confusion list names labels that are not sampled: {unknown[:5]}")
        self.labels = list(labels)
        self.quota, self.set_size, self.redraw_single = quota, set_size, redraw_single
        index = {n: i for i, n in enumerate(self.labels)}
        self.confusions = {frozenset((index[a], index[b])) for a, b in confusions}
        self.counts = np.zeros(len(labels), dtype=np.int64)
        self.rng = np.random.default_rng(np.random.SeedSequence([seed, 424242]))
        self.max_redraws = max_redraws
        self.notes: list[str] = []

    @property
    def pool(self) -> list[int]:
        return [i for i in range(len(self.labels)) if self.counts[i] < self.quota]

    def done(self) -> bool:
        return not self.pool

    def _confused(self, s: set[int]) -> bool:
        return any(c <= s for c in self.confusions)

    def draw(self) -> tuple[int, ...] | None:
        pool = self.pool
        if not pool:
            return None
        for attempt in range(self.max_redraws + 1):
            s = set(int(x) for x in self.rng.choice(pool, size=self.set_size))
            if self.redraw_single and len(s) == 1 and len(pool) > 1:
                s.add(int(self.rng.choice(pool)))  # one more draw; still one label: draw the set again
                if len(s) == 1:
                    continue
            if self._confused(s):
                continue
            return tuple(sorted(s))
        self.notes.append(f"took {sorted(s)} after {self.max_redraws} redraws (pool: {len(pool)} labels)")
        return tuple(sorted(s))

    def accept(self, labels) -> None:
        """Count an accepted image for each of its target labels."""
        for i in labels:
            self.counts[int(i)] += 1
