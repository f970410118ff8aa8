"""Checks that run before any model loads: a bad dataset fails in seconds, with a message that says
what is wrong and where, instead of an hour into a GPU job.
"""

from __future__ import annotations

from collections import Counter

from tqdm.auto import tqdm

from digzsl_ray.data.split import SPLITS, ZSLSplit
from digzsl_ray.decode import image_problem
from digzsl_ray.errors import UserError, short
from digzsl_ray.slug import slugify, unsafe_name_reason


class DatasetError(UserError):
    """A dataset that cannot be used; the message lists what is wrong."""


def check_class_names(classes: list[str]) -> None:
    """Duplicate names, unsafe names and names whose slugs collide are errors."""
    dup = sorted(n for n, c in Counter(classes).items() if c > 1)
    if dup:
        raise DatasetError(f"duplicate class names ({len(dup)}): {', '.join(repr(d) for d in dup[:10])}")
    bad = [(n, r) for n in classes if (r := unsafe_name_reason(n))]
    if bad:
        listed = "; ".join(f"{short(n, 60)}: {r}" for n, r in bad[:10])
        raise DatasetError(f"{len(bad)} class name(s) cannot be used as file names: {listed}")
    by_slug: dict[str, list[str]] = {}
    for n in classes:
        by_slug.setdefault(slugify(n), []).append(n)
    clash = [v for v in by_slug.values() if len(v) > 1]
    if clash:
        raise DatasetError("class names that map to the same file name: " + "; ".join(" / ".join(map(repr, v)) for v in clash[:10]))


def check_split_structure(split: ZSLSplit) -> None:
    """Names, the seen/unseen partition and split contents (no file access)."""
    # 1. Names
    check_class_names(split.classes)
    n = len(split.classes)
    # 2. Seen and unseen
    for what, idx in (("seen", split.seen), ("unseen", split.unseen)):
        out = [i for i in idx if not 0 <= i < n]
        if out:
            raise DatasetError(f"{what} class indices out of range 0..{n - 1}: {out[:10]}")
    both = sorted(set(split.seen) & set(split.unseen))
    if both:
        names = ", ".join(repr(split.classes[i]) for i in both[:10])
        raise DatasetError(f"{len(both)} class(es) are both seen and unseen: {names}")
    if not split.seen:
        raise DatasetError("no seen classes: training needs at least one")
    if not split.unseen:
        raise DatasetError("no unseen classes: nothing to do zero-shot")
    # 3. Splits
    for s in SPLITS:
        if not split.items.get(s):
            raise DatasetError(f"split {s!r} is empty")
    seen, unseen = set(split.seen), set(split.unseen)
    wrong = [it for it in split.items["trainval"] if any(lab in unseen for lab in it.labels)]
    if wrong:
        raise DatasetError(f"{len(wrong)} trainval image(s) are labelled with unseen classes, first: {wrong[0].path} "
                           f"({split.classes[wrong[0].labels[0]]!r})")
    if not split.multi_label:
        wrong = [it for it in split.items["test_seen"] if it.label not in seen]
        if wrong:
            raise DatasetError(f"{len(wrong)} test_seen image(s) are labelled with unseen classes, first: {wrong[0].path}")
        wrong = [it for it in split.items["test_unseen"] if it.label not in unseen]
        if wrong:
            raise DatasetError(f"{len(wrong)} test_unseen image(s) are labelled with seen classes, first: {wrong[0].path}")
    tested = {lab for it in split.items["test_unseen"] for lab in it.labels}
    missing = [split.classes[i] for i in split.unseen if i not in tested]
    if missing:
        raise DatasetError(f"{len(missing)} unseen class(es) have no test images: {', '.join(map(repr, missing[:10]))}")
    trained = {it.label for it in split.items["trainval"]} if not split.multi_label else seen
    untrained = [split.classes[i] for i in split.seen if i not in trained]
    if untrained:
        raise DatasetError(f"{len(untrained)} seen class(es) have no trainval images: {', '.join(map(repr, untrained[:10]))}")


def check_images(split: ZSLSplit, progress: bool = True) -> None:
    """Open every image once; list the first 10 problems and the total count."""
    paths = sorted({it.path for s in SPLITS for it in split.items[s]})
    bad = []
    for p in tqdm(paths, desc="checking images", unit="img", disable=not progress, mininterval=1.0, leave=False):
        reason = image_problem(p)
        if reason:
            bad.append(f"{p}: {reason}")
    if bad:
        more = f"\n  ... and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise DatasetError(f"{len(bad)} of {len(paths)} image file(s) are missing or corrupt:\n  " + "\n  ".join(bad[:10]) + more)


def validate_split(split: ZSLSplit, images: bool = True, progress: bool = True) -> None:
    """All checks: structure first (instant), then every image file."""
    check_split_structure(split)
    if images:
        check_images(split, progress=progress)
