"""A table-driven abuse suite: every leaf of the run config and of the pretraining config is fed
hostile values, and dataset folders of both formats and captioned folders are corrupted in many
ways. Each case must either be accepted (and then be a valid config) or be refused with a
:class:`UserError` whose message is bounded; no other exception may escape."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest
from pydantic import BaseModel
from tiny import make_tiny_dataset

from digzsl_ray.config import PretrainConfig, validate_config
from digzsl_ray.errors import UserError
from digzsl_ray.methods import get_method

HOSTILE = [None, True, False, 0, -1, -(2**31), 2**31, 2**63, 10**30, 0.5, -0.5, float("inf"), float("-inf"),
           float("nan"), 1e308, "", " ", "x" * 5000, "1:30", "0x10", "\x00", "\u202e", [], [None], ["x"] * 3,
           {}, {"a": 1}, {"a": {"b": {"c": {}}}}]


def _leaves(model: type[BaseModel], prefix: tuple = ()) -> list[tuple[tuple, object]]:
    out = []
    for name, f in model.model_fields.items():
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += _leaves(ann, prefix + (name,))
        else:
            out.append((prefix + (name,), ann))
    return out


def _nest(path: tuple, value) -> dict:
    d: dict = {}
    cur = d
    for p in path[:-1]:
        cur = cur.setdefault(p, {})
    cur[path[-1]] = value
    return d


RUN = get_method("digzsl").config
CASES = [(m, path, v) for m in (RUN, PretrainConfig) for path, _ in _leaves(m) for v in HOSTILE]
STATS = {"accepted": 0, "refused": 0}


@pytest.mark.parametrize("model", [RUN, PretrainConfig], ids=["run", "pretrain"])
def test_every_config_leaf_under_hostile_values(model):
    cases = [(p, v) for m, p, v in CASES if m is model]
    assert len(cases) > 300
    for path, value in cases:
        try:
            cfg = validate_config(_nest(path, value), model)
        except UserError as e:
            STATS["refused"] += 1
            assert len(str(e)) < 3000, (path, str(e)[:200])
            continue
        STATS["accepted"] += 1
        got = cfg
        for p in path:
            got = getattr(got, p)
        # what is accepted is usable: finite numbers within the int bound, no bool posing as a number
        if isinstance(got, float):
            assert got == got and abs(got) != float("inf"), (path, value)
        if isinstance(got, int) and not isinstance(got, bool):
            assert abs(got) <= 2**31 - 1, (path, value)
            assert not isinstance(value, bool), (path, value)
        if isinstance(got, str):
            assert got == value or value is None, (path, value)


# Dataset folders (project format) ----------------------------------------------------------------
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("ab") / "d", per_class=2, test_per_class=1)


def _edit_csv(path: Path, fn) -> None:
    rows = list(csv.reader(io.StringIO(path.read_text())))
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(fn(rows))
    path.write_text(out.getvalue())


def _corrupt(name: str, root: Path) -> None:
    meta_p, tv = root / "dataset.json", root / "splits" / "trainval.csv"
    meta = json.loads(meta_p.read_text())
    if name == "no dataset.json":
        meta_p.unlink()
    elif name == "dataset.json not JSON":
        meta_p.write_text("{nope")
    elif name == "dataset.json a list":
        meta_p.write_text("[]")
    elif name == "wrong format tag":
        meta_p.write_text(json.dumps({**meta, "format": "other/9"}))
    elif name == "classes not a list":
        meta_p.write_text(json.dumps({**meta, "classes": "red circle"}))
    elif name == "unseen not among classes":
        meta_p.write_text(json.dumps({**meta, "unseen": ["blue moon"]}))
    elif name == "duplicate class":
        meta_p.write_text(json.dumps({**meta, "classes": meta["classes"] + [meta["classes"][0]]}))
    elif name == "class name with path separator":
        meta_p.write_text(json.dumps({**meta, "classes": ["a/b"] + meta["classes"][1:]}))
    elif name == "no trainval.csv":
        tv.unlink()
    elif name == "empty trainval.csv":
        tv.write_text("")
    elif name == "bad header":
        _edit_csv(tv, lambda r: [["file", "class"]] + r[1:])
    elif name == "unknown label":
        _edit_csv(tv, lambda r: r[:1] + [[r[1][0], "blue moon"]] + r[2:])
    elif name == "empty label":
        _edit_csv(tv, lambda r: r[:1] + [[r[1][0], ""]] + r[2:])
    elif name == "path escapes the dataset":
        _edit_csv(tv, lambda r: r[:1] + [["../../etc/passwd", r[1][1]]] + r[2:])
    elif name == "absolute path":
        _edit_csv(tv, lambda r: r[:1] + [["/etc/passwd", r[1][1]]] + r[2:])
    elif name == "missing image":
        _edit_csv(tv, lambda r: r[:1] + [["images/nope.png", r[1][1]]] + r[2:])
    elif name == "corrupt image":
        first = list(csv.reader(io.StringIO(tv.read_text())))[1][0]
        (root / first).write_bytes(b"\x89PNG..")
    elif name == "not UTF-8 csv":
        tv.write_bytes(b"path,label\nimages/\xff.png,red circle\n")
    elif name == "NUL in csv":
        tv.write_text(tv.read_text() + "images/x\x00.png,red circle\n")
    elif name == "extra column":
        _edit_csv(tv, lambda r: r[:1] + [r[1] + ["extra"]] + r[2:])
    elif name == "unseen class in trainval":
        _edit_csv(tv, lambda r: r[:1] + [[r[1][0], meta["unseen"][0]]] + r[2:])
    elif name == "no test_unseen images":
        (root / "splits" / "test_unseen.csv").write_text("path,label\n")
    else:
        raise KeyError(name)


DATASET_CASES = ["no dataset.json", "dataset.json not JSON", "dataset.json a list", "wrong format tag",
                 "classes not a list", "unseen not among classes", "duplicate class", "class name with path separator",
                 "no trainval.csv", "empty trainval.csv", "bad header", "unknown label", "empty label",
                 "path escapes the dataset", "absolute path", "missing image", "corrupt image", "not UTF-8 csv",
                 "NUL in csv", "extra column", "unseen class in trainval", "no test_unseen images"]


@pytest.mark.parametrize("case", DATASET_CASES)
def test_corrupted_dataset_folder_is_a_user_error(data, tmp_path, case):
    from digzsl_ray.data import load_split
    from digzsl_ray.methods import load_run_config

    root = tmp_path / "d"
    shutil.copytree(data, root)
    _corrupt(case, root)
    cfg = load_run_config(None, ["data.format=digzsl", f"data.root={root}"])
    with pytest.raises(UserError) as e:
        load_split(cfg.data, validate=True, progress=False)
    assert len(str(e.value)) < 3000


# Captioned folders (pretraining input) ------------------------------------------------------------
def _captioned(root: Path, lines: list[str] | bytes, images: int = 2) -> Path:
    from PIL import Image

    root.mkdir(parents=True)
    for i in range(images):
        Image.new("RGB", (8, 8), (i * 50, 0, 0)).save(root / f"{i}.png")
    data = lines if isinstance(lines, bytes) else ("\n".join(lines) + "\n").encode()
    (root / "metadata.jsonl").write_bytes(data)
    return root


CAPTION_CASES = {
    "not JSON": ["{nope"],
    "a list per line": ['["0.png", "x"]'],
    "no file_name": ['{"text": "a red ring"}'],
    "no text": ['{"file_name": "0.png"}'],
    "text not a string": ['{"file_name": "0.png", "text": 5}'],
    "empty text": ['{"file_name": "0.png", "text": ""}'],
    "missing image": ['{"file_name": "9.png", "text": "x"}'],
    "escaping path": ['{"file_name": "../0.png", "text": "x"}'],
    "absolute path": ['{"file_name": "/etc/passwd", "text": "x"}'],
    "not UTF-8": b'{"file_name": "0.png", "text": "caf\xe9"}\n',
    "empty file": [],
    "file_name not a string": ['{"file_name": {"a": 1}, "text": "x"}'],
    "nested 100,000 deep": ['{"file_name": "0.png", "text": ' + "[" * 100_000 + "]" * 100_000 + "}"],
}


@pytest.mark.parametrize("case", list(CAPTION_CASES))
def test_corrupted_captioned_folder_is_a_user_error(tmp_path, case):
    from digzsl_ray.data.captioned import read_captioned_folder

    root = _captioned(tmp_path / "c", CAPTION_CASES[case])
    with pytest.raises(UserError) as e:
        read_captioned_folder(root)
    assert len(str(e.value)) < 3000


# Class-folder trees (data.format: imagefolder) ----------------------------------------------------
def _class_tree(root: Path) -> Path:
    from PIL import Image

    for k, folder in enumerate(("001.Red_Fox", "002.Grey_Wolf", "003.Snow_Leopard")):
        (root / folder).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (k * 80, i * 40, 0)).save(root / folder / f"{i}.png")
    return root


def _corrupt_tree(name: str, root: Path, tmp: Path) -> list[str]:
    """Corrupt the tree at ``root``; the extra overrides the case needs."""
    import os

    if name == "class folder of empty .png files":
        (root / "004.Hare").mkdir()
        for f in ("a.png", "b.jpg"):
            (root / "004.Hare" / f).write_bytes(b"")
    elif name == "a pipe named .png is the only file":
        (root / "004.Hare").mkdir()
        os.mkfifo(root / "004.Hare" / "a.png")  # never opened (opening it would block)
    elif name == "dangling link .png":
        os.symlink(tmp / "gone.png", root / "001.Red_Fox" / "x.png")
    elif name == "link loop only":
        (root / "004.Hare").mkdir()
        os.symlink(root / "004.Hare", root / "004.Hare" / "again")
    elif name == "link to /etc":
        os.symlink("/etc", root / "004.Etc")
    elif name == "control character in a folder name":  # whitespace (a newline) is cleaned to a space
        shutil.copytree(root / "001.Red_Fox", root / "bad\x07name")
    elif name == "test_root is a file":
        (tmp / "f.png").write_bytes(b"x")
        return [f"data.test_root={tmp / 'f.png'}"]
    elif name == "test_root is root":
        return [f"data.test_root={root}"]
    elif name == "root is a file":
        return [f"data.root={root / '001.Red_Fox' / '0.png'}"]
    elif name == "unseen file nested 100,000 deep":
        (tmp / "u.json").write_text("[" * 100_000 + "]" * 100_000)
        return [f"data.unseen_classes_file={tmp / 'u.json'}", "data.unseen_classes=[]"]
    elif name == "unseen file holds numbers":
        (tmp / "u.json").write_text('["snow leopard", 3]')
        return [f"data.unseen_classes_file={tmp / 'u.json'}", "data.unseen_classes=[]"]
    elif name in IMAGEFOLDER_UNSEEN:
        return [f"data.unseen_classes={json.dumps(IMAGEFOLDER_UNSEEN[name])}"]
    else:
        raise KeyError(name)
    return []


IMAGEFOLDER_UNSEEN = {"unseen '../..'": ["../.."], "unseen empty name": [""], "unseen bidi override": ["\u202e"],
                      "unseen 5000 characters": ["x" * 5000], "unseen every class": ["001.Red_Fox", "grey wolf",
                                                                                       "snow leopard"]}
IMAGEFOLDER_CASES = ["class folder of empty .png files", "a pipe named .png is the only file", "dangling link .png",
                     "link loop only", "link to /etc", "control character in a folder name", "test_root is a file",
                     "test_root is root", "root is a file", "unseen file nested 100,000 deep",
                     "unseen file holds numbers", *IMAGEFOLDER_UNSEEN]


@pytest.mark.parametrize("case", IMAGEFOLDER_CASES)
def test_corrupted_class_tree_is_a_user_error(tmp_path, case):
    from digzsl_ray.data import load_split
    from digzsl_ray.methods import load_run_config

    root = _class_tree(tmp_path / "d")
    extra = _corrupt_tree(case, root, tmp_path)
    cfg = load_run_config(None, ["data.format=imagefolder", f"data.root={root}",
                                 "data.unseen_classes=[snow leopard]", *extra])
    with pytest.raises(UserError) as e:
        load_split(cfg.data, validate=True, progress=False)
    assert len(str(e.value)) < 3000
