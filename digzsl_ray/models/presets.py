"""Model presets and the loaders that load both MiniWorld's tiny models and the real ones.

``load_sd_pipeline("miniworld")`` and ``load_sd_pipeline("sd15")`` run the same code:
``StableDiffusionPipeline.from_pretrained(<dir or hub id>)``. ``load_clip("miniworld")`` and
``load_clip("clip-vit-l14")`` both go through ``open_clip.create_model_and_transforms``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

from digzsl_ray.errors import UserError

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "miniworld"

SD_PRESETS: dict[str, str] = {
    "miniworld": str(ASSETS / "sd"),
    "sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sd21": "stabilityai/stable-diffusion-2-1",
}
# preset -> (open_clip model name, pretrained tag)
CLIP_PRESETS: dict[str, tuple[str, str]] = {
    "miniworld": (f"local-dir:{ASSETS / 'clip'}", ""),
    "clip-vit-l14": ("ViT-L-14", "openai"),
}

_SD_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


class ModelLoadError(UserError):
    """A model reference that cannot be loaded; the message says what was expected."""


def resolve_sd(name: str) -> str:
    return SD_PRESETS.get(name, name)


def check_sd_source(name: str) -> str:
    """Resolve ``name`` and, for a local folder, verify it is a Stable Diffusion pipeline (before loading)."""
    src = resolve_sd(name)
    p = Path(src).expanduser()
    looks_local = p.exists() or src.startswith((".", "/", "~")) or src.count("/") != 1
    if not looks_local:
        return src  # a hub id: from_pretrained resolves it (needs a network or a local HF cache)
    if not p.is_dir():
        raise ModelLoadError(f"models.sd: got {name!r}; no such directory, expected a preset "
                             f"({', '.join(SD_PRESETS)}), a diffusers pipeline folder or a hub id 'org/name'")
    index = p / "model_index.json"
    if not index.is_file():
        raise ModelLoadError(f"models.sd: {p} is not a diffusers pipeline folder (no model_index.json)")
    try:
        meta = json.loads(index.read_text())
    except ValueError as e:
        raise ModelLoadError(f"models.sd: {index} is not valid JSON ({e})") from e
    cls = meta.get("_class_name", "")
    if "StableDiffusion" not in cls:
        raise ModelLoadError(f"models.sd: {p} holds a {cls or 'unknown'} pipeline; expected a StableDiffusionPipeline")
    missing = [part for part in _SD_PARTS if part not in meta or not (p / part).is_dir()]
    if missing:
        raise ModelLoadError(f"models.sd: {p} lacks pipeline components {missing}; expected {list(_SD_PARTS)}")
    return str(p)


def pick_device(device: str = "auto") -> torch.device:
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("models.device: got 'cuda', but no CUDA device is available here")
    return torch.device(device)


def torch_dtype(precision: str, device: torch.device) -> torch.dtype:
    """Weights dtype: fp16/bf16 only on CUDA; the CPU path always runs fp32."""
    import torch

    if device.type != "cuda":
        return torch.float32
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def load_sd_pipeline(name: str, device: str | torch.device = "cpu", precision: str = "fp32",
                     attention: str = "sdpa", progress: bool = False, text_encoder: str = ""):
    """``StableDiffusionPipeline.from_pretrained`` for a preset, folder or hub id, ready on ``device``.

    ``text_encoder``: a diffusers ``text_encoder`` folder (``CLIPTextModel.save_pretrained``) that
    replaces the pipeline's own, passed as ``from_pretrained(..., text_encoder=...)`` (a tuned one).

    Attention: PyTorch SDPA is diffusers' default processor; ``attention="xformers"`` switches to
    memory-efficient xformers kernels (CUDA + the ``gpu`` extra only).
    """
    import torch
    from diffusers import StableDiffusionPipeline

    src = check_sd_source(name)
    dev = device if isinstance(device, torch.device) else pick_device(device)
    dtype = torch_dtype(precision, dev)
    if not progress:  # the loaders' own bars, repeated by every actor, say nothing useful
        import diffusers.utils.logging as dlog
        import transformers.utils.logging as tlog

        dlog.disable_progress_bar()
        tlog.disable_progress_bar()
    extra = {}
    if text_encoder:
        from transformers import CLIPTextModel

        if not (Path(text_encoder) / "config.json").is_file():
            raise ModelLoadError(f"text encoder folder {text_encoder}: no config.json (expected a diffusers "
                                 f"text_encoder folder)")
        extra["text_encoder"] = CLIPTextModel.from_pretrained(text_encoder, dtype=dtype)
    pipe = StableDiffusionPipeline.from_pretrained(src, dtype=dtype, safety_checker=None,
                                                   requires_safety_checker=False, **extra)
    pipe.to(dev)
    if attention == "xformers":
        if dev.type != "cuda":
            raise ModelLoadError("models.attention: 'xformers' needs a CUDA device; use 'sdpa' on CPU")
        pipe.enable_xformers_memory_efficient_attention()
    pipe.set_progress_bar_config(disable=not progress)
    return pipe


def resolve_clip(name: str, pretrained: str = "") -> tuple[str, str]:
    if name in CLIP_PRESETS:
        return CLIP_PRESETS[name]
    return name, pretrained


def load_clip(name: str, pretrained: str = "", device: str | torch.device = "cpu"):
    """``(model, preprocess, tokenizer)`` from open_clip for a preset, name + tag, local-dir: or hf-hub:."""
    import open_clip
    import torch

    model_name, tag = resolve_clip(name, pretrained)
    if model_name.startswith("local-dir:") and not Path(model_name[len("local-dir:"):]).is_dir():
        raise ModelLoadError(f"models.clip: got {name!r}; {model_name[len('local-dir:'):]} is not a directory")
    from digzsl_ray.logs import quiet_open_clip

    quiet_open_clip()  # a dozen INFO lines per load on the root logger (every process, every stage)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=tag or None)
        tokenizer = open_clip.get_tokenizer(model_name)
    except RuntimeError as e:
        raise ModelLoadError(f"models.clip: could not load {name!r} ({e})") from e
    dev = device if isinstance(device, torch.device) else pick_device(device)
    model = model.to(dev).float().eval()
    return model, preprocess, tokenizer


def clip_vision_config(name: str, pretrained: str = "") -> dict:
    """The image tower's config (``image_size``, ``patch_size`` for a ViT) of a CLIP reference, read
    without loading weights: a local folder's ``open_clip_config.json``, an hf-hub folder's, or
    open_clip's built-in architecture config; ``{}`` when none can be read."""
    import json

    import open_clip

    model_name, _ = resolve_clip(name, pretrained)
    try:
        if model_name.startswith("local-dir:"):
            cfg = json.loads((Path(model_name[len("local-dir:"):]) / "open_clip_config.json").read_text())
            return dict(cfg.get("model_cfg", cfg).get("vision_cfg", {}))
        if model_name.startswith("hf-hub:"):
            from huggingface_hub import hf_hub_download

            cfg = json.loads(Path(hf_hub_download(model_name[len("hf-hub:"):], "open_clip_config.json")).read_text())
            return dict(cfg.get("model_cfg", cfg).get("vision_cfg", {}))
        return dict((open_clip.get_model_config(model_name) or {}).get("vision_cfg", {}))
    except Exception:  # noqa: BLE001 (offline hub, unknown architecture): the loader will say what is wrong
        return {}


def check_vit_size(key: str, size: int, vision: dict) -> None:
    """A ``ConfigError`` naming ``key`` when ``size`` (non-zero) cannot feed the ViT of ``vision``."""
    from digzsl_ray.config import ConfigError

    patch = vision.get("patch_size")
    if not size or not patch:
        return
    p = patch if isinstance(patch, int) else int(patch[0])
    if size % p:
        raise ConfigError(f"{key}: got {size}; the CLIP image tower has patches of {p} px, so the size must be a "
                          f"multiple of {p} (its own size is {vision.get('image_size')}; 0 uses it)")


def clip_image_size(model) -> int:
    size = model.visual.image_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def clip_norm(model) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) the CLIP image tower expects (open_clip's preprocess config of the model)."""
    import open_clip

    cfg = open_clip.get_model_preprocess_cfg(model)
    return tuple(cfg["mean"]), tuple(cfg["std"])
