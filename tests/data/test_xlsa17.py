"""Tests of the xlsa17 reader: real split files (when present) with faked image roots, and tiny synthetic cases.

The real ``att_splits.mat`` files come without ``res101.mat``, so per-image labels are faked: each
dataset's layout is written in tmp_path so that, in the image order the reader assumes, the unseen
classes cover exactly ``test_unseen_loc`` (this is only possible because that order fits the split;
see ``test_real_split_supports_the_assumed_image_orders``). No image file is read.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from digzsl_ray.data.xlsa17 import Xlsa17Error, clean_class_name, read_xlsa17

XLSA17 = Path(os.environ.get("DIGZSL_XLSA17_DIR") or Path(__file__).resolve().parents[3] / "shared" / "data" / "xlsa17")
needs_real = pytest.mark.skipif(not (XLSA17 / "CUB" / "att_splits.mat").is_file(),
                                reason=f"real xlsa17 split files not found at {XLSA17} (set DIGZSL_XLSA17_DIR)")

EXPECTED = {  # trainval, test_seen, test_unseen, n_seen, n_unseen
    "CUB": (7057, 1764, 2967, 150, 50),
    "AWA2": (23527, 5882, 7913, 40, 10),
    "SUN": (10320, 2580, 1440, 645, 72),
    "FLO": (5631, 1403, 1155, 82, 20),
}
LOCS = ("trainval_loc", "test_seen_loc", "test_unseen_loc")


# Helpers ------------------------------------------------------------------------------------------------
def load_real(dataset: str):
    """0-based split indices, raw class names (or None) and the unseen mask over all images."""
    mat = scipy.io.loadmat(str(XLSA17 / dataset / "att_splits.mat"))
    locs = {k: mat[k].ravel().astype(np.int64) - 1 for k in LOCS}
    raw = [str(x[0]) for x in mat["allclasses_names"].ravel()] if "allclasses_names" in mat else None
    n = max(int(v.max()) for v in locs.values()) + 1
    mask = np.zeros(n, bool)
    mask[locs["test_unseen_loc"]] = True
    return locs, raw, mask


def runs(mask: np.ndarray) -> list[tuple[bool, int, int]]:
    """[(flag, start, length)] of maximal runs of equal values."""
    edges = np.flatnonzero(np.diff(mask.astype(np.int8))) + 1
    starts = np.concatenate([[0], edges])
    ends = np.concatenate([edges, [len(mask)]])
    return [(bool(mask[s]), int(s), int(e - s)) for s, e in zip(starts, ends)]


def groups(order: list[int], unseen: set[int]) -> list[tuple[bool, list[int]]]:
    out: list[tuple[bool, list[int]]] = []
    for c in order:
        flag = c in unseen
        if out and out[-1][0] == flag:
            out[-1][1].append(c)
        else:
            out.append((flag, [c]))
    return out


def fill_runs(mask: np.ndarray, order: list[int], unseen: set[int]) -> np.ndarray:
    """A class per image: classes follow ``order`` in blocks, unseen classes cover exactly the unseen runs."""
    r, g = runs(mask), groups(order, unseen)
    assert [x[0] for x in r] == [x[0] for x in g], "class order does not fit the split"
    out = np.empty(len(mask), dtype=np.int64)
    for (_, start, length), (_, cls) in zip(r, g):
        assert length >= len(cls)
        sizes = np.full(len(cls), length // len(cls))
        sizes[: length % len(cls)] += 1
        pos = start
        for c, s in zip(cls, sizes):
            out[pos:pos + s] = c
            pos += s
    return out


def clean_set(path: Path) -> set[str]:
    return {clean_class_name(line) for line in path.read_text().splitlines() if line.strip()}


def check_common(split, dataset: str, fraction: float = 0.1) -> None:
    """Counts, seen/unseen, val carved from trainval of seen classes with the right size."""
    tv, ts, tu, n_seen, n_unseen = EXPECTED[dataset]
    assert split.name == dataset
    assert split.counts()["trainval"] == tv and split.counts()["test_seen"] == ts and split.counts()["test_unseen"] == tu
    assert (len(split.seen), len(split.unseen)) == (n_seen, n_unseen)
    assert not set(split.seen) & set(split.unseen)
    assert {it.label for it in split.items["test_unseen"]} == set(split.unseen)
    assert {it.label for it in split.items["trainval"] + split.items["test_seen"]} <= set(split.seen)
    assert all(os.path.isabs(it.path) for s in split.items.values() for it in s)
    # val: a stratified subset of trainval, only seen classes, round(fraction * n) per class
    tv_paths = {it.path for it in split.items["trainval"]}
    assert {it.path for it in split.val} <= tv_paths
    assert {it.label for it in split.val} <= set(split.seen)
    per_class: dict[int, int] = {}
    for it in split.items["trainval"]:
        per_class[it.label] = per_class.get(it.label, 0) + 1
    want = sum(max(int(round(fraction * n)), 1 if n >= 2 else 0) for n in per_class.values())
    assert len(split.val) == want
    assert abs(len(split.val) / tv - fraction) < 0.03  # per-class rounding: SUN has 16 a class -> 2
    assert len(split.train_items()) == tv - len(split.val)


# Faked image roots for the real splits -----------------------------------------------------------------
@pytest.fixture(scope="module")
def cub_root(tmp_path_factory):
    locs, raw, mask = load_real("CUB")
    test = clean_set(XLSA17 / "CUB" / "testclasses.txt")
    unseen = {i for i, r in enumerate(raw) if clean_class_name(r) in test}
    cub_id = [int(r.split(".")[0]) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: cub_id[i])  # images.txt order = CUB class id order
    lab = fill_runs(mask, order, unseen)
    root = tmp_path_factory.mktemp("cub")
    base = root / "CUB_200_2011"  # image_root *contains* CUB_200_2011/
    base.mkdir()
    lines = [f"{i + 1} {raw[c]}/{raw[c]}_{i + 1:05d}.jpg" for i, c in enumerate(lab)]
    rng = np.random.default_rng(0)
    (base / "images.txt").write_text("\n".join(lines[j] for j in rng.permutation(len(lines))) + "\n")  # reader sorts ids
    (base / "image_class_labels.txt").write_text("".join(f"{i + 1} {cub_id[c]}\n" for i, c in enumerate(lab)))
    (base / "classes.txt").write_text("".join(f"{cub_id[i]} {raw[i]}\n" for i in order))
    return root


def write_awa2_base(base: Path, raw: list[str]) -> None:
    base.mkdir(parents=True, exist_ok=True)
    (base / "classes.txt").write_text("".join(f"{i + 1}\t{r}\n" for i, r in enumerate(raw)))  # att order


@pytest.fixture(scope="module")
def awa2_labels():
    locs, raw, mask = load_real("AWA2")
    test = clean_set(XLSA17 / "AWA2" / "testclasses.txt")
    unseen = {i for i, r in enumerate(raw) if clean_class_name(r) in test}
    order = sorted(range(len(raw)), key=lambda i: raw[i])  # class folders sorted by name
    return raw, fill_runs(mask, order, unseen)


def awa2_file_names(raw: list[str], lab: np.ndarray) -> list[str]:
    count: dict[int, int] = {}
    out = []
    for c in lab:
        count[int(c)] = count.get(int(c), 0) + 1
        out.append(f"{raw[c]}_{10000 + count[int(c)]}.jpg")
    return out


@pytest.fixture(scope="module")
def awa2_dir_root(tmp_path_factory, awa2_labels):
    """The directory route: 37322 empty files under JPEGImages/<class>/."""
    raw, lab = awa2_labels
    root = tmp_path_factory.mktemp("awa2dir")
    base = root / "Animals_with_Attributes2"
    write_awa2_base(base, raw)
    for r in raw:
        (base / "JPEGImages" / r).mkdir(parents=True)
    for c, name in zip(lab, awa2_file_names(raw, lab)):
        open(base / "JPEGImages" / raw[c] / name, "wb").close()
    return root


@pytest.fixture(scope="module")
def awa2_list_root(tmp_path_factory, awa2_labels):
    """The feature-list route: AwA2-filenames.txt + AwA2-labels.txt, no image folders."""
    raw, lab = awa2_labels
    base = tmp_path_factory.mktemp("awa2list")  # image_root *is* the AwA2 folder
    write_awa2_base(base, raw)
    feat = base / "Features" / "ResNet101"
    feat.mkdir(parents=True)
    (feat / "AwA2-filenames.txt").write_text("\n".join(awa2_file_names(raw, lab)) + "\n")
    (feat / "AwA2-labels.txt").write_text("".join(f"{c + 1}\n" for c in lab))
    return base


@pytest.fixture(scope="module")
def sun_root(tmp_path_factory):
    locs, raw, mask = load_real("SUN")
    test = clean_set(XLSA17 / "SUN" / "testclasses.txt")
    unseen = {i for i, r in enumerate(raw) if clean_class_name(r) in test}
    lab = fill_runs(mask, list(range(len(raw))), unseen)  # images.mat in class-name order
    # 't/temple/south_asia/...': split a name at its first "_" to exercise multi-level class folders
    paths = [f"{raw[c][0]}/{raw[c].replace('_', '/', 1)}/sun_{i:05d}.jpg" for i, c in enumerate(lab)]
    root = tmp_path_factory.mktemp("sun")
    (root / "SUNAttributeDB").mkdir()
    scipy.io.savemat(str(root / "SUNAttributeDB" / "images.mat"),
                     {"images": np.array(paths, dtype=object).reshape(-1, 1)})
    return root


@pytest.fixture(scope="module")
def flo_root(tmp_path_factory):
    locs, raw, mask = load_real("FLO")
    n = len(mask)
    blocks = [(0, 1020), (1020, 2040), (2040, n)]  # trnid, valid, tstid
    # trnid holds 10 images per class in label order, so it gives the unseen labels; the other blocks must agree
    unseen = {pos // 10 for pos in range(1020) if mask[pos]}
    lab = np.concatenate([fill_runs(mask[a:b], list(range(102)), unseen) for a, b in blocks])
    rng = np.random.default_rng(1)
    ids = rng.permutation(n) + 1  # image number of each position (the reader sorts by label, then number)
    labels = np.zeros(n, np.int64)
    labels[ids - 1] = lab + 1
    root = tmp_path_factory.mktemp("flo")
    scipy.io.savemat(str(root / "imagelabels.mat"), {"labels": labels.reshape(1, -1)})
    sets = {key: rng.permutation(ids[a:b]).reshape(1, -1) for key, (a, b) in zip(("trnid", "valid", "tstid"), blocks)}
    scipy.io.savemat(str(root / "setid.mat"), sets)
    return root


# Real split files ------------------------------------------------------------------------------------
@needs_real
def test_real_split_supports_the_assumed_image_orders():
    """The unseen runs of test_unseen_loc line up with whole classes only in the assumed image orders."""
    # CUB: class id order (images.txt); att order does not fit
    _, raw, mask = load_real("CUB")
    test = clean_set(XLSA17 / "CUB" / "testclasses.txt")
    unseen = {i for i, r in enumerate(raw) if clean_class_name(r) in test}
    by_id = sorted(range(len(raw)), key=lambda i: int(raw[i].split(".")[0]))
    assert len(groups(by_id, unseen)) == len(runs(mask)) == 82
    # AWA2: folder names sorted fit (17 runs), classes.txt (= att) order does not
    _, raw, mask = load_real("AWA2")
    test = clean_set(XLSA17 / "AWA2" / "testclasses.txt")
    unseen = {i for i, r in enumerate(raw) if clean_class_name(r) in test}
    assert len(runs(mask)) == 17
    assert len(groups(sorted(range(50), key=lambda i: raw[i]), unseen)) == 17
    assert len(groups(list(range(50)), unseen)) != 17
    # SUN: 20 images per class in att order, exactly
    _, raw, mask = load_real("SUN")
    test = clean_set(XLSA17 / "SUN" / "testclasses.txt")
    unseen = [i for i, r in enumerate(raw) if clean_class_name(r) in test]
    assert np.array_equal(mask, np.isin(np.repeat(np.arange(717), 20), unseen))
    # FLO: three blocks (trnid 1020, valid 1020, tstid 6149) with the same class pattern
    _, _, mask = load_real("FLO")
    shapes = [[(f, length) for f, _, length in runs(mask[a:b])] for a, b in ((0, 1020), (1020, 2040), (2040, 8189))]
    assert shapes[0] == shapes[1] == [(True, 160), (False, 10), (True, 40), (False, 810)]
    assert [f for f, _ in shapes[2]] == [True, False, True, False]


@needs_real
def test_cub(cub_root):
    split = read_xlsa17(XLSA17 / "CUB", cub_root, "cub", val_fraction=0.1, seed=0)
    check_common(split, "CUB")
    _, raw, _ = load_real("CUB")
    assert split.classes == [clean_class_name(r) for r in raw]  # att order defines the indices
    assert "black footed albatross" in split.classes
    assert set(split.unseen_names) == clean_set(XLSA17 / "CUB" / "testclasses.txt")
    # every item's class folder (from images.txt) names its label
    for it in split.items["trainval"][:200] + split.items["test_unseen"][:200]:
        assert clean_class_name(Path(it.path).parent.name) == split.classes[it.label]
        assert it.path.startswith(str(cub_root / "CUB_200_2011" / "images"))
    assert split.val_classes and set(split.val_classes) <= set(split.seen)
    assert {split.classes[c] for c in split.val_classes} == clean_set(XLSA17 / "CUB" / "valclasses1.txt")
    again = read_xlsa17(XLSA17 / "CUB", cub_root, "CUB", val_fraction=0.1, seed=0, val_split=2)
    assert [it.path for it in again.val] == [it.path for it in split.val]  # same seed, same val
    assert {again.classes[c] for c in again.val_classes} == clean_set(XLSA17 / "CUB" / "valclasses2.txt")


@needs_real
def test_awa2_directory_and_feature_list_routes(awa2_dir_root, awa2_list_root):
    a = read_xlsa17(XLSA17 / "AWA2", awa2_dir_root, "AWA2", val_fraction=0.2, seed=3)
    b = read_xlsa17(XLSA17 / "AWA2", awa2_list_root, "awa2", val_fraction=0.2, seed=3)
    for split in (a, b):
        check_common(split, "AWA2", fraction=0.2)
        assert "grizzly bear" in split.classes and "killer whale" in split.classes
        assert set(split.unseen_names) == clean_set(XLSA17 / "AWA2" / "testclasses.txt")
        assert split.val_classes and set(split.val_classes) <= set(split.seen)
    for s in ("trainval", "test_seen", "test_unseen"):
        assert [it.labels for it in a.items[s]] == [it.labels for it in b.items[s]]
        assert [Path(it.path).relative_to(awa2_dir_root / "Animals_with_Attributes2") for it in a.items[s]] == \
               [Path(it.path).relative_to(awa2_list_root) for it in b.items[s]]
    it = a.items["test_unseen"][0]
    assert clean_class_name(Path(it.path).parent.name) == a.classes[it.label]


@needs_real
def test_sun(sun_root):
    split = read_xlsa17(XLSA17 / "SUN", sun_root, "SUN")
    check_common(split, "SUN")
    assert "temple south asia" in split.unseen_names
    assert set(split.unseen_names) == clean_set(XLSA17 / "SUN" / "testclasses.txt")
    assert split.val_classes and set(split.val_classes) <= set(split.seen)
    assert all(it.path.startswith(str(sun_root / "images")) for it in split.items["test_seen"])


@needs_real
def test_flo_generated_names_and_override(flo_root, tmp_path):
    with pytest.warns(UserWarning, match="names are generated.*class_names_file"):
        split = read_xlsa17(XLSA17 / "FLO", flo_root, "flo")
    check_common(split, "FLO")
    assert split.classes[0] == "flower class 001" and split.classes[-1] == "flower class 102"
    assert len(split.classes) == 102
    # derived from the labels (no class list ships with FLO): labels 1-16 and 18-21 are unseen
    assert split.unseen == list(range(16)) + list(range(17, 21))
    assert split.val_classes == []
    assert all(Path(it.path).parent == flo_root / "jpg" for it in split.items["trainval"][:50])
    # class_names_file overrides the names, with no warning
    names = tmp_path / "flowers.txt"
    names.write_text("".join(f"Flower_{i:03d}\n" for i in range(102)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        named = read_xlsa17(XLSA17 / "FLO", flo_root, "FLO", class_names_file=names)
    assert named.classes == [f"flower {i:03d}" for i in range(102)]
    assert named.unseen == split.unseen
    names.write_text("a\nb\nc\n")
    with pytest.raises(Xlsa17Error, match=r"has 3 names, expected 102"):
        read_xlsa17(XLSA17 / "FLO", flo_root, "FLO", class_names_file=names)


@needs_real
def test_class_names_file_overrides_cub(cub_root, tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("".join(f"bird {i}\n" for i in range(200)))
    split = read_xlsa17(XLSA17 / "CUB", cub_root, "CUB", class_names_file=names)
    assert split.classes[:2] == ["bird 0", "bird 1"]
    assert len(split.unseen) == 50  # mapping still uses the att names


# Tiny synthetic cases (always run) ----------------------------------------------------------------------
def write_att(d: Path, trainval, test_seen, test_unseen, names=None, n_att=None) -> Path:
    """att_splits.mat with 1-based indices (as xlsa17 stores them)."""
    d.mkdir(parents=True, exist_ok=True)
    mat = {k: np.asarray(v, dtype=np.uint16).reshape(-1, 1) for k, v in zip(LOCS, (trainval, test_seen, test_unseen))}
    if names is not None:
        mat["allclasses_names"] = np.array(names, dtype=object).reshape(-1, 1)
    if n_att is not None:
        mat["att"] = np.ones((4, n_att))
    scipy.io.savemat(str(d / "att_splits.mat"), mat)
    return d


def tiny_cub(root: Path, with_labels: bool = True) -> Path:
    """6 images: 2 of each class; classes.txt ids differ from the att order on purpose."""
    base = root / "CUB_200_2011"
    base.mkdir(parents=True)
    (base / "classes.txt").write_text("1 001.Black_footed_Albatross\n2 002.Laysan_Albatross\n3 003.Sooty_Albatross\n")
    (base / "images.txt").write_text("".join(f"{i} 00{(i + 1) // 2}.x/img{i}.jpg\n" for i in range(1, 7)))
    if with_labels:
        (base / "image_class_labels.txt").write_text("".join(f"{i} {(i + 1) // 2}\n" for i in range(1, 7)))
    return root


CUB_NAMES = ["003.Sooty_Albatross", "001.Black_footed_Albatross", "002.Laysan_Albatross"]  # att order


def test_clean_class_name():
    assert clean_class_name("001.Black_footed_Albatross") == "black footed albatross"
    assert clean_class_name("grizzly+bear") == "grizzly bear"
    assert clean_class_name("temple_south_asia") == "temple south asia"
    assert clean_class_name("  Chuck_will__Widow ") == "chuck will widow"


def test_bad_dataset_name(tmp_path):
    with pytest.raises(ValueError, match=r"dataset: got 'MNIST', expected one of CUB, AWA2, SUN, FLO"):
        read_xlsa17(tmp_path, tmp_path, "MNIST")


def test_tiny_cub_maps_class_ids_by_name(tmp_path):
    splits = write_att(tmp_path / "s", [1, 3], [2, 4], [5, 6], names=CUB_NAMES)
    split = read_xlsa17(splits, tiny_cub(tmp_path / "img"), "CUB", val_fraction=0.0)
    assert split.classes == ["sooty albatross", "black footed albatross", "laysan albatross"]
    assert split.unseen == [0] and split.seen == [1, 2]  # CUB class 3 = att index 0
    assert [it.label for it in split.items["trainval"]] == [1, 2]
    assert split.items["test_unseen"][0].path == str(tmp_path / "img" / "CUB_200_2011" / "images" / "003.x" / "img5.jpg")
    assert split.val == [] and split.val_classes == []


def test_missing_layout_file(tmp_path):
    splits = write_att(tmp_path / "s", [1, 3], [2, 4], [5, 6], names=CUB_NAMES)
    with pytest.raises(Xlsa17Error, match=r"image_class_labels\.txt: not found; the CUB_200_2011 layout needs it"):
        read_xlsa17(splits, tiny_cub(tmp_path / "img", with_labels=False), "CUB")


def test_missing_att_splits(tmp_path):
    with pytest.raises(Xlsa17Error, match=r"att_splits\.mat: not found"):
        read_xlsa17(tmp_path, tmp_path, "SUN")


def test_index_out_of_range(tmp_path):
    splits = write_att(tmp_path / "s", [1, 3], [2, 4], [5, 7], names=CUB_NAMES)
    with pytest.raises(Xlsa17Error, match=r"test_unseen_loc has index 7 \(1-based\), out of range: .* has 6 images"):
        read_xlsa17(splits, tiny_cub(tmp_path / "img"), "CUB")


def test_overlapping_index_sets(tmp_path):
    splits = write_att(tmp_path / "s", [1, 3, 4], [2, 4], [5, 6], names=CUB_NAMES)
    with pytest.raises(Xlsa17Error, match=r"trainval_loc and test_seen_loc share 1 indices .*must be disjoint"):
        read_xlsa17(splits, tiny_cub(tmp_path / "img"), "CUB")


def test_testclasses_cross_check(tmp_path):
    splits = write_att(tmp_path / "s", [1, 3], [2, 4], [5, 6], names=CUB_NAMES)
    (splits / "testclasses.txt").write_text("002.Laysan_Albatross\n")
    with pytest.raises(Xlsa17Error, match=r"testclasses\.txt: lists 1 classes.*not listed: \['sooty albatross'\]"):
        read_xlsa17(splits, tiny_cub(tmp_path / "img"), "CUB")
    (splits / "testclasses.txt").write_text("003.Sooty_Albatross\n")
    (splits / "valclasses1.txt").write_text("001.Black_footed_Albatross\n")
    split = read_xlsa17(splits, tmp_path / "img", "CUB")
    assert split.val_classes == [1]
    with pytest.raises(Xlsa17Error, match=r"val_split: got 2, .*valclasses2\.txt does not exist"):
        read_xlsa17(splits, tmp_path / "img", "CUB", val_split=2)


def tiny_awa2(root: Path) -> Path:
    """classes.txt order zebra, ant+eater, bat; folders sorted: ant+eater, bat, zebra (2 images each)."""
    write_awa2_base(root, ["zebra", "ant+eater", "bat"])
    for name in ("zebra", "ant+eater", "bat"):
        (root / "JPEGImages" / name).mkdir(parents=True)
        for j in (2, 1):
            open(root / "JPEGImages" / name / f"{name}_1000{j}.jpg", "wb").close()
    (root / "JPEGImages" / "bat" / ".DS_Store").write_text("")  # not an image
    return root


def test_tiny_awa2_uses_sorted_folders(tmp_path):
    # image order: ant+eater 1-2, bat 3-4, zebra 5-6; bat unseen
    splits = write_att(tmp_path / "s", [1, 5], [2, 6], [3, 4], names=["zebra", "ant+eater", "bat"])
    split = read_xlsa17(splits, tiny_awa2(tmp_path / "img"), "AWA2", val_fraction=0.0)
    assert split.classes == ["zebra", "ant eater", "bat"] and split.unseen == [2] and split.seen == [0, 1]
    assert [Path(it.path).name for it in split.items["test_unseen"]] == ["bat_10001.jpg", "bat_10002.jpg"]
    assert [Path(it.path).name for it in split.items["trainval"]] == ["ant+eater_10001.jpg", "zebra_10001.jpg"]


def test_order_mismatch_is_refused(tmp_path):
    splits = write_att(tmp_path / "s", [2, 5], [4, 6], [1, 3], names=["zebra", "ant+eater", "bat"])
    with pytest.raises(Xlsa17Error, match=r"classes have images both in test_unseen_loc and in trainval_loc"):
        read_xlsa17(splits, tiny_awa2(tmp_path / "img"), "AWA2")


def test_tiny_sun_joins_class_folders(tmp_path):
    splits = write_att(tmp_path / "s", [1], [2], [3, 4], names=["abbey", "temple_south_asia"])
    root = tmp_path / "img"
    (root / "SUNAttributeDB").mkdir(parents=True)
    paths = ["a/abbey/sun_a.jpg", "a/abbey/sun_b.jpg", "t/temple/south_asia/sun_c.jpg", "t/temple/south_asia/sun_d.jpg"]
    scipy.io.savemat(str(root / "SUNAttributeDB" / "images.mat"), {"images": np.array(paths, dtype=object).reshape(-1, 1)})
    split = read_xlsa17(splits, root, "sun", val_fraction=0.0)
    assert split.unseen_names == ["temple south asia"]
    assert split.items["test_unseen"][0].path == str(root / "images" / "t" / "temple" / "south_asia" / "sun_c.jpg")


def test_tiny_flo_needs_setid_and_warns(tmp_path):
    splits = write_att(tmp_path / "s", [1], [2], [3], n_att=3)
    root = tmp_path / "img"
    root.mkdir()
    scipy.io.savemat(str(root / "imagelabels.mat"), {"labels": np.array([[3, 1, 2]])})  # image 1 has label 3, ...
    with pytest.warns(UserWarning, match="generated"), \
            pytest.raises(Xlsa17Error, match=r"setid\.mat: not found; the Oxford Flowers 102 layout"):
        read_xlsa17(splits, root, "FLO")
    scipy.io.savemat(str(root / "setid.mat"), {"trnid": np.array([[3, 2]]), "valid": np.array([[1]]),
                                                "tstid": np.zeros((1, 0))})
    with pytest.warns(UserWarning, match="flower class 001"):
        split = read_xlsa17(splits, root, "FLO", val_fraction=0.0)
    # order: trnid sorted by label -> image 2 (label 1), image 3 (label 2); then valid -> image 1 (label 3)
    assert [Path(it.path).name for s in ("trainval", "test_seen", "test_unseen") for it in split.items[s]] == \
           ["image_00002.jpg", "image_00003.jpg", "image_00001.jpg"]
    assert split.seen == [0, 1] and split.unseen == [2]


def test_res101_paths_are_remapped(tmp_path):
    splits = write_att(tmp_path / "s", [1], [2], [3], names=CUB_NAMES)
    files = [f"/BS/xian/data/CUB_200_2011/CUB_200_2011/images/00{c}.x/img{i}.jpg" for i, c in ((1, 2), (2, 2), (3, 3))]
    scipy.io.savemat(str(splits / "res101.mat"), {
        "image_files": np.array(files, dtype=object).reshape(-1, 1),
        "labels": np.array([[3], [3], [1]]),  # 1-based att indices
        "features": np.zeros((4, 3)),
    })
    root = tmp_path / "img"
    (root / "CUB_200_2011" / "images").mkdir(parents=True)
    split = read_xlsa17(splits, root, "CUB", val_fraction=0.0)
    assert split.items["test_unseen"][0].path == str(root / "CUB_200_2011" / "images" / "003.x" / "img3.jpg")
    assert split.seen == [2] and split.unseen == [0]
