"""Reader for one folder of images per class (``data.format: imagefolder``).

The layout torchvision's ``ImageFolder`` and Hugging Face's ``imagefolder`` loader read:

```
ROOT/<class folder>/<image>          any depth below the class folder
TEST_ROOT/<class folder>/<image>     optional: the same class folders, holding the test images
```

* Class names are the folder names cleaned as xlsa17's are (:func:`clean_class_name`:
  ``001.Black_footed_Albatross`` -> ``black footed albatross``), in sorted folder order (a class's
  label), or ``class_names_file`` (one name a line, in that order). Names that clean to the same
  name or slug, or to nothing, are errors naming the folders.
* Images are files with an image extension (:data:`IMAGE_EXTENSIONS`, any case); other files (and
  pipes or devices, never opened), files beside the class folders, and files or folders whose names
  start with ``.`` are skipped (the count and the first few are kept in
  ``split.notes`` and reported by ``digzsl data check``). A class folder without images is an error.
* Symbolic links are followed when they point inside ``root`` or ``test_root``; a link that leads
  elsewhere, a broken link with an image extension and one file reached by two paths are errors.
* The unseen classes are named by the caller. All of their images are ``test_unseen``. A seen
  class's images are ``trainval``, and its images under ``test_root`` are ``test_seen``; without
  ``test_root``, ``test_fraction`` of each seen class (at least one image, leaving at least one) is
  held out as ``test_seen``, drawn with a generator seeded by ``test_seed`` and the class folder's
  name, so one class's draw does not depend on the others.

No image is opened here; :func:`digzsl_ray.data.validate.validate_split` opens them.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np

from digzsl_ray.data.format import DatasetFormatError
from digzsl_ray.data.split import Item, ZSLSplit
from digzsl_ray.data.xlsa17 import _read_class_names_file, clean_class_name
from digzsl_ray.slug import slugify, unsafe_name_reason

# torchvision's IMG_EXTENSIONS plus .gif, which PIL reads as well
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
MAX_LISTED = 5


class ImageFolderError(DatasetFormatError):
    """A class-folder tree that cannot be read; the message names the folder or file."""


class _Tree:
    """The image files of one tree (``root`` or ``test_root``), per class folder name."""

    def __init__(self, root: Path, key: str, allowed: list[str]):
        self.root, self.key, self.allowed = root, key, allowed
        self.images: dict[str, list[str]] = {}
        self.ignored: list[str] = []
        self._dirs: set[str] = set()

    def scan(self, real_files: dict[str, str]) -> "_Tree":
        if not self.root.is_dir():
            raise ImageFolderError(f"data.{self.key}: {self.root} is not a directory; expected one folder of "
                                   "images per class (see docs/dataset-format.md)")
        try:
            entries = sorted(os.scandir(self.root), key=lambda e: e.name)
        except OSError as e:
            raise ImageFolderError(f"data.{self.key}: {self.root} cannot be listed ({e.strerror})") from None
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if not entry.is_dir():
                self.ignored.append(entry.path)  # a file beside the class folders belongs to no class
                continue
            self.images[entry.name] = self._walk(Path(entry.path), real_files)
        if not self.images:
            raise ImageFolderError(f"data.{self.key}: {self.root} holds no class folders; imagefolder expects "
                                   f"{self.root}/<class name>/<image>")
        return self

    def _inside(self, path: str) -> str:
        """The real path of ``path``; a link that leads outside every tree is an error."""
        real = os.path.realpath(path)
        if not any(real == base or real.startswith(base + os.sep) for base in self.allowed):
            raise ImageFolderError(f"{path}: a symbolic link to {real}, outside data.root and data.test_root; "
                                   "links must stay inside the image folders")
        return real

    def _walk(self, folder: Path, real_files: dict[str, str]) -> list[str]:
        """Image files under one class folder (sorted, any depth, links followed inside the trees)."""
        out: list[str] = []
        stack = [str(folder)]
        while stack:
            d = stack.pop()
            real_dir = self._inside(d)
            if real_dir in self._dirs:
                continue  # a link back to a folder already walked (a loop)
            self._dirs.add(real_dir)
            try:
                entries = sorted(os.scandir(d), key=lambda e: e.name)
            except OSError as e:
                raise ImageFolderError(f"{d}: cannot be listed ({e.strerror})") from None
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                is_image = entry.name.lower().endswith(IMAGE_EXTENSIONS)
                if entry.is_dir():
                    stack.append(entry.path)
                elif is_image and entry.is_symlink() and not os.path.exists(entry.path):
                    raise ImageFolderError(f"{entry.path}: a broken symbolic link (to {os.readlink(entry.path)})")
                elif not (is_image and entry.is_file()):  # other files, and pipes or devices: never opened
                    self.ignored.append(entry.path)
                else:
                    real = self._inside(entry.path)
                    if real in real_files:
                        raise ImageFolderError(f"{entry.path}: the same file as {real_files[real]}; each image must "
                                               "be reachable by one path only (a link or a copy in two places)")
                    real_files[real] = entry.path
                    out.append(entry.path)
        if not out:
            raise ImageFolderError(f"data.{self.key}: class folder {folder} holds no image files "
                                   f"({', '.join(IMAGE_EXTENSIONS)})")
        return sorted(out)


def _absolute(path: str | Path) -> Path:
    return Path(os.path.abspath(os.path.expanduser(str(path))))


def class_names(folders: list[str], class_names_file: str | Path | None = None) -> list[str]:
    """Cleaned names of the sorted class ``folders`` (or ``class_names_file``'s), checked like every format's."""
    names = ([clean_class_name(f) for f in folders] if class_names_file is None
             else _read_class_names_file(class_names_file, len(folders)))
    source = "class_names_file" if class_names_file is not None else "folder"
    by_name: dict[str, str] = {}
    by_slug: dict[str, str] = {}
    for folder, name in zip(folders, names):
        reason = unsafe_name_reason(name)
        if reason:
            raise ImageFolderError(f"class folder {folder!r}: {source} name {name!r} cannot be used as a class "
                                   f"name: {reason}")
        if name in by_name:
            raise ImageFolderError(f"class folders {by_name[name]!r} and {folder!r} both give the class name "
                                   f"{name!r} (after cleaning); rename one")
        if slugify(name) in by_slug:
            raise ImageFolderError(f"class folders {by_slug[slugify(name)]!r} and {folder!r} give names with the same "
                                   f"file name {slugify(name)!r}; rename one")
        by_name[name], by_slug[slugify(name)] = folder, folder
    return names


def unseen_indices(wanted: list[str], folders: list[str], names: list[str], source: str) -> list[int]:
    """Indices of the unseen classes ``wanted``, each given as a folder name or a (cleaned) class name."""
    index = {n: i for i, n in enumerate(names)} | {f: i for i, f in enumerate(folders)}
    out: list[int] = []
    for w in wanted:
        i = index.get(w, index.get(clean_class_name(w)))
        if i is None:
            listed = ", ".join(repr(n) for n in names[:10]) + (", ..." if len(names) > 10 else "")
            raise ImageFolderError(f"{source}: unseen class {w[:100]!r} is not a class folder of data.root "
                                   f"(classes: {listed})")
        if i in out:
            raise ImageFolderError(f"{source}: unseen class {w[:100]!r} is named twice (class {names[i]!r})")
        out.append(i)
    return sorted(out)


def _held_out(paths: list[str], fraction: float, seed: int, folder: str, name: str) -> set[str]:
    """The images of one seen class held out as test_seen: round(fraction * n), at least 1, leaving 1."""
    n = len(paths)
    k = max(1, int(round(fraction * n)))
    if n - k < 1:
        raise ImageFolderError(f"data.root: class folder {folder!r} ({name!r}) has {n} image(s), too few to hold "
                               f"out data.test_fraction={fraction} as test images and keep one for training; "
                               "add images or give data.test_root")
    rng = np.random.default_rng([int(seed), zlib.crc32(folder.encode("utf-8", "surrogatepass"))])
    return {paths[i] for i in rng.permutation(n)[:k]}


def read_imagefolder(root: str | Path, unseen: list[str], test_root: str | Path | None = None,
                     test_fraction: float = 0.2, test_seed: int = 0, val_fraction: float = 0.1, val_seed: int = 0,
                     class_names_file: str | Path | None = None, unseen_source: str = "data.unseen_classes",
                     ) -> ZSLSplit:
    """Read a class-folder tree (and optionally its parallel test tree) into a :class:`ZSLSplit`.

    Args:
        root: one folder per class (the training images of seen classes; see the module docstring).
        unseen: unseen class names, each a folder name or its cleaned class name.
        test_root: a tree with the same class folders holding the test images; None or "" holds out
            ``test_fraction`` of each seen class instead.
        test_fraction, test_seed: the held-out share of each seen class and the seed of its draw.
        val_fraction, val_seed: the validation images carved out of trainval (as for every format).
        class_names_file: one class name a line, in sorted folder order, instead of the folder names.
        unseen_source: where ``unseen`` came from, for messages.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction: got {test_fraction}, expected a number in (0, 1)")
    root = _absolute(root)
    test = _absolute(test_root) if test_root else None
    allowed = [os.path.realpath(root)] + ([os.path.realpath(test)] if test else [])
    if test is not None and (allowed[1] == allowed[0] or allowed[1].startswith(allowed[0] + os.sep)
                             or allowed[0].startswith(allowed[1] + os.sep)):
        raise ImageFolderError(f"data.test_root: {test} is data.root or inside it (or holds it); the test tree "
                               "must be a separate folder")
    real_files: dict[str, str] = {}
    train = _Tree(root, "root", allowed).scan(real_files)
    folders = sorted(train.images)
    names = class_names(folders, class_names_file)
    unseen_idx = unseen_indices(list(unseen), folders, names, unseen_source)
    items: dict[str, list[Item]] = {"trainval": [], "test_seen": [], "test_unseen": []}
    ignored = list(train.ignored)
    if test is not None:
        tests = _Tree(test, "test_root", allowed).scan(real_files)
        if sorted(tests.images) != folders:
            only_train = sorted(set(folders) - set(tests.images))[:MAX_LISTED]
            only_test = sorted(set(tests.images) - set(folders))[:MAX_LISTED]
            raise ImageFolderError(f"data.test_root: {test} and data.root {root} must hold the same class folders; "
                                   f"only in root: {only_train}, only in test_root: {only_test}")
        ignored += tests.ignored
    for c, folder in enumerate(folders):
        paths = train.images[folder]
        if c in unseen_idx:  # every image of an unseen class is a test image
            extra = tests.images[folder] if test is not None else []
            items["test_unseen"] += [Item(p, (c,)) for p in paths + extra]
            continue
        if test is not None:
            held: set[str] = set()
            items["test_seen"] += [Item(p, (c,)) for p in tests.images[folder]]
        else:
            held = _held_out(paths, test_fraction, test_seed, folder, names[c])
            items["test_seen"] += [Item(p, (c,)) for p in paths if p in held]
        items["trainval"] += [Item(p, (c,)) for p in paths if p not in held]
    seen = [i for i in range(len(names)) if i not in unseen_idx]
    notes = {"ignored_files": len(ignored), "ignored_examples": ignored[:MAX_LISTED],
             "test_images": f"data.test_root {test}" if test is not None
             else f"held out: data.test_fraction {test_fraction}, data.test_seed {test_seed}"}
    name = root.parent.name if root.name.lower() in ("train", "training", "trainval") else root.name
    split = ZSLSplit(name=name or "imagefolder", classes=names, seen=seen, unseen=unseen_idx, items=items,
                     root=str(root), notes=notes)
    split.carve_val(val_fraction, val_seed)
    return split
