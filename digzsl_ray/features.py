"""Frozen-CLIP image features, computed once per image set and cached in the run directory, and the
frozen CLIP's zero-shot scores with the run's prototypes (the floor every method is compared with).

A frozen tower maps an image to the same feature every time, so a stage that trains a head on it
(a method's head on a frozen CLIP) extracts the features of a fixed number of
views once (view 0 clean, the others flipped and shifted by :func:`digzsl_ray.images.augment`) and
trains on those tensors. :class:`FeatureCache` keeps them under ``OUT/features/<key>.safetensors``,
keyed by the CLIP reference, the input size, the images (their paths, or a hash of their bytes),
the number of views and the augmentation seed, so the classifier variants of a run and a rerun reuse
them and any change of those inputs computes new ones. Plain torch; no ray.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from digzsl_ray.images import augment, normalise, resize_for
from digzsl_ray.io import atomic_path

DEFAULT_LOGIT_SCALE = 100.0


@torch.no_grad()
def extract_features(clip_model, images: torch.Tensor, image_size: int, mean, std, device: torch.device,
                     views: int = 1, seed: int = 0, batch: int = 256, progress: bool = False,
                     desc: str = "features") -> torch.Tensor:
    """Frozen-encoder features ``[V, N, D]`` of uint8 images; view 0 is clean, others augmented."""
    from tqdm.auto import tqdm

    from digzsl_ray.logs import bars

    gen = torch.Generator().manual_seed(seed)
    out = []
    for v in range(views):
        feats = []
        for i in tqdm(range(0, len(images), batch), desc=f"{desc} (view {v + 1}/{views})",
                      disable=not bars(progress), leave=False, mininterval=1.0):
            x = images[i : i + batch]
            if v > 0:
                x = augment(x, gen)
            x01 = x.to(device).float().div(255.0)
            x = normalise(resize_for(x01, image_size), mean, std)
            feats.append(clip_model.encode_image(x).float().cpu())
        out.append(torch.cat(feats) if feats else torch.empty(0, _out_dim(clip_model)))
    return torch.stack(out)


def _out_dim(clip_model) -> int:
    return int(getattr(clip_model.visual, "output_dim", 0) or 0)


def logit_scale(clip_model) -> float:
    """The CLIP model's learned logit scale (``exp(logit_scale)``; 100 when it has none)."""
    ls = getattr(clip_model, "logit_scale", None)
    return float(ls.detach().exp()) if ls is not None else DEFAULT_LOGIT_SCALE


def zero_shot_logits(feats: torch.Tensor | np.ndarray, prototypes: torch.Tensor, scale: float) -> np.ndarray:
    """CLIP zero-shot logits ``scale * cos(f, p_c)`` ``[N, C]`` of image features ``[N, D]``."""
    f = torch.as_tensor(np.asarray(feats), dtype=torch.float32)
    if not len(f):
        return np.zeros((0, prototypes.shape[0]), dtype=np.float32)
    p = F.normalize(prototypes.float(), dim=-1)
    return (scale * F.normalize(f, dim=-1) @ p.t()).numpy()


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    z = logits - logits.max(axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis, keepdims=True)


def clip_filter(logits: np.ndarray, labels: np.ndarray, columns: list[int]) -> np.ndarray:
    """He et al.'s CLIP filter (ICLR 2023): keep an image whose zero-shot probability of its own class,
    the softmax over ``columns`` (the classes it could be confused with), exceeds ``1 / len(columns)``.

    ``logits [N, C]`` over all classes, ``labels [N]`` class indices (each in ``columns``) -> bool ``[N]``.
    """
    if not len(labels):
        return np.zeros(0, dtype=bool)
    cols = np.asarray(columns)
    pos = {int(c): i for i, c in enumerate(cols)}
    p = softmax(np.asarray(logits, dtype=np.float64)[:, cols])
    own = p[np.arange(len(labels)), [pos[int(y)] for y in labels]]
    return own > 1.0 / len(cols)


def images_key(paths: list[str] | None = None, blobs: list[bytes] | None = None) -> str:
    """A key of an image list: its paths (a dataset's files do not change under a run), or its bytes."""
    h = hashlib.sha256()
    if paths is not None:
        for p in paths:
            h.update(str(p).encode() + b"\0")
    for b in blobs or []:
        h.update(hashlib.sha256(b).digest())
    return h.hexdigest()[:16]


class FeatureCache:
    """Features ``[V, N, D]`` under ``root/<key>.safetensors`` (atomic writes; a missing root caches nothing)."""

    def __init__(self, root: str | Path | None):
        self.root = Path(root) if root else None

    def key(self, clip_ref: tuple[str, str], image_size: int, images: str, views: int, seed: int) -> str:
        blob = json.dumps([list(clip_ref), image_size, images, views, seed], sort_keys=True).encode()
        return hashlib.sha1(blob).hexdigest()[:16]

    def get(self, key: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        from safetensors.torch import load_file, save_file

        path = self.root / f"{key}.safetensors" if self.root else None
        if path is not None and path.is_file():
            try:
                return load_file(str(path))["features"]
            except Exception:  # noqa: BLE001 (a damaged cache file is recomputed, never trusted)
                path.unlink(missing_ok=True)
        feats = compute()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                save_file({"features": feats.contiguous()}, str(tmp))
        return feats


class FrozenCLIP:
    """A frozen CLIP image tower with its input size, normalisation and a feature cache."""

    def __init__(self, clip_ref: str, pretrained: str = "", device: str | torch.device = "cpu",
                 cache_dir: str | Path | None = None, model=None):
        from digzsl_ray.models.presets import clip_image_size, clip_norm, load_clip, pick_device

        self.device = device if isinstance(device, torch.device) else pick_device(device)
        self.model = model if model is not None else load_clip(clip_ref, pretrained, device=self.device)[0]
        self.ref = (clip_ref, pretrained)
        self.size = clip_image_size(self.model)
        self.mean, self.std = clip_norm(self.model)
        self.scale = logit_scale(self.model)
        self.cache = FeatureCache(cache_dir)

    def of_images(self, images: torch.Tensor, key: str, views: int = 1, seed: int = 0,
                  progress: bool = False, desc: str = "features") -> torch.Tensor:
        """``[V, N, D]`` features of uint8 images ``[N, 3, H, W]`` whose identity is ``key``."""
        return self.cache.get(self.cache.key(self.ref, self.size, key, views, seed),
                              lambda: extract_features(self.model, images, self.size, self.mean, self.std,
                                                       self.device, views=views, seed=seed, progress=progress,
                                                       desc=desc))

    def of_paths(self, paths: list[str], views: int = 1, seed: int = 0, progress: bool = False,
                 desc: str = "features") -> torch.Tensor:
        """``[V, N, D]`` features of image files (loaded only when not cached)."""
        from digzsl_ray.images import load_images

        key = self.cache.key(self.ref, self.size, images_key(paths=paths), views, seed)
        return self.cache.get(key, lambda: extract_features(
            self.model, load_images(paths, self.size, progress), self.size, self.mean, self.std, self.device,
            views=views, seed=seed, progress=progress, desc=desc))

    def of_pngs(self, blobs: list[bytes], views: int = 1, seed: int = 0, progress: bool = False,
                desc: str = "features") -> torch.Tensor:
        """``[V, N, D]`` features of PNG bytes (decoded only when not cached)."""
        from digzsl_ray.images import decode_png_bytes

        key = self.cache.key(self.ref, self.size, images_key(blobs=blobs), views, seed)
        return self.cache.get(key, lambda: extract_features(
            self.model, decode_png_bytes(blobs, self.size), self.size, self.mean, self.std, self.device,
            views=views, seed=seed, progress=progress, desc=desc))


# The floor every single-label method is compared with -------------------------------------------------
def clip_zero_shot_arrays(cfg, split, run_root, prototypes_path, held: tuple[list[bytes], np.ndarray] | None = None) -> dict:
    """The frozen CLIP's zero-shot probabilities with the run's prototypes (softmax at the model's logit
    scale): test images, seen val images, the trainval images of the validation classes and, when
    given, held-out synthetic unseen images ``held = (pngs, labels)``. Features are cached in
    ``run_root/features`` (shared with the classifier stage)."""
    from digzsl_ray.data.split import validation_classes
    from digzsl_ray.prototypes import load_prototypes

    protos = load_prototypes(prototypes_path)[0]
    clip = FrozenCLIP(cfg.models.clip, cfg.models.clip_pretrained, cfg.models.device,
                      cache_dir=Path(run_root) / "features")

    def probs(f) -> np.ndarray:
        return softmax(zero_shot_logits(f, protos, clip.scale))

    def of(items) -> tuple[np.ndarray, np.ndarray]:
        return probs(clip.of_paths([it.path for it in items])[0]), np.array([it.label for it in items], dtype=np.int64)

    out: dict = {}
    for key, items in (("test_seen", split.items["test_seen"]), ("test_unseen", split.items["test_unseen"]),
                       ("val", split.val)):
        out[f"{key}_scores"], out[f"{key}_labels"] = of(items)
    if held is not None:
        out["synthetic_scores"] = probs(clip.of_pngs(held[0])[0]) if held[0] else np.zeros((0, len(split.classes)))
        out["synthetic_labels"] = held[1]
    vset = set(validation_classes(split, cfg.data.val_seed))
    if vset:
        out["valclass_unseen_scores"], out["valclass_unseen_labels"] = of(
            [it for it in split.items["trainval"] if it.label in vset])
        out["valclass_classes"] = np.array(sorted(vset), dtype=np.int64)
    return out


def clip_zero_shot_reports(z: dict, seen: list[int], unseen: list[int], grid: np.ndarray) -> dict[str, dict]:
    """The floor's full report (:func:`digzsl_ray.metrics.zsl.full_report`) per calibration:
    ``synthetic`` (lambda on real seen val + the held-out synthetic images, when ``z`` has them) and
    ``valclass`` (lambda on real images only: val images of the seen classes outside the validation
    classes V against V's images, which a zero-shot model has never seen any more than the unseen ones)."""
    from digzsl_ray.metrics.zsl import choose_lambda, full_report

    zv = np.isin(z["val_labels"], seen)
    test = (z["test_seen_scores"], z["test_seen_labels"], z["test_unseen_scores"], z["test_unseen_labels"])
    out: dict = {}
    if "synthetic_scores" in z:
        out["synthetic"] = full_report(*test, z["val_scores"][zv], z["val_labels"][zv], z["synthetic_scores"],
                                       z["synthetic_labels"], seen, unseen, grid)
        out["synthetic"]["validation"]["data"] = "held-out DCT images (synthetic unseen) + real seen val images"
    if "valclass_classes" in z:
        v_set = [int(c) for c in z["valclass_classes"]]
        vs = zv & ~np.isin(z["val_labels"], v_set)
        lam, val = choose_lambda(z["val_scores"][vs], z["val_labels"][vs], z["valclass_unseen_scores"],
                                 z["valclass_unseen_labels"], [c for c in seen if c not in set(v_set)],
                                 sorted(set(unseen) | set(v_set)), grid)
        empty = np.zeros((0, z["test_seen_scores"].shape[1]))
        r = full_report(*test, empty, np.zeros(0), empty, np.zeros(0), seen, unseen, grid, lam=lam)
        r["validation"] = {"gzsl_U": val["U"], "gzsl_S": val["S"], "gzsl_H": val["H"],
                           "data": "real: val images of seen classes outside V, trainval images of V"}
        out["valclass"] = r
    return out
