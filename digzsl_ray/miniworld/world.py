"""MiniWorld: the attribute world, its classes, their names, caption grammar and renderer.

A class is a (pattern, colour, shape) triple. Colour and shape are coarse attributes that every
descriptive caption names; the pattern is the *fine* attribute (thin stripes or small dots) that
captions name only part of the time (``fine_caption_rate``), as alt-text rarely names a species.

Class names are partly opaque, as species names are: a third of the classes are named by their
description ("striped red circle"), a third keep only the colour ("red tovik", like "Yellow
Warbler"), a third carry an invented word ("melsar", like "Brewer's Blackbird"). The corpus uses a
non-descriptive name in only ``name_caption_rate`` of that class's captions, so a rare class's name
is seen a handful of times. Class frequencies in the captioned corpus are long-tailed, with rarity
balanced across colours.

Every image carries nuisance factors, as photos do: position, scale, a small rotation, a cluttered
background with a small distractor object, partial occlusion, lighting (brightness, gradient, colour cast), blur and sensor noise.

Everything is deterministic: an image is a pure function of ``(seed, stream, index)`` (numpy
``SeedSequence``), so rendering order and parallelism never change a byte.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

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
    def description(self) -> str:
        """The attributes in words: "striped red circle"."""
        return f"{self.pattern} {self.colour} {self.shape}"

    @property
    def name(self) -> str:
        """The class name of the benchmark (and of the corpus captions that name the class)."""
        return class_names().get((self.pattern, self.colour, self.shape), (self.description, ""))[0]

    @property
    def name_kind(self) -> str:
        """'descriptive', 'partial' (colour + invented word) or 'opaque' (invented word)."""
        return class_names().get((self.pattern, self.colour, self.shape), ("", "descriptive"))[1] or "descriptive"

    def attributes(self) -> dict[str, str]:
        return {"pattern": self.pattern, "colour": self.colour, "shape": self.shape}


def all_classes() -> list[ClassSpec]:
    """The 72 classes in a fixed canonical order (colour-major, then shape, then pattern)."""
    return [ClassSpec(p, c, s) for c in COLOURS for s in SHAPES for p in PATTERNS]


def class_by_name() -> dict[str, ClassSpec]:
    return {c.name: c for c in all_classes()}


NAME_KINDS = ("descriptive", "partial", "opaque")
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kl", "tr", "sk")
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("", "", "n", "r", "l", "k", "s", "m")


def _invented_word(rng: np.random.Generator) -> str:
    syl = [str(rng.choice(_ONSETS)) + str(rng.choice(_VOWELS)) for _ in range(int(rng.integers(2, 4)))]
    return "".join(syl) + str(rng.choice(_CODAS))


@lru_cache(maxsize=1)
def class_names() -> dict[tuple[str, str, str], tuple[str, str]]:
    """``(pattern, colour, shape) -> (name, kind)``: the world's fixed vocabulary of class names.

    Names do not depend on the world seed (the shipped models and the oracle know one vocabulary).
    Kinds are dealt over the seed-0 frequency ranking in bands of six consecutive ranks, two of each
    kind, so that descriptive, partial and opaque names occur from the head to the tail.
    """
    rng = _rng(0, 3, 0)
    vocabulary = {w for w in (*COLOURS, *SHAPES, *PATTERNS)}
    words: list[str] = []
    while len(words) < len(COLOURS) * len(SHAPES) * len(PATTERNS):
        w = _invented_word(rng)
        if w not in vocabulary and w not in words and 4 <= len(w) <= 9:
            words.append(w)
    ranked = _ranked_specs(0)
    out: dict[tuple[str, str, str], tuple[str, str]] = {}
    for band in range(0, len(ranked), 6):
        kinds = [NAME_KINDS[k % 3] for k in rng.permutation(6)]
        for c, kind in zip(ranked[band : band + 6], kinds):
            word = words[len(out)]
            name = {"descriptive": c.description, "partial": f"{c.colour} {word}", "opaque": word}[kind]
            out[(c.pattern, c.colour, c.shape)] = (name, kind)
    return out


def _rng(seed: int, stream: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, stream, index]))


# 2. The long tail.
def _ranked_specs(seed: int) -> list[ClassSpec]:
    classes = all_classes()
    rng = _rng(seed, 1, 0)
    colours = list(COLOURS)
    by_colour = {c: [k for k in classes if k.colour == c] for c in colours}
    perms = {c: rng.permutation(len(by_colour[c])) for c in colours}
    ranked: list[ClassSpec] = []
    for band in range(len(classes) // len(colours)):
        for ci in rng.permutation(len(colours)):
            c = colours[ci]
            ranked.append(by_colour[c][perms[c][band]])
    return ranked


def class_ranking(seed: int) -> list[str]:
    """All class names from most to least common in the corpus.

    Ranks are dealt so that every colour holds exactly one class in each band of ``len(COLOURS)``
    consecutive ranks (rarity balanced across colours); within a colour, which (shape, pattern)
    gets which band is a seeded permutation, so every pattern is common for some colour x shape and
    rare for others.
    """
    return [c.name for c in _ranked_specs(seed)]


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
def caption_for(spec: ClassSpec, rng: np.random.Generator, fine_caption_rate: float,
                name_caption_rate: float = 0.0) -> str:
    """An alt-text-like caption. A class with a non-descriptive name is called by it with
    probability ``name_caption_rate``; otherwise the caption describes the object: always colour
    and shape, the pattern with probability ``fine_caption_rate``."""
    if spec.name_kind != "descriptive" and rng.random() < name_caption_rate:
        desc = spec.name
    elif rng.random() < fine_caption_rate:
        desc = spec.description
    else:
        desc = f"{spec.colour} {spec.shape}"
    template = CAPTION_TEMPLATES[int(rng.integers(len(CAPTION_TEMPLATES)))]
    return template.format(desc)


# 4. Rendering. Sizes are in output pixels of a 32-px cell; drawing happens at 4x and is box-filtered.
MAX_ROTATION = 12.0  # degrees; a square and a diamond differ by 45, so +-12 keeps them 21 apart
STRIPE_PERIOD, STRIPE_WIDTH = 4.6, 2.0  # thin dark stripes
DOT_PERIOD, DOT_RADIUS = 5.2, 1.35  # small dark dots


def _rotate(points: list[tuple[float, float]], cx: float, cy: float, deg: float) -> list[tuple[float, float]]:
    a = math.radians(deg)
    ca, sa = math.cos(a), math.sin(a)
    return [(cx + (x - cx) * ca - (y - cy) * sa, cy + (x - cx) * sa + (y - cy) * ca) for x, y in points]


def _shape_polygon(shape: str, cx: float, cy: float, r: float, deg: float = 0.0) -> list[tuple[float, float]] | None:
    if shape == "square":
        h = r * 0.86
        pts = [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    elif shape == "triangle":
        pts = [(cx, cy - r * 1.05), (cx + r * 1.1, cy + r * 0.85), (cx - r * 1.1, cy + r * 0.85)]
    elif shape == "diamond":
        pts = [(cx, cy - r * 1.12), (cx + r * 1.12, cy), (cx, cy + r * 1.12), (cx - r * 1.12, cy)]
    else:
        return None  # circle
    return _rotate(pts, cx, cy, deg)


def _jitter(colour: tuple[int, int, int], rng: np.random.Generator, amount: int) -> tuple[int, ...]:
    return tuple(int(np.clip(v + rng.integers(-amount, amount + 1), 0, 255)) for v in colour)


def _muted(rng: np.random.Generator, lo: float = 90, hi: float = 235) -> tuple[int, int, int]:
    """A low-saturation colour (clutter, occluders): grey with a faint random tint."""
    grey = rng.uniform(lo, hi)
    tint = rng.uniform(-22, 22, size=3)
    return tuple(int(np.clip(grey + t, 0, 255)) for t in tint)


def draw_object(
    canvas: Image.Image, spec: ClassSpec, rng: np.random.Generator, box: tuple[int, int, int, int]
) -> None:
    """Draw one patterned object into ``box`` (x0, y0, x1, y1, supersampled pixels) of ``canvas``:
    random position, scale and rotation, thin pattern marks, and sometimes a partial occluder."""
    x0, y0, x1, y1 = box
    side = x1 - x0
    unit = side / IMAGE_SIZE  # supersampled pixels per output pixel of a 32-px cell
    r = rng.uniform(6.0, 10.5) * unit
    slack = max(0.0, side / 2 - r * 1.15 - 1 * unit)
    cx = x0 + side / 2 + rng.uniform(-1, 1) * min(slack, 5 * unit)
    cy = y0 + side / 2 + rng.uniform(-1, 1) * min(slack, 5 * unit)
    deg = rng.uniform(-MAX_ROTATION, MAX_ROTATION)
    fill = _jitter(COLOURS[spec.colour], rng, 14)
    mark = tuple(int(v * 0.4) for v in fill)  # pattern marks: a dark shade of the fill

    mask = Image.new("L", canvas.size, 0)
    md = ImageDraw.Draw(mask)
    poly = _shape_polygon(spec.shape, cx, cy, r, deg)
    if poly is None:
        md.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    else:
        md.polygon(poly, fill=255)

    layer = Image.new("RGB", canvas.size, fill)
    ld = ImageDraw.Draw(layer)
    if spec.pattern == "striped":  # thin bands across the object, turned with it
        period, width = STRIPE_PERIOD * unit, STRIPE_WIDTH * unit
        off = rng.uniform(0, period)
        reach = side
        for k in range(-int(reach / period) - 2, int(reach / period) + 3):
            y = cy + off + k * period
            band = [(cx - reach, y), (cx + reach, y), (cx + reach, y + width), (cx - reach, y + width)]
            ld.polygon(_rotate(band, cx, cy, deg), fill=mark)
    elif spec.pattern == "dotted":
        period, rad = DOT_PERIOD * unit, DOT_RADIUS * unit
        ox, oy = rng.uniform(0, period, size=2)
        yy = y0 + oy
        while yy < y1:
            xx = x0 + ox
            while xx < x1:
                ld.ellipse([xx - rad, yy - rad, xx + rad, yy + rad], fill=mark)
                xx += period
            yy += period
    canvas.paste(layer, (0, 0), mask)

    if rng.random() < 0.4:  # a muted occluder over one edge of the object (never its centre)
        a = rng.uniform(0, 2 * math.pi)
        d = r * rng.uniform(1.0, 1.3)
        ox_, oy_ = cx + d * math.cos(a), cy + d * math.sin(a)
        orad = r * rng.uniform(0.35, 0.55)
        ImageDraw.Draw(canvas).ellipse([ox_ - orad, oy_ - orad, ox_ + orad, oy_ + orad], fill=_muted(rng))


def background(rng: np.random.Generator, size: int, unit: float | None = None) -> Image.Image:
    """A cluttered background: a muted base, a lighting gradient, and a few muted blobs and bars."""
    base = np.array(_muted(rng, 150, 235), dtype=np.float32)
    g = rng.uniform(-30, 30, size=2)  # light falling from one side
    ramp = (np.linspace(-0.5, 0.5, size)[None, :] * g[0] + np.linspace(-0.5, 0.5, size)[:, None] * g[1])
    arr = np.clip(base[None, None, :] + ramp[:, :, None], 0, 255).astype(np.uint8)
    im = Image.fromarray(arr, "RGB")
    d = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(2, 6))):
        x, y = rng.uniform(0, size, size=2)
        w, h = rng.uniform(0.08, 0.35, size=2) * size
        colour = _muted(rng, 110, 230)
        if rng.random() < 0.5:
            d.ellipse([x - w / 2, y - h / 2, x + w / 2, y + h / 2], fill=colour)
        else:
            d.line([(x - w, y - h), (x + w, y + h)], fill=colour, width=max(1, int(rng.uniform(0.02, 0.06) * size)))
    if rng.random() < 0.5:  # a small plain distractor in one of the world's colours, near a corner
        unit = unit or size / IMAGE_SIZE  # supersampled pixels per output pixel (of a 32-px cell in a scene)
        rad = rng.uniform(2.5, 3.8) * unit
        cx, cy = (rng.choice([0.14, 0.86], size=2) + rng.uniform(-0.05, 0.05, size=2)) * size
        fill = _jitter(COLOURS[str(rng.choice(list(COLOURS)))], rng, 14)
        poly = _shape_polygon(str(rng.choice(SHAPES)), cx, cy, rad)
        if poly is None:
            d.ellipse([cx - rad, cy - rad, cx + rad, cy + rad], fill=fill)
        else:
            d.polygon(poly, fill=fill)
    return im


def _photograph(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Camera nuisances at output resolution: brightness, colour cast, blur and sensor noise."""
    if rng.random() < 0.4:
        im = im.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 0.65))))
    arr = np.asarray(im, dtype=np.float32)
    arr = arr * rng.uniform(0.75, 1.15) + rng.uniform(-10, 10, size=3)
    arr = arr + rng.normal(0.0, rng.uniform(0.0, 5.0), size=arr.shape)
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "RGB")


def render(spec: ClassSpec, seed: int, stream: int, index: int) -> Image.Image:
    """One 32x32 RGB image of ``spec``, a pure function of its arguments."""
    rng = _rng(seed, stream, index)
    big = IMAGE_SIZE * _SUPERSAMPLE
    canvas = background(rng, big)
    draw_object(canvas, spec, rng, (0, 0, big, big))
    return _photograph(canvas.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX), rng)


def render_scene(specs: list[ClassSpec], seed: int, stream: int, index: int, grid: int = 2) -> Image.Image:
    """A multi-object scene: ``grid x grid`` cells of 32 px, objects in distinct random cells."""
    rng = _rng(seed, stream, index)
    if len(specs) > grid * grid:
        raise ValueError(f"specs: {len(specs)} objects do not fit a {grid}x{grid} scene")
    cell = IMAGE_SIZE * _SUPERSAMPLE
    canvas = background(rng, cell * grid, unit=_SUPERSAMPLE)
    cells = rng.permutation(grid * grid)[: len(specs)]
    for spec, c in zip(specs, cells):
        gx, gy = int(c) % grid, int(c) // grid
        draw_object(canvas, spec, rng, (gx * cell, gy * cell, (gx + 1) * cell, (gy + 1) * cell))
    size = IMAGE_SIZE * grid
    return _photograph(canvas.resize((size, size), Image.Resampling.BOX), rng)


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


def choose_val_classes(seed: int, unseen: list[str], n_val: int, head_fraction: float = 0.25) -> list[str]:
    """Validation classes (xlsa17's ``valclassesK``): seen classes that look like unseen ones
    (patterned, below the most common ``head_fraction``), one from each of ``n_val`` bands of the
    ranking, so that calibration can hold them out as pseudo-unseen classes."""
    ranked = class_ranking(seed)
    specs = class_by_name()
    start = int(round(head_fraction * len(ranked)))
    taken = set(unseen)
    cands = [n for n in ranked[start:] if specs[n].pattern != PATTERNS[0] and n not in taken]
    if n_val <= 0:
        return []
    if len(cands) < n_val:
        raise ValueError(f"n_val_classes: got {n_val}, but only {len(cands)} patterned seen tail classes exist")
    edges = np.linspace(0, len(cands), n_val + 1)
    rng = _rng(seed, 4, 0)
    return [cands[int(rng.integers(int(edges[i]), max(int(edges[i]) + 1, int(edges[i + 1]))))] for i in range(n_val)]
