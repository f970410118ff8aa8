"""The in-memory ZSL split every stage consumes, whatever reader produced it.

A split holds class names, which classes are seen and unseen, and image items of the standard
splits (xlsa17 naming): ``trainval`` (seen classes, for training), ``test_seen`` and
``test_unseen``. A validation split of seen images (``val``) is carved out of ``trainval``,
stratified by class and seeded, so model selection never touches test data; ``train_items()`` is
``trainval`` without ``val``. Optional ``val_classes`` (xlsa17 ``valclassesK``) are seen classes
that can play "unseen" during model selection.

Single-label items carry one label; multi-label items (MiniWorld scenes) carry several.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SPLITS = ("trainval", "test_seen", "test_unseen")


@dataclass(frozen=True)
class Item:
    """One image: an absolute path and its label indices (one for single-label data)."""

    path: str
    labels: tuple[int, ...]

    @property
    def label(self) -> int:
        return self.labels[0]


@dataclass
class ZSLSplit:
    """A zero-shot split. Class indices refer to ``classes``.

    Attributes:
        name: dataset name ("miniworld", "CUB", ...).
        classes: all class names; the index of a name is its label.
        seen: indices of seen classes (training labels).
        unseen: indices of unseen classes (names only at training time).
        items: ``{"trainval" | "test_seen" | "test_unseen": [Item]}``.
        val: items of ``trainval`` held out for model selection (a subset, never test data).
        val_classes: seen class indices usable as pseudo-unseen for model selection (may be empty).
        multi_label: whether items carry label sets.
        root: where image paths were resolved from (for messages).
        notes: facts a reader wants reported (e.g. how many test images it left out and why).
    """

    name: str
    classes: list[str]
    seen: list[int]
    unseen: list[int]
    items: dict[str, list[Item]]
    val: list[Item] = field(default_factory=list)
    val_classes: list[int] = field(default_factory=list)
    multi_label: bool = False
    root: str = ""
    notes: dict = field(default_factory=dict)

    # Convenience views --------------------------------------------------------------------
    @property
    def seen_names(self) -> list[str]:
        return [self.classes[i] for i in self.seen]

    @property
    def unseen_names(self) -> list[str]:
        return [self.classes[i] for i in self.unseen]

    def train_items(self) -> list[Item]:
        """``trainval`` minus the validation items."""
        held = {it.path for it in self.val}
        return [it for it in self.items["trainval"] if it.path not in held]

    def counts(self) -> dict[str, int]:
        out = {k: len(v) for k, v in self.items.items()}
        out["val"] = len(self.val)
        return out

    def summary(self) -> str:
        c = self.counts()
        return (
            f"{self.name}: {len(self.classes)} classes ({len(self.seen)} seen, {len(self.unseen)} unseen); "
            f"trainval {c['trainval']} (val {c['val']}), test_seen {c['test_seen']}, "
            f"test_unseen {c['test_unseen']}"
        )

    def carve_val(self, fraction: float, seed: int) -> None:
        """Hold out ``fraction`` of each seen class's trainval items (at least one if it has two)."""
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"val_fraction: got {fraction}, expected a number in [0, 1)")
        rng = np.random.default_rng(seed)
        by_class: dict[int, list[Item]] = {}
        for it in self.items["trainval"]:
            by_class.setdefault(it.label, []).append(it)
        val: list[Item] = []
        for c in sorted(by_class):
            group = sorted(by_class[c], key=lambda it: it.path)
            k = int(round(fraction * len(group)))
            if fraction > 0 and k == 0 and len(group) >= 2:
                k = 1
            pick = rng.permutation(len(group))[:k]
            val.extend(group[i] for i in sorted(pick))
        self.val = val

    def without_classes(self, names: list[str]) -> "ZSLSplit":
        """The split with the classes ``names`` and their images removed from every split, labels
        renumbered in order (``data.exclude_classes``: classes a run never had, to add later)."""
        if not names:
            return self
        unknown = [n for n in names if n not in self.classes]
        if unknown:
            raise ValueError(f"data.exclude_classes: {unknown[:5]} are not classes of {self.name}")
        if self.multi_label:
            raise ValueError("data.exclude_classes: single-label data only")
        drop = {self.classes.index(n) for n in names}
        keep = [i for i in range(len(self.classes)) if i not in drop]
        new = {old: k for k, old in enumerate(keep)}

        def items(seq):
            return [Item(it.path, (new[it.label],)) for it in seq if it.label not in drop]

        notes = dict(self.notes, excluded_classes=list(names))
        return ZSLSplit(self.name, [self.classes[i] for i in keep], [new[i] for i in self.seen if i not in drop],
                        [new[i] for i in self.unseen if i not in drop], {k: items(v) for k, v in self.items.items()},
                        val=items(self.val), val_classes=[new[i] for i in self.val_classes if i not in drop],
                        multi_label=False, root=self.root, notes=notes)

    def fingerprint(self) -> dict:
        """What must match for two runs to share a run directory (classes and the seen/unseen cut)."""
        return {
            "classes": list(self.classes),
            "unseen": [self.classes[i] for i in self.unseen],
        }


def resolve(root: str | Path, rel: str) -> str:
    """Absolute path of ``rel`` under ``root`` (``rel`` may already be absolute)."""
    p = Path(rel)
    return str(p if p.is_absolute() else Path(root) / p)


def validation_classes(split, seed: int) -> list[int]:
    """The seen classes held out as pseudo-unseen by the validation-class protocol: the dataset's own
    list (xlsa17 ``valclassesK``, MiniWorld's ``val_classes``), else a seeded third as many seen
    classes as there are unseen ones (at least 1, and never all seen classes)."""
    if split.val_classes:
        return sorted(int(v) for v in split.val_classes)
    n = min(max(1, -(-len(split.unseen) // 3)), len(split.seen) - 1)
    if n <= 0:
        return []
    rng = np.random.default_rng(np.random.SeedSequence([seed, 77]))
    return sorted(int(v) for v in rng.choice(np.asarray(split.seen), size=n, replace=False))
