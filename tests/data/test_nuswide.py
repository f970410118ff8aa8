"""Both NUS-WIDE forms on small fabricated files in the real formats (official release, DualCoOp npy)."""

import pickle

import numpy as np
import pytest

from digzsl_ray.data.nuswide import NusWideFormatError, read_nuswide_dualcoop, read_nuswide_official
from digzsl_ray.data.safeload import UnsafeFileError

CONCEPTS = ["animal", "sky", "whales"]  # "whales" is not a tag, as in the real lists
TAGS = ["sky", "beach", "animal", "car", "dog"]  # seen = beach, car, dog
IMAGES = [r"C:\ImageData\Flickr\actor\0001_11.jpg", r"C:\ImageData\Flickr\actor\0002_12.jpg",
          r"C:\ImageData\Flickr\beach\0003_13.jpg", r"C:\ImageData\Flickr\beach\0004_14.jpg",
          r"C:\ImageData\Flickr\zoo\0005_15.jpg"]
#            sky beach animal car dog
TAG_ROWS = [[1, 1, 0, 0, 1],   # train: beach, dog
            [0, 0, 1, 0, 0],   # train: only a concept tag -> no seen label -> dropped
            [0, 1, 0, 0, 0],   # test: beach only -> test_seen
            [0, 0, 0, 0, 0],   # test: no tag, no concept -> unlabelled
            [0, 0, 0, 1, 0]]   # test: car + whales concept -> test_unseen
CONCEPT_ROWS = {"animal": [0, 1, 0, 0, 0], "sky": [1, 0, 0, 0, 0], "whales": [0, 0, 0, 0, 1]}


def _official(root, tag_rows=TAG_ROWS):
    (root / "NUS_WID_Tags").mkdir(parents=True)
    (root / "AllLabels").mkdir()
    (root / "ImageList").mkdir()
    (root / "Concepts81.txt").write_text("\n".join(CONCEPTS) + "\n")
    (root / "NUS_WID_Tags" / "TagList1k.txt").write_text("\n".join(TAGS) + "\n")
    (root / "NUS_WID_Tags" / "AllTags1k.txt").write_text("".join("\t".join(map(str, r)) + "\t\n" for r in tag_rows))
    for c, col in CONCEPT_ROWS.items():
        (root / "AllLabels" / f"Labels_{c}.txt").write_text("".join(f"{v}\n" for v in col))
    (root / "ImageList" / "Imagelist.txt").write_text("\r\n".join(IMAGES) + "\r\n")
    (root / "ImageList" / "TrainImagelist.txt").write_text("actor\\0001_11.jpg\nactor\\0002_12.jpg\n")
    (root / "ImageList" / "TestImagelist.txt").write_text("beach\\0003_13.jpg\nbeach\\0004_14.jpg\nzoo\\0005_15.jpg\n")
    return root


def _names(split, item):
    return [split.classes[i] for i in item.labels]


def test_official_release(tmp_path):
    s = read_nuswide_official(_official(tmp_path / "nus"), expect=(3, 3), val_fraction=0.0)
    assert s.classes == ["beach", "car", "dog", "animal", "sky", "whales"]
    assert s.seen_names == ["beach", "car", "dog"] and s.unseen_names == CONCEPTS
    assert [_names(s, it) for it in s.items["trainval"]] == [["beach", "dog"]]  # 'sky' is a concept: not a label
    assert s.items["trainval"][0].path == str(tmp_path / "nus" / "Flickr" / "actor" / "0001_11.jpg")
    assert [_names(s, it) for it in s.items["test_seen"]] == [["beach"]]
    assert [_names(s, it) for it in s.items["test_unseen"]] == [["car", "whales"]]
    assert s.notes == {"test_images_without_labels": 1, "test_images_without_labels_kept": False}
    kept = read_nuswide_official(tmp_path / "nus", expect=None, keep_unlabelled=True, val_fraction=0.0)
    assert [it.labels for it in kept.items["test_unlabelled"]] == [()]


def test_official_release_errors_name_file_and_line(tmp_path):
    with pytest.raises(NusWideFormatError, match="3 seen tags .* / 3 concepts, expected 925 / 81"):
        read_nuswide_official(_official(tmp_path / "a"))
    rows = [r[:] for r in TAG_ROWS]
    rows[2] = [0, 2, 0, 0, 0]
    with pytest.raises(NusWideFormatError, match=r"AllTags1k.txt:3: expected 5 values 0/1"):
        read_nuswide_official(_official(tmp_path / "b", rows), expect=None)
    root = _official(tmp_path / "c")
    (root / "AllLabels" / "Labels_sky.txt").write_text("1\n0\n")
    with pytest.raises(NusWideFormatError, match="Labels_sky.txt: 2 rows, expected 5"):
        read_nuswide_official(root, expect=None)
    (root / "AllLabels" / "Labels_sky.txt").unlink()
    with pytest.raises(NusWideFormatError, match="Labels_sky.txt: not found"):
        read_nuswide_official(root, expect=None)
    root = _official(tmp_path / "d")
    (root / "Concepts81.txt").write_text("animal\nsky|sea\n")
    with pytest.raises(NusWideFormatError, match="contains '\\|'"):
        read_nuswide_official(root, expect=None)


def _dualcoop(root, ids=None, labels_width=6):
    names = ["dog", "sky", "beach", "whales", "car", "animal"]  # DualCoOp's own order, not alphabetical
    (root / "annotations" / "Tag_all").mkdir(parents=True)
    (root / "annotations" / "zsl").mkdir(parents=True)
    (root / "annotations" / "Tag_all" / "all_labels.txt").write_text("\n".join(names) + "\n")
    ids = ids if ids is not None else {"seen": [0, 2, 4], "unseen": np.array([1, 3, 5])}
    (root / "annotations" / "zsl" / "cls_id.pickle").write_bytes(pickle.dumps(ids))
    z = root / "annotations" / "zsl"
    np.save(z / "formatted_train_images_filtered.npy", np.array(["a/1.jpg", "a/2.jpg"], dtype=object), allow_pickle=True)
    train = np.zeros((2, labels_width), dtype=np.float32)
    train[0, [0, 1]] = 1  # dog + sky(unseen) -> label dog only
    train[1, 3] = 1       # whales only -> no seen label -> dropped
    np.save(z / "formatted_train_all_labels_filtered.npy", train)
    np.save(z / "formatted_val_gzsl_images_filtered.npy", np.array(["b/3.jpg", "b/4.jpg", "b/5.jpg"]))
    val = np.zeros((3, labels_width), dtype=np.float32)
    val[0, [2, labels_width - 1]] = 1  # beach + animal -> unseen test
    val[1, 4] = 1       # car -> seen test
    np.save(z / "formatted_val_gzsl_labels_filtered.npy", val)
    return root


def test_dualcoop_format_keeps_its_class_order(tmp_path):
    s = read_nuswide_dualcoop(_dualcoop(tmp_path / "nus"), expect=(3, 3), val_fraction=0.0)
    assert s.classes == ["dog", "sky", "beach", "whales", "car", "animal"]
    assert s.seen_names == ["dog", "beach", "car"] and s.unseen_names == ["sky", "whales", "animal"]
    assert [_names(s, it) for it in s.items["trainval"]] == [["dog"]]
    assert s.items["trainval"][0].path == str(tmp_path / "nus" / "images" / "a" / "1.jpg")
    assert [_names(s, it) for it in s.items["test_unseen"]] == [["beach", "animal"]]
    assert [_names(s, it) for it in s.items["test_seen"]] == [["car"]]
    assert s.notes["test_images_without_labels"] == 1


def test_dualcoop_format_is_validated(tmp_path):
    (tmp_path / "c.txt").write_text("animal\nsky\nwhales\n")
    read_nuswide_dualcoop(_dualcoop(tmp_path / "ok"), concepts_file=tmp_path / "c.txt", expect=None)
    (tmp_path / "c2.txt").write_text("animal\nsky\nfish\n")
    with pytest.raises(NusWideFormatError, match="first mismatch 'whales' is not an official concept"):
        read_nuswide_dualcoop(tmp_path / "ok", concepts_file=tmp_path / "c2.txt", expect=None)
    with pytest.raises(NusWideFormatError, match="3 seen / 3 unseen, expected 925 / 81"):
        read_nuswide_dualcoop(tmp_path / "ok")
    with pytest.raises(NusWideFormatError, match=r"index 1 \('sky'\) is both seen and unseen"):
        read_nuswide_dualcoop(_dualcoop(tmp_path / "b", ids={"seen": [0, 1, 2], "unseen": [1, 3, 5]}), expect=None)
    with pytest.raises(NusWideFormatError, match="index 9 is out of range for the 6 names"):
        read_nuswide_dualcoop(_dualcoop(tmp_path / "r", ids={"seen": [0, 2, 9], "unseen": [1, 3, 5]}), expect=None)
    with pytest.raises(NusWideFormatError, match=r"shape \(2, 5\), expected \[N, 6\]"):
        read_nuswide_dualcoop(_dualcoop(tmp_path / "w", labels_width=5), expect=None)


def test_dualcoop_pickle_with_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            import os
            return (os.getcwd, ())

    root = _dualcoop(tmp_path / "nus")
    (root / "annotations" / "zsl" / "cls_id.pickle").write_bytes(pickle.dumps({"seen": Evil(), "unseen": []}))
    with pytest.raises(UnsafeFileError, match="cls_id.pickle: refuses to load"):
        read_nuswide_dualcoop(root, expect=None)
