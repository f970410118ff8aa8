"""A served classifier without Ray: load one version's model and turn uint8 images into the
probabilities the endpoint ranks (the Classifier deployment and the Python API share these)."""

from __future__ import annotations

import numpy as np


def load_model(classifier_dir: str, method: str = "", device="cpu", shared_clip=None):
    """The model of a classifier folder: the method's own serving loader (multi-label: per-label
    probabilities) or the single-label classifier (logits), its frozen CLIP tower ``shared_clip``
    when given (every version of a run shares it; only the head differs)."""
    from digzsl_ray.classifier import load_classifier
    from digzsl_ray.methods import get_method

    loader = get_method(method).serve_loader if method else None
    if loader is not None:
        return loader(classifier_dir, device)
    return load_classifier(classifier_dir, device, clip_model=shared_clip)[0]


def probabilities(model, images: np.ndarray, multi_label: bool, device="cpu") -> np.ndarray:
    """``images`` uint8 ``[B, 3, S, S]`` -> ``[B, C]``: per-label probabilities (multi-label) or the
    softmax over the classes."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    with torch.no_grad():
        o = model(x).float()
        return (o if multi_label else o.softmax(-1)).cpu().numpy()
