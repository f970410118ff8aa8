"""MiniWorld rendering: structure of the world, determinism, and the written formats."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from digzsl_ray.cli.main import main
from digzsl_ray.data.captioned import read_captioned_folder
from digzsl_ray.data.format import read_dataset
from digzsl_ray.data.validate import validate_split
from digzsl_ray.miniworld import world
from digzsl_ray.miniworld.make import WorldParams

SMALL = ["--corpus-size", "300", "--quiet"]


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    out = tmp_path_factory.mktemp("w") / "A"
    assert main(["miniworld", "make", "--out", str(out), "--seed", "0", *SMALL]) == 0
    return out


def test_same_seed_same_bytes_other_seed_other_images(small_world, tmp_path):
    b, c = tmp_path / "B", tmp_path / "C"
    assert main(["miniworld", "make", "--out", str(b), "--seed", "0", *SMALL]) == 0
    assert main(["miniworld", "make", "--out", str(c), "--seed", "1", *SMALL]) == 0
    ta, tb, tc = _tree(small_world), _tree(b), _tree(c)
    assert ta == tb
    common = [k for k in ta if k.endswith(".png") and k in tc]
    assert common and sum(ta[k] != tc[k] for k in common) > 0.9 * len(common)


def test_world_structure():
    classes = world.all_classes()
    assert len(classes) >= 48 and len({c.name for c in classes}) == len(classes)
    # classes differ in a fine attribute: every colour x shape comes in all patterns
    assert Counter((c.colour, c.shape) for c in classes) == {k: len(world.PATTERNS) for k in
                                                              Counter((c.colour, c.shape) for c in classes)}
    freqs = world.class_frequencies(0, 30000)
    counts = sorted(freqs.values())
    assert counts[0] * 30 < counts[-1]  # long tail
    # rarity balanced across colours: each colour has the same number of classes in every rank band
    order = world.class_ranking(0)
    assert [freqs[n] for n in order] == sorted(freqs.values(), reverse=True)
    spec = world.class_by_name()
    for band in range(0, len(order), len(world.COLOURS)):
        assert {spec[n].colour for n in order[band : band + len(world.COLOURS)]} == set(world.COLOURS)


def test_rarest_classes_have_few_fully_captioned_images():
    p = WorldParams()
    freqs = world.class_frequencies(p.seed, p.corpus_size, p.head, p.tail)
    rarest = min(freqs.values())
    assert rarest * p.fine_caption_rate < 36  # "a few dozen fully captioned images or fewer"


def test_unseen_classes_span_the_tail_and_share_attributes():
    p = WorldParams()
    unseen = world.choose_unseen(p.seed, p.n_unseen)
    assert len(unseen) == len(set(unseen)) == p.n_unseen >= 8
    order = world.class_ranking(p.seed)
    ranks = sorted(order.index(u) for u in unseen)
    # from the start of the tail (below the most common quarter) to its very end
    assert len(order) // 4 <= ranks[0] < len(order) // 2 and ranks[-1] >= len(order) - 4
    spec = world.class_by_name()
    assert all(spec[u].pattern != "plain" for u in unseen)  # unseen classes are the fine-grained ones
    freqs = world.class_frequencies(p.seed, p.corpus_size, p.head, p.tail)
    spec = world.class_by_name()
    seen = [spec[n] for n in freqs if n not in unseen]
    for u in unseen:
        for a in world.ATTRIBUTES:
            assert any(getattr(s, a) == getattr(spec[u], a) for s in seen)


def test_captions_name_the_pattern_only_sometimes():
    rng = np.random.default_rng(0)
    spec = world.all_classes()[4]
    caps = [world.caption_for(spec, rng, 0.3) for _ in range(2000)]
    named = np.mean([spec.pattern in c for c in caps])
    assert 0.25 < named < 0.35  # the rate asked for
    assert all(spec.colour in c and spec.shape in c for c in caps)


def test_written_formats_load_and_validate(small_world):
    corpus = read_captioned_folder(small_world / "corpus")
    assert len(corpus) == 300
    split = read_dataset(small_world / "zsl")
    validate_split(split, progress=False)
    assert len(split.classes) == 72 and len(split.unseen) == 18
    meta = json.loads((small_world / "world.json").read_text())
    assert meta["counts"]["zsl"] == {k: len(v) for k, v in split.items.items()}
    ml = read_dataset(small_world / "zsl_multilabel")
    assert ml.multi_label and all(2 <= len(it.labels) <= 3 for it in ml.items["trainval"])
    assert all(set(it.labels) <= set(ml.seen) for it in ml.items["trainval"])
    assert all(set(it.labels) & set(ml.unseen) for it in ml.items["test_unseen"])
    # GZSL: seen-only test scenes beside the ZSL test scenes; validation scenes carved from trainval
    assert len(ml.items["test_seen"]) == 150 and all(set(it.labels) <= set(ml.seen) for it in ml.items["test_seen"])
    assert ml.val and {it.path for it in ml.val} <= {it.path for it in ml.items["trainval"]}
    validate_split(ml, progress=False)
    # benchmark images are disjoint from the corpus
    bench = {p.read_bytes() for p in (small_world / "zsl" / "images").rglob("*.png")}
    assert not bench & {p.read_bytes() for p in (small_world / "corpus" / "images").glob("*.png")}
    assert (small_world / "contact_sheet.png").stat().st_size > 1000


def test_class_names_are_partly_opaque_and_spread_over_the_tail():
    classes = world.all_classes()
    names = [c.name for c in classes]
    assert len(set(names)) == len(names)
    kinds = Counter(c.name_kind for c in classes)
    assert kinds == {"descriptive": 24, "partial": 24, "opaque": 24}
    for c in classes:
        if c.name_kind == "descriptive":
            assert c.name == c.description == f"{c.pattern} {c.colour} {c.shape}"
        elif c.name_kind == "partial":  # "red tovik": the colour and an invented word
            assert c.name.split()[0] == c.colour and c.pattern not in c.name and c.shape not in c.name
        else:
            assert " " not in c.name and not {c.pattern, c.colour, c.shape} & set(c.name.split())
    # two names of each kind in every band of six consecutive ranks of the default world
    order = world.class_ranking(0)
    spec = world.class_by_name()
    for band in range(0, len(order), 6):
        assert Counter(spec[n].name_kind for n in order[band : band + 6]) == {k: 2 for k in world.NAME_KINDS}


def test_a_non_descriptive_name_is_used_at_its_rate_and_descriptions_otherwise():
    spec = next(c for c in world.all_classes() if c.name_kind == "opaque")
    rng = np.random.default_rng(0)
    caps = [world.caption_for(spec, rng, 0.25, 0.1) for _ in range(4000)]
    named = np.mean([spec.name in c for c in caps])
    assert 0.08 < named < 0.12
    described = [c for c in caps if spec.name not in c]
    assert all(spec.colour in c and spec.shape in c for c in described)
    assert 0.2 < np.mean([spec.pattern in c for c in described]) < 0.3


def test_validation_classes_are_seen_patterned_and_listed(small_world):
    split = read_dataset(small_world / "zsl")
    p = WorldParams()
    assert len(split.val_classes) == p.n_val_classes
    assert set(split.val_classes) <= set(split.seen)
    spec = world.class_by_name()
    assert all(spec[split.classes[v]].pattern != "plain" for v in split.val_classes)


def test_every_image_carries_nuisances_but_stays_in_its_class():
    # the same class renders differently in position, scale, background and lighting
    spec = world.all_classes()[10]
    ims = np.stack([np.asarray(world.render(spec, 0, 5, i), dtype=np.float32) for i in range(40)])
    assert ims.std(axis=0).mean() > 20  # pixelwise spread over renders of one class
    assert ims.reshape(40, -1).mean(1).std() > 5  # brightness varies
    # rotation stays far from 45 degrees: a square never becomes a diamond
    assert world.MAX_ROTATION <= 15


def test_multilabel_world_is_a_data_format_that_single_label_methods_refuse(small_world, tmp_path):
    from digzsl_ray.config import ConfigError
    from digzsl_ray.data import load_split
    from digzsl_ray.methods import get_method, load_run_config
    from digzsl_ray.stages.rundir import prepare

    cfg = load_run_config(None, ["data.format=miniworld-multilabel", f"data.root={small_world}"])
    split = load_split(cfg.data, progress=False)  # already rendered: read, not re-rendered
    assert split.multi_label and split.name == "miniworld-multilabel" and len(split.classes) == 72
    with pytest.raises(ConfigError, match="which method 'digzsl' does not take"):
        prepare(cfg, tmp_path / "run", progress=False, method=get_method("digzsl"))
