"""Image loading and tensor transforms shared by the methods' models and serving.

Images become ``uint8 [N, 3, S, S]`` tensors (resize the short side to S with bicubic, centre
crop), the CLIP preprocessing of open_clip; float conversion and normalisation happen on the
device. Augmentations (flip, small shift) run on uint8 batches, deterministically per generator.
"""

from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from digzsl_ray.decode import BACKGROUND, fit_square, to_rgb  # noqa: F401 (re-exported)


def to_uint8_tensor(im: Image.Image, size: int) -> torch.Tensor:
    return torch.from_numpy(np.asarray(fit_square(im, size)).copy()).permute(2, 0, 1)


def load_images(paths: list[str], size: int, progress: bool = False, desc: str = "loading images") -> torch.Tensor:
    """``uint8 [N, 3, size, size]`` from image files."""
    out = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    from digzsl_ray.logs import bars

    for i, p in enumerate(tqdm(paths, desc=desc, disable=not bars(progress), mininterval=1.0, leave=False)):
        with Image.open(p) as im:
            out[i] = to_uint8_tensor(im, size)
    return out


def decode_png_bytes(blobs: list[bytes], size: int) -> torch.Tensor:
    out = torch.empty((len(blobs), 3, size, size), dtype=torch.uint8)
    for i, b in enumerate(blobs):
        with Image.open(io.BytesIO(b)) as im:
            out[i] = to_uint8_tensor(im, size)
    return out


def png_bytes(img01: torch.Tensor) -> bytes:
    """PNG of a ``[3, H, W]`` float image in 0..1."""
    arr = (img01.clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy())
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def normalise(x01: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.tensor(mean, device=x01.device, dtype=x01.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x01.device, dtype=x01.dtype).view(1, 3, 1, 1)
    return (x01 - m) / s


def resize_for(x01: torch.Tensor, size: int) -> torch.Tensor:
    """Differentiable resize to ``size x size`` (bicubic; antialiased when shrinking)."""
    if x01.shape[-1] == size and x01.shape[-2] == size:
        return x01
    return F.interpolate(x01, size=(size, size), mode="bicubic", align_corners=False,
                         antialias=x01.shape[-1] > size)


SHIFT_FRACTION = 1 / 16  # 2 pixels of a 32-px image, 14 of a 224-px one


def augment(x_uint8: torch.Tensor, gen: torch.Generator, shift: int | None = None) -> torch.Tensor:
    """Random horizontal flips and shifts of up to ``shift`` pixels (reflect padding); by default
    ``SHIFT_FRACTION`` of the image side, so the augmentation means the same at every resolution."""
    n, _, h, w = x_uint8.shape
    if shift is None:
        shift = max(1, round(min(h, w) * SHIFT_FRACTION))
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip.view(n, 1, 1, 1), x_uint8.flip(-1), x_uint8)
    if shift:
        pad = F.pad(x.float(), (shift, shift, shift, shift), mode="reflect")
        dx = torch.randint(0, 2 * shift + 1, (n,), generator=gen)
        dy = torch.randint(0, 2 * shift + 1, (n,), generator=gen)
        x = torch.stack([pad[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)]).to(torch.uint8)
    return x
