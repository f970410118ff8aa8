"""The COCO 48/17-style reader on small fabricated files in the real instances-JSON format."""

import json

import pytest

from digzsl_ray.data.coco import CocoFormatError, read_coco_zsl, write_split_jsons

CATS = [(1, "person"), (2, "bicycle"), (3, "car"), (5, "airplane"), (6, "bus"), (17, "cat"), (18, "dog")]
SEEN, UNSEEN = ["person", "bicycle", "car"], ["airplane", "bus", "cat"]  # dog (18) is in neither list


def _instances(path, images, anns):
    path.write_text(json.dumps({
        "images": [{"id": i, "file_name": f"COCO_{path.stem}_{i:012d}.jpg"} for i in images],
        "annotations": [{"id": k, "image_id": i, "category_id": c} for k, (i, c) in enumerate(anns)],
        "categories": [{"id": i, "name": n, "supercategory": "x"} for i, n in CATS]}))


@pytest.fixture
def coco(tmp_path):
    ann = tmp_path / "annotations"
    ann.mkdir()
    # train: 10 person+car, 11 dog only (dropped), 12 bicycle+cat (cat not a training label), 13 no annotation
    _instances(ann / "instances_train2014.json", [10, 11, 12, 13], [(10, 1), (10, 3), (10, 3), (11, 18), (12, 2), (12, 17)])
    # val: 20 bus+person (unseen test), 21 car (seen test), 22 dog (dropped), 23 cat+airplane
    _instances(ann / "instances_val2014.json", [20, 21, 22, 23], [(20, 6), (20, 1), (21, 3), (22, 18), (23, 17), (23, 5)])
    (tmp_path / "seen.json").write_text(json.dumps(SEEN))
    (tmp_path / "unseen.txt").write_text("\n".join(UNSEEN) + "\n")
    return tmp_path


def _names(split, item):
    return sorted(split.classes[i] for i in item.labels)


def test_split_follows_the_standard_recipe(coco):
    s = read_coco_zsl(coco / "annotations", coco / "img", coco / "seen.json", coco / "unseen.txt", expect=(3, 3),
                      val_fraction=0.0)
    assert s.multi_label and s.classes == ["person", "bicycle", "car", "airplane", "bus", "cat"]  # id order
    assert s.seen_names == SEEN and s.unseen_names == UNSEEN
    tv = {it.path.rsplit("_", 1)[1]: _names(s, it) for it in s.items["trainval"]}
    assert tv == {"000000000010.jpg": ["car", "person"], "000000000012.jpg": ["bicycle"]}
    assert s.items["trainval"][0].path == str(coco / "img" / "train2014" / "COCO_instances_train2014_000000000010.jpg")
    assert [_names(s, it) for it in s.items["test_unseen"]] == [["bus", "person"], ["airplane", "cat"]]
    assert [_names(s, it) for it in s.items["test_seen"]] == [["car"]]


def test_split_jsons_keep_only_the_split_categories_and_their_images(coco):
    paths = write_split_jsons(coco / "annotations", coco / "seen.json", coco / "unseen.txt", coco / "out")
    assert sorted(p.name for p in paths.values()) == ["instances_train2014_seen_48_17.json",
                                                     "instances_val2014_gzsi_48_17.json",
                                                     "instances_val2014_unseen_48_17.json"]
    unseen = json.loads(paths["unseen"].read_text())
    assert [c["name"] for c in unseen["categories"]] == ["airplane", "bus", "cat"]
    assert sorted(im["id"] for im in unseen["images"]) == [20, 23]
    gz = json.loads(paths["gzsi"].read_text())
    assert sorted(im["id"] for im in gz["images"]) == [20, 21, 23] and len(gz["categories"]) == 6


def test_class_list_errors_name_the_file_and_the_first_mismatch(coco):
    (coco / "bad.json").write_text(json.dumps(["person", "unicorn", "pegasus"]))
    with pytest.raises(CocoFormatError, match=r"bad.json: class 'unicorn' is not a category of .*instances_train2014"):
        read_coco_zsl(coco / "annotations", coco / "img", coco / "bad.json", coco / "unseen.txt", expect=None)
    with pytest.raises(CocoFormatError, match="3 seen / 3 unseen classes, expected 48 / 17"):
        read_coco_zsl(coco / "annotations", coco / "img", coco / "seen.json", coco / "unseen.txt")
    (coco / "overlap.json").write_text(json.dumps(["car", "bus"]))
    with pytest.raises(CocoFormatError, match="overlap.json: 'car' is also in .*seen.json"):
        read_coco_zsl(coco / "annotations", coco / "img", coco / "seen.json", coco / "overlap.json", expect=None)
    (coco / "sep.json").write_text(json.dumps(["car|bus"]))
    with pytest.raises(CocoFormatError, match="contains '\\|'"):
        read_coco_zsl(coco / "annotations", coco / "img", coco / "sep.json", coco / "unseen.txt", expect=None)


def test_malformed_annotation_file(coco):
    p = coco / "annotations" / "instances_val2014.json"
    d = json.loads(p.read_text())
    d["annotations"].append({"id": 99, "image_id": 20, "category_id": 77})
    p.write_text(json.dumps(d))
    with pytest.raises(CocoFormatError, match="annotation 6 has category_id 77"):
        read_coco_zsl(coco / "annotations", coco / "img", coco / "seen.json", coco / "unseen.txt", expect=None)


def test_data_config_reads_coco_and_the_single_label_method_refuses_it(coco, tmp_path, monkeypatch):
    import digzsl_ray.data.coco as coco_mod
    from digzsl_ray.config import ConfigError
    from digzsl_ray.data import load_split
    from digzsl_ray.methods import get_method, load_run_config
    from digzsl_ray.stages.rundir import prepare

    cfg = load_run_config(None, ["data.format=coco", f"data.root={coco / 'img'}", f"data.annotations={coco / 'annotations'}",
                                 f"data.seen_classes_file={coco / 'seen.json'}",
                                 f"data.unseen_classes_file={coco / 'unseen.txt'}", "data.check_images=false"])
    with pytest.raises(CocoFormatError, match="expected 48 / 17"):  # the config path keeps the 48/17 check
        load_split(cfg.data)
    monkeypatch.setattr(coco_mod, "COCO_48_17", (3, 3))
    split = load_split(cfg.data, validate=True, progress=False)
    assert split.multi_label and len(split.classes) == 6
    with pytest.raises(ConfigError, match="multi-label .* which method 'digzsl' does not take"):
        prepare(cfg, tmp_path / "run", progress=False, method=get_method("digzsl"))
    assert not (tmp_path / "run" / "run.json").exists()
