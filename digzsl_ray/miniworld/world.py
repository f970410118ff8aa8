"""MiniWorld: the attribute world, its classes, caption grammar and renderer.

A class is a (pattern, colour, shape) triple named "striped red circle". Colour and shape are
coarse attributes that every caption names; the pattern is the *fine* attribute that captions
name only part of the time (``fine_caption_rate``), as alt-text rarely names a bird's species.
Class frequencies in the captioned corpus are long-tailed, with rarity balanced across colours.

Everything is deterministic: an image is a pure function of ``(seed, stream, index)`` (numpy
``SeedSequence``), so rendering order and parallelism never change a byte.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

# 1. The attribute vocabulary. Colours are RGB means; each image jitters them.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 40, 40),
    "orange": (242, 142, 28),
    "yellow": (236, 212, 36),
    "green": (40, 160, 64),
    "blue": (40, 86, 216),
    "purple": (140, 56, 192),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
PATTERNS: tuple[str, ...] = ("plain", "striped", "dotted")
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "pattern": PATTERNS,
    "colour": tuple(COLOURS),
    "shape": SHAPES,
}

IMAGE_SIZE = 32  # pixels, square
_SUPERSAMPLE = 4  # draw at 4x and downsample with a box filter (anti-aliasing)

# Corpus caption templates; "{}" is the object description.
CAPTION_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}",
    "a {}",
    "a picture of a {}",
    "an image of a {}",
    "a {} on a light background",
    "a small {}",
    "a drawing of a {}",
    "a close-up of a {}",
)


@dataclass(frozen=True)
class ClassSpec:
    """One MiniWorld class: a fine attribute (pattern) on a coarse colour x shape."""

    pattern: str
    colour: str
    shape: str

    @property
    def name(self) -> str:
        return f"{self.pattern} {self.colour} {self.shape}"

    def attributes(self) -> dict[str, str]:
        return {"pattern": self.pattern, "colour": self.colour, "shape": self.shape}


def all_classes() -> list[ClassSpec]:
    """The 72 classes in a fixed canonical order (colour-major, then shape, then pattern)."""
    return [ClassSpec(p, c, s) for c in COLOURS for s in SHAPES for p in PATTERNS]


def class_by_name() -> dict[str, ClassSpec]:
    return {c.name: c for c in all_classes()}


def _rng(seed: int, stream: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, stream, index]))


# 2. The long tail.
def class_ranking(seed: int) -> list[str]:
    """All class names from most to least common in the corpus.

    Ranks are dealt so that every colour holds exactly one class in each band of ``len(COLOURS)``
    consecutive ranks (rarity balanced across colours); within a colour, which (shape, pattern)
    gets which band is a seeded permutation, so every pattern is common for some colour x shape and
    rare for others.
    """
    classes = all_classes()
    rng = _rng(seed, 1, 0)
    colours = list(COLOURS)
    by_colour = {c: [k for k in classes if k.colour == c] for c in colours}
    perms = {c: rng.permutation(len(by_colour[c])) for c in colours}
    ranked: list[str] = []
    for band in range(len(classes) // len(colours)):
        for ci in rng.permutation(len(colours)):
            c = colours[ci]
            ranked.append(by_colour[c][perms[c][band]].name)
    return ranked


def class_frequencies(seed: int, total: int, head: int = 1600, tail: int = 24) -> dict[str, int]:
    """Image counts per class for the captioned corpus, in rank order (see :func:`class_ranking`).

    Counts fall geometrically from ``head`` (rank 0) to ``tail`` (last rank) and are scaled to sum
    to exactly ``total`` (largest-remainder rounding, each at least 1 when ``total`` allows).
    """
    ranked = class_ranking(seed)
    n = len(ranked)
    if total < n:  # a corpus smaller than the class list (tests): one image for each of the most common
        return {name: int(r < total) for r, name in enumerate(ranked)}
    ratio = (tail / head) ** (1.0 / (n - 1))
    raw = np.array([head * ratio**r for r in range(n)])
    share = raw * (total - n) / raw.sum()
    counts = 1 + np.floor(share).astype(int)
    rest = total - counts.sum()
    counts[np.argsort(-(share - np.floor(share)), kind="stable")[:rest]] += 1
    return {name: int(counts[r]) for r, name in enumerate(ranked)}


# 3. Captions.
def caption_for(spec: ClassSpec, rng: np.random.Generator, fine_caption_rate: float) -> str:
    """An alt-text-like caption: always colour and shape, the pattern only sometimes."""
    if rng.random() < fine_caption_rate:
        desc = spec.name
    else:
        desc = f"{spec.colour} {spec.shape}"
    template = CAPTION_TEMPLATES[int(rng.integers(len(CAPTION_TEMPLATES)))]
    return template.format(desc)


# 4. Rendering.
def _shape_polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    if shape == "square":
        h = r * 0.86
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        return [(cx, cy - r * 1.05), (cx + r * 1.1, cy + r * 0.85), (cx - r * 1.1, cy + r * 0.85)]
    if shape == "diamond":
        return [(cx, cy - r * 1.12), (cx + r * 1.12, cy), (cx, cy + r * 1.12), (cx - r * 1.12, cy)]
    return None  # circle


def _jitter(colour: tuple[int, int, int], rng: np.random.Generator, amount: int) -> tuple[int, ...]:
    return tuple(int(np.clip(v + rng.integers(-amount, amount + 1), 0, 255)) for v in colour)


def draw_object(
    canvas: Image.Image, spec: ClassSpec, rng: np.random.Generator, box: tuple[int, int, int, int]
) -> None:
    """Draw one patterned object into ``box`` (x0, y0, x1, y1, supersampled pixels) of ``canvas``."""
    x0, y0, x1, y1 = box
    side = x1 - x0
    unit = side / IMAGE_SIZE  # supersampled pixels per output pixel of a 32-px cell
    cx = x0 + side / 2 + rng.uniform(-3, 3) * unit
    cy = y0 + side / 2 + rng.uniform(-3, 3) * unit
    r = rng.uniform(8.5, 10.5) * unit
    fill = _jitter(COLOURS[spec.colour], rng, 14)
    mark = tuple(int(v * 0.28) for v in fill)  # pattern marks: a dark shade of the fill

    mask = Image.new("L", canvas.size, 0)
    md = ImageDraw.Draw(mask)
    poly = _shape_polygon(spec.shape, cx, cy, r)
    if poly is None:
        md.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    else:
        md.polygon(poly, fill=255)

    layer = Image.new("RGB", canvas.size, fill)
    ld = ImageDraw.Draw(layer)
    if spec.pattern == "striped":
        period, width = 6 * unit, 3 * unit  # coarse: 3-px bands survive a 4x-downsampling VAE
        y = y0 + rng.uniform(0, period)
        while y < y1:
            ld.rectangle([x0, y, x1, y + width - 1], fill=mark)
            y += period
    elif spec.pattern == "dotted":
        period, rad = 7 * unit, 2.1 * unit
        ox, oy = rng.uniform(0, period, size=2)
        yy = y0 + oy
        while yy < y1:
            xx = x0 + ox
            while xx < x1:
                ld.ellipse([xx - rad, yy - rad, xx + rad, yy + rad], fill=mark)
                xx += period
            yy += period
    canvas.paste(layer, (0, 0), mask)


def background(rng: np.random.Generator, size: int) -> Image.Image:
    base = rng.uniform(196, 240)
    tint = rng.uniform(-12, 12, size=3)
    rgb = tuple(int(np.clip(base + t, 0, 255)) for t in tint)
    return Image.new("RGB", (size, size), rgb)


def render(spec: ClassSpec, seed: int, stream: int, index: int) -> Image.Image:
    """One 32x32 RGB image of ``spec``, a pure function of its arguments."""
    rng = _rng(seed, stream, index)
    big = IMAGE_SIZE * _SUPERSAMPLE
    canvas = background(rng, big)
    draw_object(canvas, spec, rng, (0, 0, big, big))
    return canvas.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)


def render_scene(specs: list[ClassSpec], seed: int, stream: int, index: int, grid: int = 2) -> Image.Image:
    """A multi-object scene: ``grid x grid`` cells of 32 px, objects in distinct random cells."""
    rng = _rng(seed, stream, index)
    if len(specs) > grid * grid:
        raise ValueError(f"specs: {len(specs)} objects do not fit a {grid}x{grid} scene")
    cell = IMAGE_SIZE * _SUPERSAMPLE
    canvas = background(rng, cell * grid)
    cells = rng.permutation(grid * grid)[: len(specs)]
    for spec, c in zip(specs, cells):
        gx, gy = int(c) % grid, int(c) // grid
        draw_object(canvas, spec, rng, (gx * cell, gy * cell, (gx + 1) * cell, (gy + 1) * cell))
    size = IMAGE_SIZE * grid
    return canvas.resize((size, size), Image.Resampling.BOX)


def choose_unseen(seed: int, n_unseen: int, head_fraction: float = 0.25) -> list[str]:
    """ZSL unseen classes: fine-grained (patterned) classes drawn from across the long tail.

    Like unseen species in CUB, unseen classes carry a fine attribute: ``plain`` classes are the
    generic default of their colour x shape (SD draws them correctly at any frequency) and stay
    seen. Candidates are the patterned classes below the most common ``head_fraction`` of the
    ranking, cut into ``n_unseen`` bands from head to tail; one class is drawn from each band.
    Retries (seeded) until every attribute value of every unseen class also occurs among the seen
    classes and no colour holds more than ``ceil(n_unseen / n_colours)`` unseen classes.
    """
    ranked = class_ranking(seed)
    specs = class_by_name()
    start = int(round(head_fraction * len(ranked)))
    cands = [n for n in ranked[start:] if specs[n].pattern != PATTERNS[0]]
    if len(cands) < n_unseen:
        raise ValueError(f"n_unseen: got {n_unseen}, but only {len(cands)} patterned tail classes exist")
    edges = np.linspace(0, len(cands), n_unseen + 1)
    cap = math.ceil(n_unseen / len(COLOURS))
    for attempt in range(1000):
        rng = _rng(seed, 2, attempt)
        pick = [cands[int(rng.integers(int(edges[i]), max(int(edges[i]) + 1, int(edges[i + 1]))))]
                for i in range(n_unseen)]
        if len(set(pick)) < n_unseen:
            continue
        per_colour = [sum(specs[p].colour == c for p in pick) for c in COLOURS]
        if max(per_colour) > cap:
            continue
        seen = [specs[n] for n in ranked if n not in pick]
        if all(any(getattr(s, a) == getattr(specs[p], a) for s in seen) for p in pick for a in ATTRIBUTES):
            return pick
    raise RuntimeError("could not choose unseen classes satisfying the attribute constraints")
