"""Reader for the xlsa17 zero-shot benchmarks (CUB, AWA2, SUN, FLO), images in their own layouts.

xlsa17 (Xian et al., "Zero-Shot Learning - The Good, the Bad and the Ugly") ships per dataset:

```
SPLITS/att_splits.mat        trainval_loc, test_seen_loc, test_unseen_loc (1-based indices into
                             the image list of res101.mat), allclasses_names, att
SPLITS/testclasses.txt       unseen class names (optional; cross-checked)
SPLITS/valclassesK.txt       validation classes of split K = 1, 2, 3 (optional)
SPLITS/res101.mat            image_files + labels of every image (optional, large; often missing)
```

The ``*_loc`` indices only mean something together with the image list they index. When
``res101.mat`` is present its ``image_files`` and ``labels`` are used; otherwise the list is rebuilt
from the dataset's own folder layout under ``image_root``, in the order xlsa17 used. That order was
checked against the split files themselves: all images of an unseen class lie in ``test_unseen_loc``,
so the runs of consecutive unseen indices must line up with whole classes in the assumed order.

* CUB:  ``images.txt`` id order (= class id order).                 Runs: 82 of 82 match.
* AWA2: class folders sorted by name, files sorted by name.         Runs: 17 of 17 match; the
  ``classes.txt`` order does not (16 groups), so it is NOT the image order.
* SUN:  ``images.mat`` order; 20 images per class in class-name order match exactly.
* FLO:  ``setid.mat`` sets ``trnid``, ``valid``, ``tstid`` one after the other, each sorted by
  label (ties by image number). The split shows the same 16-unseen/1-seen/4-unseen/81-seen class
  pattern in blocks of 1020, 1020 and 6149 images; plain image-number order cannot produce it.

Within-class order (which seen images are trainval and which test_seen) cannot be checked without
``res101.mat``; sorted file names / image ids are assumed. Class names come from
``allclasses_names`` (cleaned); FLO has none, so names are generated unless ``class_names_file`` is
given. ``train_loc``/``val_loc`` are never read (see :func:`_read_att_splits`). No image is opened.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from digzsl_ray.data.format import DatasetFormatError
from digzsl_ray.data.split import SPLITS, Item, ZSLSplit
from digzsl_ray.slug import unsafe_name_reason

DATASETS = ("CUB", "AWA2", "SUN", "FLO")
LOC_FIELDS = {"trainval": "trainval_loc", "test_seen": "test_seen_loc", "test_unseen": "test_unseen_loc"}
# Folder from which a res101.mat image path is kept (last occurrence), joined to the dataset base.
RES101_MARKERS = {"CUB": "images/", "AWA2": "JPEGImages/", "SUN": "images/", "FLO": "jpg/"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class Xlsa17Error(DatasetFormatError):
    """Split files or an image layout that cannot be read; the message names the file (and line)."""


@dataclass
class ImageList:
    """The image list the ``*_loc`` indices point into.

    Attributes:
        paths: absolute image paths, in xlsa17 order (N).
        labels: class index of each image (N,), 0-based into the att class order.
        source: what the list was built from, for messages.
    """

    paths: list[str]
    labels: np.ndarray
    source: str


# Public API ---------------------------------------------------------------------------------------
def clean_class_name(name: str) -> str:
    """``"001.Black_footed_Albatross"`` -> ``"black footed albatross"``; ``"grizzly+bear"`` -> ``"grizzly bear"``."""
    name = re.sub(r"^\s*\d+\.", "", str(name))
    name = name.replace("_", " ").replace("+", " ")
    return " ".join(name.lower().split())


def read_xlsa17(
    splits_dir: str | Path,
    image_root: str | Path,
    dataset: str,
    val_fraction: float = 0.1,
    val_split: int = 1,
    seed: int = 0,
    class_names_file: str | Path | None = None,
) -> ZSLSplit:
    """Read an xlsa17 split (``splits_dir``) with images under ``image_root`` into a :class:`ZSLSplit`.

    Args:
        splits_dir: folder with ``att_splits.mat`` and the optional class lists / ``res101.mat``.
        image_root: the dataset's image folder (layouts in the module docstring and docs/xlsa17.md).
        dataset: "CUB", "AWA2", "SUN" or "FLO" (any case); selects the layout.
        val_fraction: fraction of each seen class's trainval images held out as ``val``.
        val_split: K of ``valclassesK.txt`` giving ``val_classes`` (empty when no such files exist).
        seed: seed of the ``val`` draw.
        class_names_file: text file with one class name per line in label (att) order; overrides
            the names of any dataset (FLO ships none).

    Returns:
        A split whose labels index the att class order; ``seen``/``unseen`` derive from the labels.
    """
    # 1. Check arguments
    if not isinstance(dataset, str) or dataset.upper() not in DATASETS:
        raise ValueError(f"dataset: got {dataset!r}, expected one of {', '.join(DATASETS)} (any case)")
    dataset = dataset.upper()
    if isinstance(val_split, bool) or not isinstance(val_split, (int, np.integer)) or val_split < 1:
        raise ValueError(f"val_split: got {val_split!r}, expected an integer >= 1")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction: got {val_fraction}, expected a number in [0, 1)")
    splits_dir = Path(splits_dir)
    root = Path(os.path.abspath(os.path.expanduser(str(image_root))))
    if not splits_dir.is_dir():
        raise Xlsa17Error(f"splits_dir: {splits_dir} is not a directory; expected the xlsa17 folder of {dataset}")
    if not root.is_dir():
        raise Xlsa17Error(f"image_root: {root} is not a directory; expected the {dataset} image folder")

    # 2. Split indices and class count from att_splits.mat
    att_path = splits_dir / "att_splits.mat"
    locs, att_names, n_classes = _read_att_splits(att_path)

    # 3. Class names: cleaned allclasses_names, else class_names_file, else generated (with a warning)
    override = _read_class_names_file(class_names_file, n_classes) if class_names_file is not None else None
    if n_classes is None:
        if override is None:
            raise Xlsa17Error(f"{att_path}: neither 'allclasses_names' nor 'att' found, so the number of classes is "
                              "unknown; pass class_names_file (one name per line in label order)")
        n_classes = len(override)
    if att_names is None:
        if override is not None:
            ref_names = override
        else:
            stem = "flower" if dataset == "FLO" else dataset.lower()
            ref_names = [f"{stem} class {i + 1:03d}" for i in range(n_classes)]
            warnings.warn(
                f"{dataset}: {att_path} has no 'allclasses_names'; class names are generated "
                f"('{ref_names[0]}' .. '{ref_names[-1]}'). Pass class_names_file=<text file with one name per "
                f"line in label order> to use real names.", UserWarning, stacklevel=2)
    else:
        ref_names = att_names
    classes = override if override is not None else ref_names
    _check_names(classes, str(class_names_file) if override is not None else str(att_path))

    # 4. The image list the indices point into: res101.mat if present, else the folder layout
    res101 = splits_dir / "res101.mat"
    if res101.is_file():
        images = _images_from_res101(res101, dataset, root, n_classes)
    elif dataset == "CUB":
        images = _cub_layout(root, ref_names)
    elif dataset == "AWA2":
        images = _awa2_layout(root, ref_names)
    elif dataset == "SUN":
        images = _sun_layout(root, ref_names)
    else:
        images = _flo_layout(root, n_classes)

    # 5. Validate the indices against the image list
    _check_locs(locs, len(images.paths), att_path, images.source)

    # 6. Seen / unseen from the labels; they must not share a class
    labels = {split: images.labels[locs[split]] for split in SPLITS}
    seen = sorted({int(c) for c in np.concatenate([labels["trainval"], labels["test_seen"]])})
    unseen = sorted({int(c) for c in labels["test_unseen"]})
    both = sorted(set(seen) & set(unseen))
    if both:
        raise Xlsa17Error(
            f"{images.source}: {len(both)} classes have images both in test_unseen_loc and in trainval_loc/"
            f"test_seen_loc (e.g. {[ref_names[c] for c in both[:3]]}); the image order of this layout does not "
            f"match the one {att_path} was made for (see docs/xlsa17.md)")

    # 7. Cross-check testclasses.txt and pick the validation classes
    index = {name: i for i, name in enumerate(ref_names)}
    test_file = splits_dir / "testclasses.txt"
    if test_file.is_file():
        listed = {index.get(n, -1) for n in _read_name_list(test_file)}
        if listed != set(unseen):
            missing = sorted(ref_names[c] for c in set(unseen) - listed)[:3]
            extra = sorted(ref_names[c] if c >= 0 else "<unknown name>" for c in listed - set(unseen))[:3]
            raise Xlsa17Error(
                f"{test_file}: lists {len(listed)} classes, the labels of test_unseen_loc give {len(unseen)}; "
                f"not listed: {missing}, listed but not unseen: {extra}")
    val_classes = _read_val_classes(splits_dir, int(val_split), index, set(seen))

    # 8. Items, then the validation images carved out of trainval
    items = {split: [Item(images.paths[i], (int(images.labels[i]),)) for i in locs[split]] for split in SPLITS}
    split = ZSLSplit(name=dataset, classes=list(classes), seen=seen, unseen=unseen, items=items,
                     val_classes=val_classes, root=str(image_root))
    split.carve_val(val_fraction, seed)
    return split


# att_splits.mat and class lists ---------------------------------------------------------------------
def _load_mat(path: Path, what: str, variable_names: list[str] | None = None) -> dict:
    import scipy.io  # imported here: scipy is heavy and only this reader needs it

    if not path.is_file():
        raise Xlsa17Error(f"{path}: not found; expected {what}")
    try:
        return scipy.io.loadmat(str(path), variable_names=variable_names)
    except Exception as e:  # scipy raises several types for unreadable / v7.3 files
        raise Xlsa17Error(f"{path}: cannot be read as a MATLAB file ({type(e).__name__}: {e})") from e


def _mat_strings(arr: np.ndarray) -> list[str]:
    """A MATLAB cell array of strings (as loaded by scipy) -> a flat list of str."""
    out = []
    for el in np.asarray(arr, dtype=object).ravel():
        while isinstance(el, np.ndarray):
            el = el.ravel()[0] if el.size else ""
        out.append(str(el))
    return out


def _read_att_splits(path: Path) -> tuple[dict[str, np.ndarray], list[str] | None, int | None]:
    """0-based index arrays per split, cleaned class names (or None) and the class count (or None)."""
    mat = _load_mat(path, "the xlsa17 att_splits.mat of the dataset")
    locs = {}
    for split, key in LOC_FIELDS.items():
        if key not in mat:
            fields = sorted(k for k in mat if not k.startswith("__"))
            raise Xlsa17Error(f"{path}: missing field {key!r}; fields are {fields}")
        raw = np.asarray(mat[key]).ravel().astype(np.int64)
        if raw.size and raw.min() < 1:
            raise Xlsa17Error(f"{path}: {key} has index {raw.min()}, but xlsa17 indices are 1-based (MATLAB)")
        locs[split] = raw - 1  # MATLAB 1-based -> 0-based
    # train_loc / val_loc are deliberately ignored: they are legacy, absent from CUB's att_splits.mat,
    # and in AWA2/SUN/FLO both overlap test_seen_loc (AWA2: 4031 and 1851 images), so tuning on them
    # would touch test data. Validation uses valclassesK and images carved out of trainval instead.
    names = [clean_class_name(n) for n in _mat_strings(mat["allclasses_names"])] if "allclasses_names" in mat else None
    if names is not None:
        n_classes = len(names)
    elif "att" in mat:
        n_classes = int(np.asarray(mat["att"]).shape[1])  # att is (dims, classes)
    else:
        n_classes = None
    return locs, names, n_classes


def _read_name_list(path: Path) -> list[str]:
    """Cleaned non-empty lines of a class list (testclasses.txt, valclassesK.txt, ...)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise Xlsa17Error(f"{path}: not UTF-8 text (byte offset {e.start}); save it as UTF-8") from None
    return [clean_class_name(line) for line in text.splitlines() if line.strip()]


def _read_class_names_file(path: str | Path, n_classes: int | None) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise Xlsa17Error(f"class_names_file: {path} not found; expected a text file with one class name a line")
    names = _read_name_list(path)
    if n_classes is not None and len(names) != n_classes:
        raise Xlsa17Error(f"class_names_file: {path} has {len(names)} names, expected {n_classes} (one per class, "
                          "in label order)")
    return names


def _check_names(names: list[str], source: str) -> None:
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        reason = unsafe_name_reason(name)
        if reason:
            raise Xlsa17Error(f"{source}: class {i + 1} {name!r} cannot be used as a class name: {reason}")
        if name in seen:
            raise Xlsa17Error(f"{source}: class {i + 1} {name!r} repeats class {seen[name] + 1} (after cleaning)")
        seen[name] = i


def _read_val_classes(splits_dir: Path, k: int, index: dict[str, int], seen: set[int]) -> list[int]:
    path = splits_dir / f"valclasses{k}.txt"
    if not path.is_file():
        others = sorted(p.name for p in splits_dir.glob("valclasses*.txt"))
        if others:
            raise Xlsa17Error(f"val_split: got {k}, but {path} does not exist; available: {others}")
        return []
    out = []
    for lineno, name in enumerate(_read_name_list(path), start=1):
        if name not in index:
            raise Xlsa17Error(f"{path}:{lineno}: unknown class {name!r} (not in the dataset's class names)")
        if index[name] not in seen:
            raise Xlsa17Error(f"{path}:{lineno}: class {name!r} is not a seen class; validation classes must be seen")
        out.append(index[name])
    return sorted(set(out))


def _check_locs(locs: dict[str, np.ndarray], n_images: int, att_path: Path, source: str) -> None:
    """Indices inside the image list, no repeats, and the three sets disjoint."""
    for split, idx in locs.items():
        if idx.size and idx.max() >= n_images:
            raise Xlsa17Error(
                f"{att_path}: {LOC_FIELDS[split]} has index {idx.max() + 1} (1-based), out of range: the image list "
                f"from {source} has {n_images} images")
        if len(np.unique(idx)) != len(idx):
            raise Xlsa17Error(f"{att_path}: {LOC_FIELDS[split]} repeats {len(idx) - len(np.unique(idx))} indices")
    names = list(locs)
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            shared = np.intersect1d(locs[names[a]], locs[names[b]]).size
            if shared:
                counts = ", ".join(f"{LOC_FIELDS[s]} {len(locs[s])}" for s in names)
                raise Xlsa17Error(f"{att_path}: {LOC_FIELDS[names[a]]} and {LOC_FIELDS[names[b]]} share {shared} "
                                  f"indices ({counts}); the three sets must be disjoint")


# Image lists ------------------------------------------------------------------------------------------
def _base(root: Path, folder: str, marker_file: str) -> Path:
    """``root`` if it holds ``marker_file``, else ``root/folder`` if that does, else ``root``."""
    if (root / marker_file).exists():
        return root
    if (root / folder / marker_file).exists():
        return root / folder
    return root / folder if (root / folder).is_dir() else root


def _need(path: Path, layout: str) -> Path:
    if not path.exists():
        raise Xlsa17Error(f"{path}: not found; the {layout} layout needs it (see docs/xlsa17.md)")
    return path


def _lookup(name: str, index: dict[str, int], where: str) -> int:
    key = clean_class_name(name)
    if key not in index:
        raise Xlsa17Error(f"{where}: class {name!r} (cleaned {key!r}) is not among the att_splits.mat class names")
    return index[key]


def _read_table(path: Path, layout: str) -> list[tuple[int, str]]:
    """``"<int> <text>"`` lines -> [(int, text)], errors with file and line."""
    rows = []
    for lineno, line in enumerate(_need(path, layout).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(None, 1)
        if len(parts) != 2 or not parts[0].isdigit():
            raise Xlsa17Error(f"{path}:{lineno}: expected '<number> <text>', got {line!r}")
        rows.append((int(parts[0]), parts[1].strip()))
    return rows


def _images_from_res101(path: Path, dataset: str, root: Path, n_classes: int) -> ImageList:
    """``image_files`` remapped under ``image_root`` and ``labels`` (1-based) from xlsa17's res101.mat.

    A path is kept from the last ``RES101_MARKERS[dataset]`` folder on and joined to the dataset base:
    ``/BS/.../CUB_200_2011/images/001.X/y.jpg`` -> ``<base>/images/001.X/y.jpg`` with base = ``image_root``
    or ``image_root/CUB_200_2011``; AWA2 keeps ``JPEGImages/...`` (base may be ``Animals_with_Attributes2``),
    SUN ``images/...`` and FLO ``jpg/...`` under ``image_root``.
    """
    mat = _load_mat(path, "xlsa17 res101.mat", variable_names=["image_files", "labels"])
    for key in ("image_files", "labels"):
        if key not in mat:
            raise Xlsa17Error(f"{path}: missing field {key!r}")
    files = _mat_strings(mat["image_files"])
    labels = np.asarray(mat["labels"]).ravel().astype(np.int64)
    if len(files) != len(labels):
        raise Xlsa17Error(f"{path}: {len(files)} image_files but {len(labels)} labels")
    if labels.size and (labels.min() < 1 or labels.max() > n_classes):
        raise Xlsa17Error(f"{path}: labels range {labels.min()}..{labels.max()}, expected 1..{n_classes} (1-based)")
    folder = {"CUB": "CUB_200_2011", "AWA2": "Animals_with_Attributes2"}.get(dataset, "")
    base = _base(root, folder, RES101_MARKERS[dataset].rstrip("/")) if folder else root
    marker = RES101_MARKERS[dataset]
    paths = []
    for i, f in enumerate(files):
        p = f.replace("\\", "/")
        cut = p.rfind("/" + marker)
        if cut >= 0:
            tail = p[cut + 1:]
        elif p.startswith(marker):
            tail = p
        else:
            raise Xlsa17Error(f"{path}: image_files[{i}] = {f!r} has no {marker!r} folder to remap under image_root")
        paths.append(str(base / tail))
    return ImageList(paths, labels - 1, str(path))


def _cub_layout(root: Path, names: list[str]) -> ImageList:
    """CUB-200-2011: ``images.txt`` ("id relpath"), ``image_class_labels.txt`` ("id classid"),
    ``classes.txt`` ("classid name"), images under ``images/``. Order: image id."""
    layout = "CUB_200_2011"
    base = _base(root, "CUB_200_2011", "images.txt")
    index = {n: i for i, n in enumerate(names)}
    class_of = {cid: _lookup(name, index, f"{base / 'classes.txt'}")
                for cid, name in _read_table(base / "classes.txt", layout)}
    label_of = dict(_read_table(base / "image_class_labels.txt", layout))
    rows = sorted(_read_table(base / "images.txt", layout))
    paths, labels = [], []
    for image_id, rel in rows:
        if image_id not in label_of:
            raise Xlsa17Error(f"{base / 'image_class_labels.txt'}: no class for image id {image_id} of images.txt")
        cid = int(label_of[image_id])
        if cid not in class_of:
            raise Xlsa17Error(f"{base / 'image_class_labels.txt'}: image id {image_id} has class id {cid}, "
                              "which classes.txt does not list")
        paths.append(str(base / "images" / rel))
        labels.append(class_of[cid])
    return ImageList(paths, np.asarray(labels, dtype=np.int64), f"{base / 'images.txt'}")


def _awa2_layout(root: Path, names: list[str]) -> ImageList:
    """Animals with Attributes 2: ``classes.txt`` ("idx name") and ``JPEGImages/<class>/*.jpg``.

    Order: ``AwA2-filenames.txt`` + ``AwA2-labels.txt`` (from AwA2-features, in the base folder or
    ``Features/ResNet101/``) when present; else class folders sorted by name, then file names sorted.
    """
    layout = "Animals_with_Attributes2"
    base = _base(root, "Animals_with_Attributes2", "classes.txt")
    index = {n: i for i, n in enumerate(names)}
    table = _read_table(base / "classes.txt", layout)
    folder_of = {idx: name for idx, name in table}
    jpeg = base / "JPEGImages"
    paths, labels = [], []
    # 1. The feature release's own list, if any
    for where in (base, base / "Features" / "ResNet101"):
        files, labs = where / "AwA2-filenames.txt", where / "AwA2-labels.txt"
        if files.is_file() and labs.is_file():
            fnames = [ln.strip() for ln in files.read_text(encoding="utf-8").splitlines() if ln.strip()]
            lablist = [ln.strip() for ln in labs.read_text(encoding="utf-8").splitlines() if ln.strip()]
            if len(fnames) != len(lablist):
                raise Xlsa17Error(f"{files}: {len(fnames)} file names but {labs} has {len(lablist)} labels")
            for lineno, (fname, lab) in enumerate(zip(fnames, lablist), start=1):
                if not lab.isdigit() or int(lab) not in folder_of:
                    raise Xlsa17Error(f"{labs}:{lineno}: label {lab!r} is not a class number of classes.txt")
                folder = folder_of[int(lab)]
                paths.append(str(jpeg / fname) if "/" in fname else str(jpeg / folder / fname))
                labels.append(_lookup(folder, index, f"{base / 'classes.txt'}"))
            return ImageList(paths, np.asarray(labels, dtype=np.int64), str(files))
    # 2. The folders: class folders sorted by name (not classes.txt order), files sorted by name
    _need(jpeg, layout)
    for _, folder in sorted(table, key=lambda row: row[1]):
        label = _lookup(folder, index, f"{base / 'classes.txt'}")
        d = _need(jpeg / folder, layout)
        for f in sorted(p.name for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            paths.append(str(d / f))
            labels.append(label)
    return ImageList(paths, np.asarray(labels, dtype=np.int64), str(jpeg))


def _sun_layout(root: Path, names: list[str]) -> ImageList:
    """SUN attributes: ``SUNAttributeDB/images.mat`` (or ``images.mat``), cell array ``images`` of paths
    like ``t/temple/south_asia/sun_x.jpg`` under ``images/``. Order: images.mat. Class: the folders
    between the one-letter folder and the file, joined by "_" (``temple_south_asia``)."""
    layout = "SUNAttributeDB"
    mat_path = root / "SUNAttributeDB" / "images.mat"
    if not mat_path.is_file() and (root / "images.mat").is_file():
        mat_path = root / "images.mat"
    mat = _load_mat(_need(mat_path, layout), "SUNAttributeDB/images.mat")
    if "images" not in mat:
        raise Xlsa17Error(f"{mat_path}: missing field 'images' (a cell array of image paths)")
    index = {n: i for i, n in enumerate(names)}
    paths, labels = [], []
    for i, rel in enumerate(_mat_strings(mat["images"])):
        parts = rel.replace("\\", "/").strip("/").split("/")
        if len(parts) < 3:
            raise Xlsa17Error(f"{mat_path}: images[{i}] = {rel!r}, expected 'letter/class[/sub]/file.jpg'")
        labels.append(_lookup("_".join(parts[1:-1]), index, f"{mat_path} images[{i}]"))
        paths.append(str(root / "images" / "/".join(parts)))
    return ImageList(paths, np.asarray(labels, dtype=np.int64), str(mat_path))


def _flo_layout(root: Path, n_classes: int) -> ImageList:
    """Oxford Flowers 102: ``imagelabels.mat`` (``labels`` 1..102), ``setid.mat`` and ``jpg/image_NNNNN.jpg``.

    Order: ``trnid``, then ``valid``, then ``tstid`` of setid.mat, each sorted by (label, image number);
    the label number is the class index + 1.
    """
    layout = "Oxford Flowers 102"
    lab_path, set_path = root / "imagelabels.mat", root / "setid.mat"
    labels_mat = _load_mat(_need(lab_path, layout), "imagelabels.mat")
    sets_mat = _load_mat(_need(set_path, layout), "setid.mat")
    if "labels" not in labels_mat:
        raise Xlsa17Error(f"{lab_path}: missing field 'labels'")
    flo_labels = np.asarray(labels_mat["labels"]).ravel().astype(np.int64)
    if flo_labels.size and (flo_labels.min() < 1 or flo_labels.max() > n_classes):
        raise Xlsa17Error(f"{lab_path}: labels range {flo_labels.min()}..{flo_labels.max()}, expected 1..{n_classes}")
    order: list[int] = []
    for key in ("trnid", "valid", "tstid"):
        if key not in sets_mat:
            raise Xlsa17Error(f"{set_path}: missing field {key!r}")
        ids = np.asarray(sets_mat[key]).ravel().astype(np.int64)
        if ids.size and (ids.min() < 1 or ids.max() > len(flo_labels)):
            raise Xlsa17Error(f"{set_path}: {key} has image numbers {ids.min()}..{ids.max()}, "
                              f"expected 1..{len(flo_labels)}")
        order.extend(sorted((int(i) for i in ids), key=lambda i: (int(flo_labels[i - 1]), i)))
    if len(set(order)) != len(order):
        raise Xlsa17Error(f"{set_path}: trnid, valid and tstid repeat {len(order) - len(set(order))} image numbers")
    paths = [str(root / "jpg" / f"image_{i:05d}.jpg") for i in order]
    labels = np.asarray([flo_labels[i - 1] - 1 for i in order], dtype=np.int64)
    return ImageList(paths, labels, f"{set_path} + {lab_path.name}")
