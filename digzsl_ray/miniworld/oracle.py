"""The MiniWorld oracle: a classifier trained on freshly rendered ground truth of all 72 classes.

It is the measuring stick of generated images (our stand-in for FID and human judgement) and is
never used as a training signal. It is trained with mild corruptions (blur, noise, colour shift,
JPEG-like softening) so that it judges the *content* of a generated image, not its texture.

Saved as ``DIR/config.json`` + ``DIR/model.safetensors``; :func:`load_oracle` restores it.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from digzsl_ray.io import atomic_path, write_json
from digzsl_ray.miniworld import world


@dataclass
class OracleArch:
    """The measuring-stick classifier: a small CNN with one head over all MiniWorld classes."""

    channels: tuple[int, ...] = (32, 64, 96)
    num_classes: int = 72
    image_size: int = 32
    extra: dict = field(default_factory=dict)


class Oracle(nn.Module):
    """Conv net: images ``[B, 3, 32, 32]`` in 0..1 -> logits ``[B, num_classes]``."""

    def __init__(self, arch: OracleArch):
        super().__init__()
        self.arch = arch
        layers: list[nn.Module] = []
        cin = 3
        for c in arch.channels:
            layers += [nn.Conv2d(cin, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                       nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            cin = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(cin, arch.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - 0.5) / 0.25
        return self.head(self.features(x).mean(dim=(2, 3)))


def render_batch(specs: list[world.ClassSpec], labels: np.ndarray, seed: int, stream: int, start: int) -> torch.Tensor:
    """Render ``labels`` (indices into ``specs``) as a float batch ``[B, 3, 32, 32]`` in 0..1."""
    ims = [np.asarray(world.render(specs[int(c)], seed, stream, start + i)) for i, c in enumerate(labels)]
    return torch.from_numpy(np.stack(ims)).permute(0, 3, 1, 2).float() / 255.0


def corrupt(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random mild corruptions so the oracle judges content, not pixel statistics."""
    b = x.shape[0]
    # blur half the batch with a 3x3 box of random strength
    k = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16.0
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k.expand(3, 1, 3, 3), groups=3)
    w = (torch.rand(b, 1, 1, 1, generator=gen) * (torch.rand(b, 1, 1, 1, generator=gen) < 0.5)).to(x)
    x = x * (1 - w) + blurred * w
    x = x + (torch.rand(b, 3, 1, 1, generator=gen) - 0.5) * 0.08  # colour cast
    x = x + torch.randn(x.shape, generator=gen) * torch.rand(b, 1, 1, 1, generator=gen) * 0.04
    return x.clamp(0, 1)


def train_oracle(out: str | Path, seed: int = 0, steps: int = 1500, batch: int = 128, progress: bool = True) -> dict:
    """Train on fresh renders (stream 40), measure on other fresh renders (stream 41); save to ``out``."""
    torch.manual_seed(seed)
    specs = world.all_classes()
    model = Oracle(OracleArch(num_classes=len(specs)))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    t0 = time.time()
    model.train()
    for step in tqdm(range(steps), desc="oracle", disable=not progress, mininterval=1.0):
        labels = rng.integers(0, len(specs), size=batch)
        x = corrupt(render_batch(specs, labels, seed, 40, step * batch), gen)
        loss = F.cross_entropy(model(x), torch.from_numpy(labels))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    acc = evaluate_oracle(model, seed=seed + 1, n_per_class=20)
    meta = {"arch": asdict(OracleArch(num_classes=len(specs))), "classes": [s.name for s in specs],
            "train_steps": steps, "batch": batch, "train_seconds": round(time.time() - t0, 1),
            "held_out_acc": acc}
    save_oracle(model, meta, out)
    return meta


@torch.no_grad()
def evaluate_oracle(model: Oracle, seed: int, n_per_class: int = 20) -> float:
    """Accuracy (percent) on freshly rendered held-out images (stream 41)."""
    specs = world.all_classes()
    labels = np.repeat(np.arange(len(specs)), n_per_class)
    x = render_batch(specs, labels, seed, 41, 0)
    pred = torch.cat([model(x[i : i + 512]).argmax(1) for i in range(0, len(x), 512)])
    return float((pred.numpy() == labels).mean() * 100)


def save_oracle(model: Oracle, meta: dict, out: str | Path) -> None:
    out = Path(out)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(out / "model.safetensors") as tmp:
        save_file(state, str(tmp))
    write_json(out / "config.json", meta)


def load_oracle(path: str | Path) -> tuple[Oracle, list[str]]:
    """``(model in eval mode, class names)`` from a saved oracle directory."""
    path = Path(path)
    meta = json.loads((path / "config.json").read_text())
    arch = meta["arch"]
    model = Oracle(OracleArch(channels=tuple(arch["channels"]), num_classes=arch["num_classes"], image_size=arch["image_size"]))
    state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path / "model.safetensors")).items()}
    model.load_state_dict(state)
    model.eval()
    return model, list(meta["classes"])


@torch.no_grad()
def oracle_predict(model: Oracle, images: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """Class indices for images ``[N, 3, H, W]`` in 0..1 (resized to 32x32 if needed)."""
    if images.shape[-1] != model.arch.image_size:
        images = F.interpolate(images, size=model.arch.image_size, mode="bilinear", antialias=True, align_corners=False)
    return torch.cat([model(images[i : i + batch].float()).argmax(1) for i in range(0, len(images), batch)])
