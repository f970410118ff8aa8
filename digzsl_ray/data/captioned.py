"""Captioned image folders: the generic input of foundation-model pretraining.

The layout is Hugging Face's ``imagefolder`` convention, so existing caption dumps work as is:

```
DIR/metadata.jsonl   one JSON object a line: {"file_name": "images/000001.png", "text": "a red circle"}
DIR/images/...       the images (paths in file_name are relative to DIR)
```
Reading validates everything up front: a line that does not parse, a missing key, an empty
caption, a missing or unreadable image is refused with the file and line that caused it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from digzsl_ray.decode import image_problem, to_rgb
from digzsl_ray.errors import UserError

METADATA = "metadata.jsonl"


class CaptionedFolderError(UserError):
    """Bad captioned folder; the message names the file and line."""


@dataclass
class CaptionedFolder:
    root: Path
    files: list[str]  # relative paths, in metadata order
    captions: list[str]

    def __len__(self) -> int:
        return len(self.files)


def read_captioned_folder(root: str | Path, check_images: bool = True) -> CaptionedFolder:
    """Parse and validate ``root/metadata.jsonl``; with ``check_images``, verify every image opens."""
    root = Path(root)
    meta = root / METADATA
    if not meta.is_file():
        raise CaptionedFolderError(f"{meta}: not found; a captioned folder needs {METADATA} (see docs/dataset-format.md)")
    files: list[str] = []
    caps: list[str] = []
    with open(meta, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise CaptionedFolderError(f"{meta}:{lineno}: not UTF-8 text (byte {e.start} of the line)") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise CaptionedFolderError(f"{meta}:{lineno}: not valid JSON ({e.msg})") from None
            except RecursionError:
                raise CaptionedFolderError(f"{meta}:{lineno}: JSON nested too deeply") from None
            if not isinstance(obj, dict) or "file_name" not in obj or "text" not in obj:
                raise CaptionedFolderError(f"{meta}:{lineno}: expected an object with 'file_name' and 'text', got {line.strip()[:80]}")
            text, name = obj["text"], obj["file_name"]
            if not isinstance(name, str) or not name.strip():
                raise CaptionedFolderError(f"{meta}:{lineno}: 'file_name' must be a relative path string, got "
                                           f"{str(name)[:80]}")
            if not isinstance(text, str) or not text.strip():
                raise CaptionedFolderError(f"{meta}:{lineno}: empty caption for {name[:80]!r}")
            files.append(name)
            caps.append(text.strip())
    if not files:
        raise CaptionedFolderError(f"{meta}: no entries")
    if check_images:
        bad: list[str] = []
        for i, rel in enumerate(tqdm(files, desc="checking images", unit="img", leave=False, mininterval=1.0)):
            reason = image_problem(root / rel)
            if reason:
                bad.append(f"{meta}:{i + 1}: {rel}: {reason}")
        if bad:
            more = f"\n... and {len(bad) - 10} more" if len(bad) > 10 else ""
            raise CaptionedFolderError(f"{len(bad)} bad image(s) in {root}:\n" + "\n".join(bad[:10]) + more)
    return CaptionedFolder(root, files, caps)


def load_images(folder: CaptionedFolder, size: int, indices: list[int] | None = None) -> np.ndarray:
    """Images as ``uint8 [N, 3, size, size]`` (RGB, resized with bicubic if needed)."""
    idx = range(len(folder)) if indices is None else indices
    out = np.empty((len(idx), 3, size, size), dtype=np.uint8)
    for j, i in enumerate(tqdm(idx, desc="loading images", unit="img", leave=False, mininterval=1.0)):
        with Image.open(folder.root / folder.files[i]) as im:
            im = to_rgb(im)  # decoded as a viewer shows it, like every other image of the project
            if im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.BICUBIC)
            out[j] = np.asarray(im).transpose(2, 0, 1)
    return out
