"""The final ZSL classifier: a backbone and a head over *all* classes (seen + unseen).

Backbones: ``clip`` (the CLIP image tower, frozen), ``clip-finetune`` (the same, trained with a
10x smaller learning rate), ``resnet18`` (torchvision, from scratch). Saved with safetensors only
(``OUT/classifier/{config.json, weights.safetensors, classes.json}``); a frozen CLIP tower is not
copied into the weights file, it is reloaded from the reference in config.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from digzsl_ray.config import ConfigError
from digzsl_ray.images import normalise, resize_for
from digzsl_ray.io import atomic_path, write_json
from digzsl_ray.models.presets import ModelLoadError

WEIGHTS, CONFIG, CLASSES = "weights.safetensors", "config.json", "classes.json"


class PrototypeHead(nn.Module):
    """Cosine classifier initialised from the class prototypes: ``logits = s * cos(f, w_c)``.

    At initialisation it *is* CLIP zero-shot over all classes; training on real seen and synthetic
    unseen images moves the class weights from there (a common warm start for CLIP classifiers).
    """

    def __init__(self, prototypes: torch.Tensor, scale: float = 50.0):
        super().__init__()
        self.weight = nn.Parameter(F.normalize(prototypes.float(), dim=-1).clone())
        self.log_scale = nn.Parameter(torch.tensor(float(scale)).log())

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.log_scale.exp() * F.normalize(f, dim=-1) @ F.normalize(self.weight, dim=-1).t()


class ZSLClassifier(nn.Module):
    """uint8 or 0..1 images ``[B, 3, H, W]`` -> logits ``[B, C]``."""

    def __init__(self, backbone: str, num_classes: int, head: str, image_size: int, mean, std, clip_model=None,
                 feat_dim: int | None = None, prototypes: torch.Tensor | None = None, proto_scale: float = 50.0):
        super().__init__()
        self.kind, self.image_size, self.mean, self.std = backbone, image_size, tuple(mean), tuple(std)
        if backbone in ("clip", "clip-finetune"):
            if clip_model is None:
                raise ConfigError(f"classifier.backbone: {backbone!r} needs a CLIP model")
            self.backbone = clip_model.visual
            if backbone == "clip":
                self.backbone.requires_grad_(False).eval()
            dim = feat_dim or int(clip_model.visual.output_dim)
        elif backbone == "resnet18":
            import torchvision

            net = torchvision.models.resnet18(weights=None, num_classes=num_classes)
            dim = net.fc.in_features
            net.fc = nn.Identity()
            self.backbone = net
        else:
            raise ConfigError(f"classifier.backbone: got {backbone!r}, expected 'clip', 'clip-finetune' or 'resnet18'")
        if head == "prototypes":
            if prototypes is None or prototypes.shape != (num_classes, dim):
                raise ConfigError(f"classifier.head: 'prototypes' needs class prototypes of shape ({num_classes}, {dim}) "
                                 f"in the backbone's feature space (a CLIP backbone), got "
                                 f"{None if prototypes is None else tuple(prototypes.shape)}")
            self.head = PrototypeHead(prototypes, proto_scale)
        elif head == "linear":
            self.head = nn.Linear(dim, num_classes)
        else:
            self.head = nn.Sequential(nn.Linear(dim, 512), nn.GELU(), nn.Dropout(0.1), nn.Linear(512, num_classes))
        self.head_kind = head

    def train(self, mode: bool = True):
        super().train(mode)
        if self.kind == "clip":
            self.backbone.eval()  # frozen tower: no dropout/batch-norm updates
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x01 = x.float().div(255.0) if x.dtype == torch.uint8 else x.float()
        x = normalise(resize_for(x01, self.image_size), self.mean, self.std)
        if self.kind == "clip":
            with torch.no_grad():
                f = self.backbone(x)
        else:
            f = self.backbone(x)
        f = f.float()
        return F.normalize(f, dim=-1) if self.kind.startswith("clip") else f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """What the weights file holds: the head, plus the backbone unless it is the frozen CLIP."""
        sd = self.state_dict()
        if self.kind == "clip":
            sd = {k: v for k, v in sd.items() if k.startswith("head.")}
        return {k: v.detach().cpu().contiguous() for k, v in sd.items()}


def param_groups(model: ZSLClassifier, lr: float, weight_decay: float) -> list[dict]:
    groups = [{"params": list(model.head.parameters()), "lr": lr, "weight_decay": weight_decay}]
    if model.kind == "clip-finetune":
        groups.append({"params": list(model.backbone.parameters()), "lr": lr * 0.1, "weight_decay": weight_decay})
    elif model.kind == "resnet18":
        groups.append({"params": list(model.backbone.parameters()), "lr": lr, "weight_decay": weight_decay})
    return groups


def input_size(models_cfg) -> int:
    """The classifier's input resolution: the configured CLIP's own image size (read from the
    loaded model's config), whatever the backbone, so images match what the foundation models see."""
    from digzsl_ray.models.presets import clip_image_size, load_clip

    return clip_image_size(load_clip(models_cfg.clip, models_cfg.clip_pretrained)[0])


def build_classifier(cfg_cls, models_cfg, num_classes: int, device, prototypes: torch.Tensor | None = None,
                     clip_model=None) -> ZSLClassifier:
    """A fresh classifier for a run config. Input size and normalisation come from the configured
    CLIP model (loaded for the CLIP backbones, read for ResNet-18 so both see the same images; pass
    ``clip_model`` when it is already loaded). A prototype head starts at CLIP's own logit scale, so
    the untrained classifier *is* the frozen CLIP's zero-shot classifier."""
    from digzsl_ray.features import logit_scale
    from digzsl_ray.models.presets import clip_image_size, clip_norm, load_clip

    if cfg_cls.backbone.startswith("clip"):
        if clip_model is None:
            clip_model, _, _ = load_clip(models_cfg.clip, models_cfg.clip_pretrained, device=device)
        size, (mean, std) = clip_image_size(clip_model), clip_norm(clip_model)
        return ZSLClassifier(cfg_cls.backbone, num_classes, cfg_cls.head, size, mean, std, clip_model,
                             prototypes=prototypes, proto_scale=logit_scale(clip_model)).to(device)
    clip_model, _, _ = load_clip(models_cfg.clip, models_cfg.clip_pretrained)  # on the CPU, read and dropped
    size, (mean, std) = clip_image_size(clip_model), clip_norm(clip_model)
    del clip_model
    return ZSLClassifier("resnet18", num_classes, cfg_cls.head, size, mean, std).to(device)


def save_classifier(out: str | Path, model: ZSLClassifier, classes: list[str], seen: list[int], unseen: list[int],
                    models_cfg, extra: dict | None = None) -> None:
    from safetensors.torch import save_file

    out = Path(out)
    with atomic_path(out / WEIGHTS) as tmp:
        save_file(model.trainable_state(), str(tmp))
    write_json(out / CLASSES, {"classes": classes, "seen": seen, "unseen": unseen})
    write_json(out / CONFIG, {"backbone": model.kind, "head": model.head_kind, "image_size": model.image_size,
                              "mean": list(model.mean), "std": list(model.std), "num_classes": len(classes),
                              "clip": models_cfg.clip, "clip_pretrained": models_cfg.clip_pretrained,
                              **(extra or {})})


def load_classifier(path: str | Path, device: str | torch.device = "cpu",
                    clip_model: ZSLClassifier | None = None) -> tuple[ZSLClassifier, dict, dict]:
    """``(model in eval mode, config, classes)``. Reads safetensors and JSON only (nothing unpickled).

    ``clip_model``: an already loaded classifier with a frozen CLIP tower of the same reference;
    its tower is shared instead of loaded again (serving several versions of one run)."""
    from safetensors.torch import load_file

    from digzsl_ray.models.presets import load_clip

    path = Path(path)
    cfg = json.loads((path / CONFIG).read_text())
    classes = json.loads((path / CLASSES).read_text())
    shared = clip_model
    clip_model = None
    if (shared is not None and cfg["backbone"] == "clip" and shared.kind == "clip"
            and getattr(shared, "clip_ref", None) == (cfg["clip"], cfg.get("clip_pretrained", ""))):
        import types

        clip_model = types.SimpleNamespace(visual=shared.backbone)
    elif cfg["backbone"].startswith("clip"):
        clip_model, _, _ = load_clip(cfg["clip"], cfg.get("clip_pretrained", ""), device=device)
    state = load_file(str(path / WEIGHTS))
    protos = state["head.weight"] if cfg["head"] == "prototypes" else None
    model = ZSLClassifier(cfg["backbone"], cfg["num_classes"], cfg["head"], cfg["image_size"], cfg["mean"], cfg["std"],
                          clip_model, prototypes=protos)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or (cfg["backbone"] != "clip" and missing) or any(k.startswith("head.") for k in missing):
        raise ModelLoadError(f"{path / WEIGHTS}: weights do not match config.json (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")
    model.clip_ref = (cfg.get("clip"), cfg.get("clip_pretrained", ""))
    return model.to(device).eval(), cfg, classes
