"""``data.format: imagefolder``: one folder of images per class (torchvision ImageFolder / Hugging Face
imagefolder), unseen classes named in the config, test images from a parallel tree or held out."""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import pytest
from PIL import Image

from digzsl_ray.data import load_split
from digzsl_ray.data.imagefolder import ImageFolderError, read_imagefolder
from digzsl_ray.errors import UserError
from digzsl_ray.methods import load_run_config

CLASSES = {"001.Red_Fox": 10, "002.Grey_Wolf": 5, "003.Snow_Leopard": 4}


def make_tree(root: Path, counts: dict[str, int], shade: int = 0) -> Path:
    """``root/<folder>/<i>.png`` with ``counts[folder]`` distinct tiny images each."""
    for k, (folder, n) in enumerate(counts.items()):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", (8, 8), (k * 60, i * 10, shade)).save(root / folder / f"{i:03d}.png")
    return root


def cfg(root: Path, *sets: str):
    return load_run_config(None, ["data.format=imagefolder", f"data.root={root}", *sets]).data


def paths(items) -> set[str]:
    return {it.path for it in items}


def test_names_and_held_out_split(tmp_path):
    root = make_tree(tmp_path / "birds", CLASSES)
    split = load_split(cfg(root, "data.unseen_classes=[snow leopard]"), progress=False)
    assert split.name == "birds"
    assert split.classes == ["red fox", "grey wolf", "snow leopard"]  # sorted folders, cleaned like xlsa17
    assert (split.seen, split.unseen) == ([0, 1], [2])
    # test_fraction 0.2: red fox round(2.0) = 2 of 10, grey wolf round(1.0) = 1 of 5; unseen: all 4
    assert split.counts() == {"trainval": 12, "test_seen": 3, "test_unseen": 4, "val": 2}
    per = {s: sorted(it.label for it in split.items[s]) for s in split.items}
    assert per["test_seen"] == [0, 0, 1] and per["test_unseen"] == [2] * 4
    unseen_files = {str(p) for p in (root / "003.Snow_Leopard").iterdir()}
    assert paths(split.items["test_unseen"]) == unseen_files
    assert not unseen_files & paths(split.items["trainval"])  # never a training image
    assert not paths(split.items["trainval"]) & paths(split.items["test_seen"])
    assert paths(split.val) <= paths(split.items["trainval"])
    every = set().union(*(paths(v) for v in split.items.values()))
    assert len(every) == sum(CLASSES.values())


def test_held_out_draw_is_seeded_and_per_class(tmp_path):
    root = make_tree(tmp_path / "d", CLASSES)

    def held(seed: int, r: Path = root) -> dict[int, set[str]]:
        s = read_imagefolder(r, ["snow leopard"], test_fraction=0.3, test_seed=seed)
        return {c: {Path(it.path).name for it in s.items["test_seen"] if it.label == c} for c in s.seen}

    first = held(0)
    assert first == held(0)
    assert [len(v) for v in first.values()] == [3, 2]  # round(0.3 * 10), round(0.3 * 5)
    assert any(held(seed) != first for seed in range(1, 6))
    # a new class changes no other class's draw (the generator is keyed by the class folder)
    bigger = make_tree(tmp_path / "d2", {**CLASSES, "000.Arctic_Hare": 6})
    again = held(0, bigger)
    assert again[1] == first[0] and again[2] == first[1]


def test_parallel_test_tree(tmp_path):
    train = make_tree(tmp_path / "ds" / "train", CLASSES)
    test = make_tree(tmp_path / "ds" / "test", {"001.Red_Fox": 3, "002.Grey_Wolf": 2, "003.Snow_Leopard": 2}, shade=99)
    split = load_split(cfg(train, f"data.test_root={test}", "data.unseen_classes=['003.Snow_Leopard']",
                           "data.val_fraction=0"), progress=False)
    assert split.name == "ds"  # a root called train is named after its parent
    assert split.counts() == {"trainval": 15, "test_seen": 5, "test_unseen": 6, "val": 0}
    assert all(p.startswith(str(test)) for p in paths(split.items["test_seen"]))
    assert paths(split.items["test_unseen"]) == ({str(p) for p in (train / "003.Snow_Leopard").iterdir()}
                                                 | {str(p) for p in (test / "003.Snow_Leopard").iterdir()})
    assert split.notes["test_images"] == f"data.test_root {test}"


def test_skipped_files_hidden_folders_nested_images_and_links_inside(tmp_path):
    root = make_tree(tmp_path / "d", CLASSES)
    (root / "README.txt").write_text("about")  # beside the class folders
    (root / "001.Red_Fox" / "labels.csv").write_text("x")
    (root / ".ipynb_checkpoints").mkdir()  # not a class
    (root / "002.Grey_Wolf" / ".DS_Store").write_bytes(b"\0")
    (root / "002.Grey_Wolf" / "more").mkdir()
    Image.new("RGB", (8, 8)).save(root / "002.Grey_Wolf" / "more" / "deep.JPG")  # any depth, any case
    os.symlink(root / "002.Grey_Wolf" / "more", root / "002.Grey_Wolf" / "loop")  # a link back inside: walked once
    split = read_imagefolder(root, ["003.Snow_Leopard"], val_fraction=0)
    assert split.classes == ["red fox", "grey wolf", "snow leopard"]
    assert sum(1 for s in split.items.values() for it in s if it.label == 1) == 6
    assert split.notes["ignored_files"] == 2
    assert sorted(Path(p).name for p in split.notes["ignored_examples"]) == ["README.txt", "labels.csv"]


def test_unseen_classes_file_and_class_names_file(tmp_path):
    root = make_tree(tmp_path / "d", {"n01": 3, "n02": 3, "n03": 3})
    (tmp_path / "unseen.json").write_text(json.dumps(["Snow Leopard"]))
    (tmp_path / "names.txt").write_text("Red Fox\nGrey Wolf\nSnow Leopard\n")
    split = load_split(cfg(root, f"data.unseen_classes_file={tmp_path / 'unseen.json'}",
                           f"data.class_names_file={tmp_path / 'names.txt'}"), progress=False)
    assert split.classes == ["red fox", "grey wolf", "snow leopard"] and split.unseen == [2]
    (tmp_path / "unseen.txt").write_text("n01\n\nn02\n")  # folder names work as well
    split = load_split(cfg(root, f"data.unseen_classes_file={tmp_path / 'unseen.txt'}"), progress=False)
    assert split.classes == ["n01", "n02", "n03"] and split.unseen == [0, 1]


def test_corrupt_image_is_listed_by_the_image_check(tmp_path):
    root = make_tree(tmp_path / "d", CLASSES)
    bad = root / "002.Grey_Wolf" / "broken.png"
    bad.write_bytes(b"\x89PNG..")
    with pytest.raises(UserError, match="1 of 20 image file") as e:
        load_split(cfg(root, "data.unseen_classes=[snow leopard]"), progress=False)
    assert str(bad) in str(e.value)


def _error(tmp_path: Path, case: str) -> tuple[list[str], str]:
    """Build the broken tree of ``case``; the overrides to load it and a text the error must name."""
    root = make_tree(tmp_path / "d", CLASSES)
    sets = ["data.unseen_classes=[snow leopard]"]
    if case == "no root":
        return [f"data.root={tmp_path / 'nope'}"] + sets, str(tmp_path / "nope")
    if case == "root is a file":
        (tmp_path / "f").write_text("x")
        return [f"data.root={tmp_path / 'f'}"] + sets, "not a directory"
    if case == "no class folders":
        (tmp_path / "flat").mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "a.png")
        return [f"data.root={tmp_path / 'flat'}"] + sets, "no class folders"
    if case == "empty class folder":
        (root / "004.Empty").mkdir()
        (root / "004.Empty" / "notes.txt").write_text("x")
        return sets, "004.Empty"
    if case == "unknown unseen class":
        return ["data.unseen_classes=[tiger]"], "'tiger'"
    if case == "unseen class twice":
        return ["data.unseen_classes=[snow leopard, 003.Snow_Leopard]"], "named twice"
    if case == "no unseen classes given":
        return [], "data.unseen_classes: empty"
    if case == "both unseen list and file":
        (tmp_path / "u.txt").write_text("snow leopard\n")
        return sets + [f"data.unseen_classes_file={tmp_path / 'u.txt'}"], "both given"
    if case == "unseen file not UTF-8":
        (tmp_path / "u.txt").write_bytes(b"caf\xe9\n")
        return [f"data.unseen_classes_file={tmp_path / 'u.txt'}"], "UTF-8"
    if case == "unseen file missing":
        return [f"data.unseen_classes_file={tmp_path / 'u.txt'}"], "not found"
    if case == "too few images to hold out":
        make_tree(root, {"000.Lonely": 1})
        return sets, "000.Lonely"
    if case == "folders clean to one name":
        make_tree(root, {"red fox": 2})
        return sets, "'001.Red_Fox' and 'red fox'"
    if case == "folder name cleans to nothing":
        make_tree(root, {"004.": 2})
        return sets, "'004.'"
    if case == "folder names with one slug":
        make_tree(root, {"red-fox": 2})
        return sets, "same file name"
    if case == "unsafe folder name":
        make_tree(root, {"a\u202ebad": 2})
        return sets, "control or format character"
    if case == "file link escapes root":
        (tmp_path / "outside.png").write_bytes((root / "001.Red_Fox" / "000.png").read_bytes())
        os.symlink(tmp_path / "outside.png", root / "001.Red_Fox" / "x.png")
        return sets, "outside data.root"
    if case == "folder link escapes root":
        make_tree(tmp_path / "elsewhere", {"004.Hare": 3})
        os.symlink(tmp_path / "elsewhere" / "004.Hare", root / "004.Hare")
        return sets, "outside data.root"
    if case == "one file by two paths":
        os.symlink(root / "001.Red_Fox" / "000.png", root / "002.Grey_Wolf" / "x.png")
        return sets, "the same file as"
    if case == "test tree has other class folders":
        test = make_tree(tmp_path / "t", {"001.Red_Fox": 2, "002.Grey_Wolf": 2, "004.Hare": 2})
        return sets + [f"data.test_root={test}"], "only in root: ['003.Snow_Leopard'], only in test_root: ['004.Hare']"
    if case == "test tree inside root":
        return sets + [f"data.test_root={root / '001.Red_Fox'}"], "inside it"
    if case == "empty class folder in the test tree":
        test = make_tree(tmp_path / "t", {"001.Red_Fox": 2, "002.Grey_Wolf": 2, "003.Snow_Leopard": 1})
        (test / "002.Grey_Wolf" / "000.png").unlink()
        (test / "002.Grey_Wolf" / "001.png").unlink()
        return sets + [f"data.test_root={test}"], "002.Grey_Wolf"
    if case == "every class unseen":
        return ["data.unseen_classes=[red fox, grey wolf, snow leopard]"], "no seen classes"
    raise KeyError(case)


ERROR_CASES = ["no root", "root is a file", "no class folders", "empty class folder", "unknown unseen class",
               "unseen class twice", "no unseen classes given", "both unseen list and file", "unseen file not UTF-8",
               "unseen file missing", "too few images to hold out", "folders clean to one name",
               "folder name cleans to nothing", "folder names with one slug", "unsafe folder name",
               "file link escapes root", "folder link escapes root", "one file by two paths",
               "test tree has other class folders", "test tree inside root", "empty class folder in the test tree",
               "every class unseen"]


@pytest.mark.parametrize("case", ERROR_CASES)
def test_broken_tree_is_a_user_error_naming_the_cause(tmp_path, case):
    sets, expected = _error(tmp_path, case)
    root = [] if any(s.startswith("data.root=") for s in sets) else [f"data.root={tmp_path / 'd'}"]
    data = load_run_config(None, ["data.format=imagefolder", *root, *sets]).data
    with pytest.raises(UserError) as e:
        load_split(data, progress=False)
    assert expected in str(e.value)
    assert len(str(e.value)) < 3000


def _cli(*argv: str) -> tuple[int, str, str]:
    from digzsl_ray.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(list(argv))
        except SystemExit as e:
            rc = e.code
    return rc, out.getvalue(), err.getvalue()


def test_data_check_cli(tmp_path):
    root = make_tree(tmp_path / "d", CLASSES)
    (root / "001.Red_Fox" / "notes.txt").write_text("x")
    rc, out, err = _cli("data", "check", "--set", "data.format=imagefolder", "--set", f"data.root={root}",
                        "--set", "data.unseen_classes=[snow leopard]")
    assert rc == 0, err
    assert "d: 3 classes (2 seen, 1 unseen); trainval 12 (val 2), test_seen 3, test_unseen 4" in out
    assert "held out: data.test_fraction 0.2, data.test_seed 0" in out
    assert "skipped 1 file(s)" in out and "notes.txt" in out
    (root / "004.Empty").mkdir()
    rc, out, err = _cli("data", "check", "--set", "data.format=imagefolder", "--set", f"data.root={root}",
                        "--set", "data.unseen_classes=[snow leopard]")
    assert rc == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "004.Empty" in lines[0] and "Traceback" not in err
