"""``digzsl miniworld make``: render the MiniWorld data (corpus, ZSL benchmark, multi-label set).

Output layout:
```
OUT/world.json            parameters, class list with attributes, corpus frequencies, unseen classes
OUT/corpus/               the captioned "internet" (imagefolder: metadata.jsonl + images/)
OUT/zsl/                  the single-label ZSL benchmark (digzsl dataset format)
OUT/zsl_multilabel/       the multi-label variant (64x64 scenes of 2-3 objects)
OUT/contact_sheet.png     one benchmark image per class, seen and unseen marked
```
Same seed, same bytes: every image is a pure function of (seed, stream, index) and every index
file is written deterministically.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from digzsl_ray.data.format import write_dataset
from digzsl_ray.errors import UserError
from digzsl_ray.io import write_bytes, write_json, write_text
from digzsl_ray.miniworld import world
from digzsl_ray.slug import slugify

# Streams of the per-image random generators (distinct streams => disjoint images).
STREAM_CORPUS, STREAM_BENCH, STREAM_MULTI = 10, 20, 30


@dataclass
class WorldParams:
    seed: int = 0  # master seed of the world
    corpus_size: int = 30000  # images in the captioned corpus
    fine_caption_rate: float = 0.25  # chance that a descriptive corpus caption names the pattern
    name_caption_rate: float = 0.02  # chance that a caption calls a non-descriptively named class by its name
    head: int = 1600  # relative count of the most common class (shape of the long tail)
    tail: int = 20  # relative count of the rarest class
    n_unseen: int = 18  # ZSL unseen classes (a quarter of 72)
    n_val_classes: int = 6  # seen classes listed as validation classes (pseudo-unseen for calibration)
    trainval_per_class: int = 60  # benchmark images per seen class for training
    test_seen_per_class: int = 15  # benchmark test images per seen class
    test_unseen_per_class: int = 30  # benchmark test images per unseen class
    multilabel_train: int = 600  # multi-label scenes of seen classes only
    multilabel_test: int = 300  # multi-label scenes with at least one unseen class (the ZSL test set)
    multilabel_test_seen: int = 150  # multi-label test scenes of seen classes only (with the above: GZSL)


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


PARTS = ("corpus", "zsl", "multilabel")


def make_world(out: str | Path, params: WorldParams, progress: bool = True,
               parts: tuple[str, ...] = PARTS) -> dict:
    """Render ``parts`` into ``out``; returns the summary that is also saved as world.json.

    The class list, frequencies and unseen classes depend only on ``params``, so rendering only the
    benchmark (``parts=("zsl",)``) gives the same classes as rendering everything.
    """
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise UserError(f"--parts: got {unknown}, expected a comma-separated subset of {list(PARTS)}")
    out = Path(out)
    classes = world.all_classes()
    names = [c.name for c in classes]
    freqs = world.class_frequencies(params.seed, params.corpus_size, params.head, params.tail)
    unseen = world.choose_unseen(params.seed, params.n_unseen)
    unseen_set = set(unseen)
    val_classes = world.choose_val_classes(params.seed, unseen, params.n_val_classes)
    seen = [n for n in names if n not in unseen_set]
    spec = world.class_by_name()
    bar = dict(disable=not progress, unit="img", mininterval=0.5)

    # 1. The captioned corpus: classes in a seeded shuffled order, captions from the grammar.
    order = np.concatenate([np.full(freqs[n], i) for i, n in enumerate(names)])
    order = np.random.default_rng(np.random.SeedSequence([params.seed, STREAM_CORPUS])).permutation(order)
    lines = []
    for k, ci in enumerate(tqdm(order if "corpus" in parts else [], desc="corpus", **bar)):
        s = classes[int(ci)]
        rng = np.random.default_rng(np.random.SeedSequence([params.seed, STREAM_CORPUS, 1, k]))
        cap = world.caption_for(s, rng, params.fine_caption_rate, params.name_caption_rate)
        rel = f"images/{k:06d}.png"
        write_bytes(out / "corpus" / rel, _png(world.render(s, params.seed, STREAM_CORPUS, k)))
        lines.append(json.dumps({"file_name": rel, "text": cap}))
    if "corpus" in parts:
        write_text(out / "corpus" / "metadata.jsonl", "\n".join(lines) + "\n")

    # 2. The single-label ZSL benchmark.
    rows: dict[str, list[tuple[str, list[str]]]] = {"trainval": [], "test_seen": [], "test_unseen": []}
    jobs = []
    for ci, n in enumerate(names):
        if n in unseen_set:
            jobs += [("test_unseen", ci, j) for j in range(params.test_unseen_per_class)]
        else:
            jobs += [("trainval", ci, j) for j in range(params.trainval_per_class)]
            jobs += [("test_seen", ci, j) for j in range(params.test_seen_per_class)]
    for k, (split, ci, j) in enumerate(tqdm(jobs if "zsl" in parts else [], desc="zsl benchmark", **bar)):
        n = names[ci]
        rel = f"images/{split}/{slugify(n)}/{j:04d}.png"
        write_bytes(out / "zsl" / rel, _png(world.render(classes[ci], params.seed, STREAM_BENCH, k)))
        rows[split].append((rel, [n]))
    attrs = {n: spec[n].attributes() for n in names}
    naming = {n: {"description": spec[n].description, "kind": spec[n].name_kind} for n in names}
    if "zsl" in parts:
        write_dataset(out / "zsl", "miniworld", names, unseen, rows, val_classes=val_classes,
                      extra={"attributes": attrs, "names": naming})

    # 3. The multi-label variant: 2-3 objects a scene, distinct classes.
    mrows: dict[str, list[tuple[str, list[str]]]] = {"trainval": [], "test_seen": [], "test_unseen": []}
    seen_idx = [names.index(n) for n in seen]
    unseen_idx = [names.index(n) for n in unseen]
    n_tr, n_te = params.multilabel_train, params.multilabel_test
    total = n_tr + n_te + params.multilabel_test_seen if "multilabel" in parts else 0
    for k in tqdm(range(total), desc="multi-label", **bar):
        rng = np.random.default_rng(np.random.SeedSequence([params.seed, STREAM_MULTI, 1, k]))
        m = int(rng.integers(2, 4))
        if k < n_tr or k >= n_tr + n_te:  # seen classes only: training scenes, then seen test scenes
            split = "trainval" if k < n_tr else "test_seen"
            pick = list(rng.choice(seen_idx, size=m, replace=False))
        else:
            split = "test_unseen"
            pick = [int(rng.choice(unseen_idx))] + [int(x) for x in rng.choice(
                [i for i in range(len(names))], size=m - 1, replace=False)]
            pick = list(dict.fromkeys(pick))  # distinct, first (unseen) kept
        specs = [classes[int(i)] for i in pick]
        rel = f"images/{split}/{k:05d}.png"
        write_bytes(out / "zsl_multilabel" / rel, _png(world.render_scene(specs, params.seed, STREAM_MULTI, k)))
        mrows[split].append((rel, [names[int(i)] for i in pick]))
    if "multilabel" in parts:
        write_dataset(out / "zsl_multilabel", "miniworld-multilabel", names, unseen, mrows, multi_label=True,
                      extra={"attributes": attrs})

    # 4. Contact sheet and summary.
    write_bytes(out / "contact_sheet.png", contact_sheet(names, unseen_set, params.seed))
    summary = {
        "params": asdict(params),
        "classes": names,
        "attributes": attrs,
        "names": naming,
        "unseen": unseen,
        "val_classes": val_classes,
        "corpus_frequency": freqs,
        "parts": list(parts),
        "counts": {
            "corpus": int(len(order)) if "corpus" in parts else 0,
            "zsl": {k: len(v) for k, v in rows.items()},
            "zsl_multilabel": {k: len(v) for k, v in mrows.items()},
        },
    }
    write_json(out / "world.json", summary)
    return summary


def contact_sheet(names: list[str], unseen: set[str], seed: int, cols: int = 12, scale: int = 3) -> bytes:
    """One rendered image per class; unseen classes framed in red. PNG bytes."""
    cell = world.IMAGE_SIZE + 4
    rows = (len(names) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * cell, rows * cell), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    by_name = world.class_by_name()
    for i, n in enumerate(names):
        x, y = (i % cols) * cell, (i // cols) * cell
        if n in unseen:
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], outline=(220, 0, 0), width=2)
        sheet.paste(world.render(by_name[n], seed, 99, i), (x + 2, y + 2))
    sheet = sheet.resize((sheet.width * scale, sheet.height * scale), Image.Resampling.NEAREST)
    return _png(sheet)


def format_summary(summary: dict) -> str:
    """The table printed by ``digzsl miniworld make``."""
    f = summary["corpus_frequency"]
    vals = sorted(f.values())
    c = summary["counts"]
    lines = [
        f"MiniWorld (seed {summary['params']['seed']}): {len(summary['classes'])} classes "
        f"= {len(world.PATTERNS)} patterns x {len(world.COLOURS)} colours x {len(world.SHAPES)} shapes",
        f"  corpus        {c['corpus']:>6} captioned images; per class {vals[0]}..{vals[-1]} "
        f"(pattern named in {summary['params']['fine_caption_rate']:.0%} of descriptive captions; a "
        f"non-descriptive class name in {summary['params'].get('name_caption_rate', 0):.0%} of its class's captions)",
        "  names         " + ", ".join(f"{sum(v['kind'] == k for v in summary.get('names', {}).values())} {k}"
                                       for k in world.NAME_KINDS),
        f"  zsl           {len(summary['classes']) - len(summary['unseen'])} seen / {len(summary['unseen'])} unseen; "
        + ", ".join(f"{k} {v}" for k, v in c["zsl"].items()),
        "  zsl_multilabel " + ", ".join(f"{k} {v}" for k, v in c["zsl_multilabel"].items()),
        "  unseen: " + ", ".join(summary["unseen"]),
    ]
    return "\n".join(lines)
