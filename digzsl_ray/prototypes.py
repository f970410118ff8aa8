"""Class prototypes: prompt-ensembled, L2-normalised CLIP text embeddings of class names.

For class c with name n_c and templates T: ``p_c = normalise(mean_t normalise(E_text(t(n_c))))``
(open_clip's ``build_zero_shot_classifier`` recipe). Saved to ``OUT/prototypes.safetensors``
with the class names in the metadata, so every later stage checks it uses the same classes.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from digzsl_ray.io import atomic_path

PROTOTYPES_FILE = "prototypes.safetensors"


@torch.no_grad()
def build_prototypes(model, tokenizer, names: list[str], templates: list[str], batch: int = 256,
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """Prototypes ``[C, D]`` (unit rows) for class ``names``.

    Args:
        model: an open_clip model (``encode_text``).
        tokenizer: its tokenizer (``tokenizer(list[str]) -> LongTensor [B, L]``).
        templates: format strings with one ``{}`` for the class name.
    """
    for t in templates:
        if "{}" not in t:
            raise ValueError(f"prototypes.templates: got {t!r}; every template needs a '{{}}' for the class name")
    texts = [t.format(n) for n in names for t in templates]
    embs = []
    for i in range(0, len(texts), batch):
        ids = tokenizer(texts[i : i + batch]).to(device)
        embs.append(F.normalize(model.encode_text(ids).float(), dim=-1))
    e = torch.cat(embs).view(len(names), len(templates), -1).mean(dim=1)
    return F.normalize(e, dim=-1).cpu()


def save_prototypes(path: str | Path, protos: torch.Tensor, names: list[str], extra: dict | None = None) -> None:
    from safetensors.torch import save_file

    meta = {"class_names": json.dumps(names)}
    for k, v in (extra or {}).items():
        meta[k] = json.dumps(v)
    with atomic_path(path) as tmp:
        save_file({"prototypes": protos.contiguous().float()}, str(tmp), metadata=meta)


def load_prototypes(path: str | Path) -> tuple[torch.Tensor, list[str], dict]:
    """``(prototypes [C, D], class names, other metadata)``."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        protos = f.get_tensor("prototypes")
    names = json.loads(meta.pop("class_names", "[]"))
    return protos, names, {k: json.loads(v) for k, v in meta.items()}
