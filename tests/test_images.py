"""Image decoding matches what a viewer shows: EXIF orientation, 16-bit grayscale, transparency."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from digzsl_ray.images import BACKGROUND, augment, fit_square, to_rgb


def _reopen(im: Image.Image, fmt: str, **kw) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return Image.open(io.BytesIO(buf.getvalue()))


def test_16_bit_grayscale_is_scaled_not_clipped():
    arr = np.full((8, 8), 32768, dtype=np.uint16)  # mid grey in 16 bits
    for fmt in ("PNG", "TIFF"):
        im = _reopen(Image.fromarray(arr), fmt)
        out = np.asarray(to_rgb(im))
        assert out.shape == (8, 8, 3) and abs(int(out.mean()) - 128) <= 1, (fmt, im.mode, out.mean())


def test_exif_orientation_is_applied():
    arr = np.zeros((10, 20, 3), dtype=np.uint8)
    arr[:, :10] = 255  # left half white, landscape 20x10
    im = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    out = to_rgb(_reopen(im, "JPEG", exif=exif.tobytes(), quality=95))
    assert out.size == (10, 20)  # portrait, as a viewer shows it
    top = np.asarray(out)[:10].mean()
    assert top > 200  # the white half is now on top


def test_transparent_pixels_are_composited_on_the_background():
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # red hidden under fully transparent pixels
    out = np.asarray(to_rgb(_reopen(Image.fromarray(rgba, "RGBA"), "PNG")))
    assert (out == np.array(BACKGROUND, dtype=np.uint8)).all()
    pal = Image.fromarray(np.zeros((4, 4), dtype=np.uint8), "P")
    pal.putpalette([0, 0, 0] * 256)
    pal.info["transparency"] = 0
    assert (np.asarray(to_rgb(_reopen(pal, "PNG"))) == 255).all()


def test_plain_rgb_is_unchanged_and_augmentation_shift_scales_with_size():
    import torch

    arr = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    assert (np.asarray(fit_square(Image.fromarray(arr), 32)) == arr).all()
    x = torch.zeros(64, 3, 32, 32, dtype=torch.uint8)
    x[..., 15:17, 15:17] = 255
    y = augment(x, torch.Generator().manual_seed(0))
    # the bright 2x2 block moves by at most 32/16 = 2 pixels in each direction
    rows = [int(torch.nonzero(im[0].max(1).values).min()) for im in y]
    assert min(rows) >= 13 and max(rows) <= 17 and len(set(rows)) > 1


def test_malformed_exif_does_not_make_an_image_unreadable():
    arr = np.zeros((10, 20, 3), dtype=np.uint8)
    arr[:, :10] = 255
    import struct

    # A little-endian TIFF IFD: Orientation = 6 (SHORT), and XResolution stored as ASCII "abc" where
    # a RATIONAL belongs (PIL's exif_transpose fails when it rewrites such a block).
    ifd = struct.pack("<H", 2) + struct.pack("<HHI", 0x0112, 3, 1) + struct.pack("<HH", 6, 0)
    ifd += struct.pack("<HHI", 0x011A, 2, 4) + b"abc\x00" + struct.pack("<I", 0)
    exif = b"Exif\x00\x00" + b"II*\x00" + struct.pack("<I", 8) + ifd
    out = to_rgb(_reopen(Image.fromarray(arr), "JPEG", exif=exif, quality=95))
    assert out.size == (10, 20) and np.asarray(out)[:10].mean() > 200


def test_float_one_bit_and_16_bit_transparent_images():
    f = Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32), "F")
    assert abs(int(np.asarray(to_rgb(f)).mean()) - 127) <= 1
    one = Image.new("1", (4, 4), 0)
    one.info["transparency"] = 0
    assert (np.asarray(to_rgb(one)) == 255).all()
    g16 = Image.fromarray(np.array([[4, 40000]], dtype=np.uint16))
    g16.info["transparency"] = 4
    out = np.asarray(to_rgb(g16))
    assert out[0, 0].tolist() == [255, 255, 255] and out[0, 1].tolist() == [156, 156, 156]
