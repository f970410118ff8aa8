"""Running an open_clip ViT image tower at another input resolution (plain torch).

A ViT's positional embedding is a grid of ``(image_size / patch)^2`` vectors plus the class token's.
To look at larger images (multi-label scenes: MiniWorld's 64 px scenes with a 32 px CLIP; DualCoOp
and Diff-ZS-MLC feed 448 px images to CLIP) the grid is resized bicubically, the class token's
vector kept, the standard recipe of ViT fine-tuning at higher resolution (Dosovitskiy et al. 2021,
section 3.2). Everything else in the tower is resolution-independent.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _pair(v) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def set_vit_resolution(visual: nn.Module, size: int) -> bool:
    """Resize ``visual``'s positional grid in place for ``size`` x ``size`` inputs.

    Returns whether anything changed (False when ``size`` is 0 or already the tower's size).
    Raises ``ValueError`` for a tower that is not an open_clip ViT or a size that is not a multiple
    of the patch size.
    """
    if not size:
        return False
    if not hasattr(visual, "positional_embedding") or not hasattr(visual, "patch_size"):
        raise ValueError("image_size can only be changed for a ViT image tower (this one has no positional grid)")
    patch = _pair(visual.patch_size)
    if size % patch[0] or size % patch[1]:
        raise ValueError(f"image size {size} is not a multiple of the patch size {patch}")
    new = (size // patch[0], size // patch[1])
    old = _pair(visual.grid_size)
    if new == old:
        return False
    pe = visual.positional_embedding.data
    cls, grid = pe[:1], pe[1:]
    grid = grid.reshape(1, old[0], old[1], -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=new, mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(new[0] * new[1], -1).to(pe.dtype)
    visual.positional_embedding = nn.Parameter(torch.cat([cls, grid]), requires_grad=visual.positional_embedding.requires_grad)
    visual.grid_size = new
    visual.image_size = (size, size)
    return True
