"""The project dataset format and the validation that runs before any model work."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from digzsl_ray.data.format import DatasetFormatError, read_dataset, write_dataset
from digzsl_ray.data.split import Item, ZSLSplit
from digzsl_ray.data.validate import DatasetError, check_class_names, validate_split

CLASSES = ["red circle", "blue square", "green star", "pink heart"]


def _png(path: Path, value: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)


def make_dataset(root: Path, per_class: int = 5, unseen=("green star", "pink heart")) -> Path:
    rows = {"trainval": [], "test_seen": [], "test_unseen": []}
    for c in CLASSES:
        splits = ["test_unseen"] if c in unseen else ["trainval", "test_seen"]
        for s in splits:
            for j in range(per_class):
                rel = f"images/{s}/{c.replace(' ', '_')}_{j}.png"
                _png(root / rel, 10 * j)
                rows[s].append((rel, [c]))
    write_dataset(root, "toy", CLASSES, list(unseen), rows)
    return root


def test_roundtrip_counts_and_val(tmp_path):
    split = read_dataset(make_dataset(tmp_path), val_fraction=0.2, seed=0)
    assert split.seen_names == ["red circle", "blue square"]
    assert split.unseen_names == ["green star", "pink heart"]
    assert split.counts() == {"trainval": 10, "test_seen": 10, "test_unseen": 10, "val": 2}
    assert {it.label for it in split.val} == {0, 1}  # one per seen class, stratified
    assert len(split.train_items()) == 8
    assert all(Path(it.path).is_absolute() for it in split.items["trainval"])
    validate_split(split, progress=False)


def test_val_is_deterministic(tmp_path):
    root = make_dataset(tmp_path)
    a = read_dataset(root, 0.4, seed=3).val
    b = read_dataset(root, 0.4, seed=3).val
    assert a == b


def test_format_errors_name_file_and_line(tmp_path):
    root = make_dataset(tmp_path)
    csv = root / "splits" / "test_seen.csv"
    csv.write_text(csv.read_text() + "images/x.png,purple moon\n")
    with pytest.raises(DatasetFormatError, match=r"test_seen.csv:12: unknown class 'purple moon'"):
        read_dataset(root)
    (root / "dataset.json").write_text("{")
    with pytest.raises(DatasetFormatError, match="dataset.json: not valid JSON"):
        read_dataset(root)
    with pytest.raises(DatasetFormatError, match="not found"):
        read_dataset(tmp_path / "nothing")


def test_missing_and_corrupt_images_listed_with_total(tmp_path):
    root = make_dataset(tmp_path, per_class=8)
    split = read_dataset(root)
    paths = sorted({it.path for s in split.items.values() for it in s})
    for p in paths[:7]:
        Path(p).unlink()
    for p in paths[7:13]:
        Path(p).write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 3)
    with pytest.raises(DatasetError) as e:
        validate_split(split, progress=False)
    msg = str(e.value)
    assert msg.startswith(f"13 of {len(paths)} image file(s) are missing or corrupt")
    assert msg.count(": missing") + msg.count(": unreadable") == 10  # the first 10 listed
    assert "... and 3 more" in msg


def _split(classes, seen, unseen, items):
    return ZSLSplit("t", classes, seen, unseen, items)


def _items(spec):
    return {k: [Item(f"/x/{k}/{i}.png", (lab,)) for i, lab in enumerate(v)] for k, v in spec.items()}


def test_duplicate_class_names():
    with pytest.raises(DatasetError, match=r"duplicate class names \(1\): 'cat'"):
        check_class_names(["cat", "dog", "cat"])


@pytest.mark.parametrize("bad, why", [("../x", "path separator"), ("a/b", "path separator"), ("", "empty")])
def test_names_that_would_escape_their_directory(bad, why):
    with pytest.raises(DatasetError, match=f"cannot be used as file names: '{bad}'.*{why}"):
        check_class_names(["cat", bad])


def test_colliding_slugs():
    with pytest.raises(DatasetError, match="same file name: 'Red Fox' / 'red-fox'"):
        check_class_names(["Red Fox", "red-fox"])


def test_class_both_seen_and_unseen():
    s = _split(["a", "b", "c"], [0, 1], [1, 2], _items({"trainval": [0], "test_seen": [0], "test_unseen": [2]}))
    with pytest.raises(DatasetError, match="1 class\\(es\\) are both seen and unseen: 'b'"):
        validate_split(s, images=False)


def test_unseen_class_without_test_images():
    s = _split(["a", "b", "c"], [0], [1, 2], _items({"trainval": [0], "test_seen": [0], "test_unseen": [1]}))
    with pytest.raises(DatasetError, match="1 unseen class\\(es\\) have no test images: 'c'"):
        validate_split(s, images=False)


@pytest.mark.parametrize("empty", ["trainval", "test_seen", "test_unseen"])
def test_empty_split(empty):
    spec = {"trainval": [0], "test_seen": [0], "test_unseen": [1]}
    spec[empty] = []
    s = _split(["a", "b"], [0], [1], _items(spec))
    with pytest.raises(DatasetError, match=f"split '{empty}' is empty"):
        validate_split(s, images=False)


def test_trainval_with_unseen_labels():
    s = _split(["a", "b"], [0], [1], _items({"trainval": [0, 1], "test_seen": [0], "test_unseen": [1]}))
    with pytest.raises(DatasetError, match="trainval image\\(s\\) are labelled with unseen classes"):
        validate_split(s, images=False)
