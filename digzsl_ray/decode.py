"""Decoding an image file as a viewer shows it, without torch (the data checks use it too)."""

from __future__ import annotations

import numpy as np
from PIL import Image

BACKGROUND = (255, 255, 255)  # transparent pixels are composited on white


_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}
_HAS_ALPHA = ("RGBA", "LA", "PA", "La", "RGBa")


def _oriented(im: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says. Only the orientation tag is read, so a
    malformed EXIF block elsewhere never makes a viewable image unreadable."""
    try:
        orientation = im.getexif().get(0x0112)
    except Exception:  # noqa: BLE001 (unreadable EXIF: show the pixels as stored)
        return im
    method = _TRANSPOSE.get(orientation) if isinstance(orientation, int) else None
    return im.transpose(method) if method is not None else im


def to_rgb(im: Image.Image) -> Image.Image:
    """An RGB image as a viewer shows it: EXIF orientation applied (phone photos), 16- and 32-bit
    grayscale scaled to 8 bits (``convert("RGB")`` would clip it to almost white), float images in
    0..1 scaled, transparency composited on :data:`BACKGROUND` (instead of whatever RGB hides under
    transparent pixels). Integer arithmetic: about 5 bytes per pixel beyond the decoded image."""
    im = _oriented(im)
    transparency = im.info.get("transparency")
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        arr = np.asarray(im)
        mask = (arr == transparency) if isinstance(transparency, int) and im.mode != "F" else None
        if im.mode == "F":
            top = 1.0 if float(np.nanmax(arr, initial=0.0)) <= 1.0 else 255.0
            arr8 = (np.nan_to_num(np.clip(arr, 0.0, top)) * (255.0 / top)).astype(np.uint8)
        elif im.mode.startswith("I;16") or int(arr.max(initial=0)) > 255:
            arr8 = (np.clip(arr, 0, 65535).astype(np.uint32) >> 8).astype(np.uint8)
        else:
            arr8 = np.clip(arr, 0, 255).astype(np.uint8)
        if mask is not None and mask.any():
            arr8 = np.where(mask, np.uint8(BACKGROUND[0]), arr8)
        im = Image.fromarray(arr8, "L")
    elif im.mode in _HAS_ALPHA or (im.mode in ("P", "L", "RGB", "1") and transparency is not None):
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, BACKGROUND + (255,)), rgba)
    return im.convert("RGB")


def fit_square(im: Image.Image, size: int) -> Image.Image:
    """Centre square of the image, resized to ``size x size`` (bicubic).

    Cropping before resizing keeps the work bounded by the input's pixel count (a 1 x 200,000 image
    never becomes a huge intermediate).
    """
    im = to_rgb(im)
    w, h = im.size
    if (w, h) == (size, size):
        return im
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return im.resize((size, size), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side))




def image_problem(path) -> str | None:
    """Why the image file at ``path`` cannot be used (``"missing"``, ``"unreadable (...)"``), or None.

    Opens it the way training will: a structural check, a full decode, and :func:`to_rgb`. One
    check for every reader (datasets and captioned folders)."""
    try:
        with Image.open(path) as im:
            im.verify()  # cheap structural check; truncated files fail here or on load
        with Image.open(path) as im:
            im.load()
            to_rgb(im)
    except FileNotFoundError:
        return "missing"
    except Exception as e:  # noqa: BLE001 (PIL raises many types for corrupt files)
        return f"unreadable ({type(e).__name__}: {str(e)[:120]})"
    return None
