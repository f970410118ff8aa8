"""Image features x of every split: extraction (Ray Data actors run :class:`FeatureExtractor`),
the CNN backbone fine-tuned with cross-entropy, Parquet shards, and the xlsa17 ``res101.mat``.

``OUT/features/<split>/part-NNNNN.parquet``: one row per image of the split, columns ``index``
(position in the split's item list), ``label``, ``path``, ``feature`` (list<float32>).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from digzsl_ray.methods.zerodiff.folds import SPLIT_NAMES  # noqa: F401


# 1. Backbones --------------------------------------------------------------------------------------
def build_cnn(arch: str, num_classes: int, weights: str = "") -> nn.Module:
    """A torchvision ResNet with a ``num_classes`` head; ``weights``: a state_dict file to start from
    (its fc layer is dropped when the class count differs)."""
    import torchvision

    net = getattr(torchvision.models, arch)(weights=None)
    if weights:
        if str(weights).endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(str(weights))
        else:  # a torchvision .pth: tensors only (weights_only, nothing else unpickled)
            state = torch.load(weights, map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        net.load_state_dict(state, strict=False)
    net.fc = nn.Linear(net.fc.in_features, num_classes)
    return net


def cnn_features(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Pooled penultimate features (2048-d for ResNet-50/101, 512-d for ResNet-18/34)."""
    fc, net.fc = net.fc, nn.Identity()
    try:
        return net(x)
    finally:
        net.fc = fc


class FeatureExtractor:
    """Ray Data actor: a batch of image paths -> features. ``spec``: {"backbone": "clip", "clip",
    "clip_pretrained"} or {"backbone": "cnn", "cnn_dir"}; plus "device", "threads"."""

    def __init__(self, spec: dict):
        from digzsl_ray.models.presets import pick_device

        torch.set_num_threads(int(spec.get("threads", 1)))
        self.device = pick_device(spec.get("device", "auto"))
        self.kind = spec["backbone"]
        if self.kind == "clip":
            from digzsl_ray.models.presets import clip_image_size, clip_norm, load_clip

            self.model, _, _ = load_clip(spec["clip"], spec.get("clip_pretrained", ""), device=self.device)
            self.model.eval()
            self.size, (self.mean, self.std) = clip_image_size(self.model), clip_norm(self.model)
        else:
            self.model, meta = load_cnn(spec["cnn_dir"], self.device)
            self.size, self.mean, self.std = meta["image_size"], meta["mean"], meta["std"]

    @torch.no_grad()
    def features(self, images_uint8: torch.Tensor) -> np.ndarray:
        from digzsl_ray.images import normalise, resize_for

        x = normalise(resize_for(images_uint8.to(self.device).float().div(255.0), self.size), self.mean, self.std)
        if self.kind == "clip":
            f = nn.functional.normalize(self.model.encode_image(x).float(), dim=-1)
        else:
            f = cnn_features(self.model, x).float()
        return f.cpu().numpy().astype(np.float32)

    def __call__(self, batch: dict) -> dict:
        from digzsl_ray.images import load_images

        paths = [str(p) for p in batch["path"]]
        return {**{k: batch[k] for k in batch}, "feature": self.features(load_images(paths, self.size))}


CNN_MEAN, CNN_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def save_cnn(out: Path, net: nn.Module, meta: dict) -> None:
    from safetensors.torch import save_file

    from digzsl_ray.io import atomic_path, write_json

    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "weights.safetensors") as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(tmp))
    write_json(out / "config.json", meta)


def load_cnn(path: str | Path, device="cpu") -> tuple[nn.Module, dict]:
    import json

    from safetensors.torch import load_file

    path = Path(path)
    meta = json.loads((path / "config.json").read_text())
    net = build_cnn(meta["arch"], meta["num_classes"])
    net.load_state_dict(load_file(str(path / "weights.safetensors")))
    return net.to(device).eval(), meta


def cnn_epoch(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, opt, batch: int, size: int,
              gen: torch.Generator, device) -> float:
    """One cross-entropy epoch over uint8 images (random flips and shifts)."""
    from digzsl_ray.images import augment, normalise, resize_for

    net.train()
    perm = torch.randperm(len(images), generator=gen)
    total = 0.0
    for i in range(0, len(images), batch):
        idx = perm[i:i + batch]
        x = augment(images[idx], gen).to(device).float().div(255.0)
        x = normalise(resize_for(x, size), CNN_MEAN, CNN_STD)
        loss = nn.functional.cross_entropy(net(x), labels[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += float(loss) * len(idx)
    return total / max(len(images), 1)


@torch.no_grad()
def cnn_loss(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, size: int, device, batch: int = 256) -> float:
    from digzsl_ray.images import normalise, resize_for

    net.eval()
    total = 0.0
    for i in range(0, len(images), batch):
        x = normalise(resize_for(images[i:i + batch].to(device).float().div(255.0), size), CNN_MEAN, CNN_STD)
        total += float(nn.functional.cross_entropy(net(x), labels[i:i + batch].to(device), reduction="sum"))
    return total / max(len(images), 1)


# 2. Parquet shards ---------------------------------------------------------------------------------
def write_feature_shards(d: Path, index: np.ndarray, labels: np.ndarray, paths: list[str], feats: np.ndarray,
                         rows_per_shard: int = 50_000) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from digzsl_ray.io import atomic_path

    d.mkdir(parents=True, exist_ok=True)
    order = np.argsort(index, kind="stable")
    names = []
    for k, s in enumerate(range(0, max(len(order), 1), rows_per_shard)):
        sel = order[s:s + rows_per_shard]
        dim = feats.shape[1] if feats.ndim == 2 else 0
        flat = pa.array(feats[sel].astype(np.float32).ravel())
        col = pa.FixedSizeListArray.from_arrays(flat, dim) if dim else pa.array([], pa.list_(pa.float32()))
        table = pa.table({"index": pa.array(index[sel].astype(np.int64)), "label": pa.array(labels[sel].astype(np.int64)),
                          "path": pa.array([paths[i] for i in sel]), "feature": col})
        name = f"part-{k:05d}.parquet"
        with atomic_path(d / name) as tmp:
            pq.write_table(table, str(tmp))
        names.append(name)
    return names


def read_features(d: Path) -> tuple[np.ndarray, np.ndarray]:
    """(features [N, D] float32 in split order, labels [N]) of one split's shards."""
    import pyarrow.parquet as pq

    parts = sorted(Path(d).glob("part-*.parquet"))
    if not parts:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
    idx, lab, feats = [], [], []
    for p in parts:
        t = pq.read_table(p)
        idx.append(t["index"].to_numpy())
        lab.append(t["label"].to_numpy())
        col = t["feature"].combine_chunks()
        dim = col.type.list_size
        feats.append(col.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim))
    idx, lab, x = np.concatenate(idx), np.concatenate(lab), np.concatenate(feats).astype(np.float32)
    order = np.argsort(idx, kind="stable")
    return x[order], lab[order]


def load_features(features_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{split: (features, labels)} of every split's shards."""
    return {s: read_features(Path(features_dir) / s) for s in SPLIT_NAMES}


# 3. xlsa17 res101.mat -----------------------------------------------------------------------------
def res101_rows(path: Path, dataset: str, image_root: Path, n_classes: int, items: list) -> np.ndarray:
    """Features [len(items), 2048] of split ``items`` from xlsa17's res101.mat (``features`` is
    2048 x N; rows are matched to items by the same remapped ``image_files`` paths the split reader
    built the items from)."""
    from digzsl_ray.data.xlsa17 import Xlsa17Error, _images_from_res101, _load_mat

    images = _images_from_res101(path, dataset, image_root, n_classes)
    mat = _load_mat(path, "xlsa17 res101.mat", variable_names=["features"])
    if "features" not in mat:
        raise Xlsa17Error(f"{path}: missing field 'features' (2048 x N image features)")
    f = np.asarray(mat["features"], dtype=np.float32)
    if f.ndim != 2 or len(images.paths) not in f.shape:
        raise Xlsa17Error(f"{path}: 'features' has shape {f.shape}; expected 2048 x {len(images.paths)} (one column "
                          f"per image_files entry)")
    if f.shape[1] != len(images.paths):
        f = f.T
    f = f.T  # [N, 2048]
    row = {p: i for i, p in enumerate(images.paths)}
    try:
        return f[[row[it.path] for it in items]]
    except KeyError as e:
        raise Xlsa17Error(f"{path}: image {e} of the split is not in image_files") from None
