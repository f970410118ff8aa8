"""Tiny components built offline from small literal configs with fixed seeds.

They use the real classes (AutoencoderKL, UNet2DConditionModel, CLIPTextModel, open_clip CLIP,
the real CLIP BPE tokenizer) and the real save formats, so the code under test is the code that
loads SD 1.5 and ViT-L/14; only the sizes and weights are tiny and random.
"""

from __future__ import annotations

from pathlib import Path

import torch

from digzsl_ray.models.tokenizer import build_clip_tokenizer
from digzsl_ray.pretrain.arch import ClipArch, SDArch
from digzsl_ray.pretrain.job import export_clip, export_sd

TINY_SD = SDArch(image_size=16, vae_channels=(8, 16), latent_channels=4, unet_channels=(32, 32),
                 unet_layers_per_block=1, unet_head_dim=16, text_hidden=32, text_layers=1, text_heads=2)
TINY_CLIP = ClipArch(embed_dim=16, image_size=16, patch_size=4, vision_width=32, vision_layers=1,
                     vision_head_width=16, text_width=32, text_layers=1, text_heads=2, context_length=16)


def _tiny_vae_groups(vae_cfg: dict) -> dict:
    vae_cfg["norm_num_groups"] = 8
    return vae_cfg


def make_tiny_models(out: Path, seed: int = 0) -> tuple[Path, Path]:
    """Write ``out/sd`` (diffusers pipeline) and ``out/clip`` (open_clip local-dir). Returns both paths."""
    import open_clip
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from digzsl_ray.pretrain import arch

    torch.manual_seed(seed)
    vae = AutoencoderKL(**_tiny_vae_groups(arch.vae_config(TINY_SD)))
    ucfg = arch.unet_config(TINY_SD)
    ucfg["norm_num_groups"] = 8
    unet = UNet2DConditionModel(**ucfg)
    te = CLIPTextModel(CLIPTextConfig(**arch.text_config(TINY_SD)))
    clip = open_clip.CLIP(**TINY_CLIP.model_cfg())
    out = Path(out)
    export_sd(vae, unet, te, build_clip_tokenizer(TINY_SD.max_length), out / "sd", dtype="fp32")
    export_clip(clip, TINY_CLIP, out / "clip", dtype="fp32")
    return out / "sd", out / "clip"


TINY_CLASSES = ["red circle", "blue square", "green triangle", "yellow diamond", "purple circle", "orange square"]
TINY_UNSEEN = ["purple circle", "orange square"]


def make_tiny_dataset(root: Path, per_class: int = 10, test_per_class: int = 4) -> Path:
    """A 6-class dataset in the project format, rendered with MiniWorld's renderer (plain patterns)."""
    from digzsl_ray.data.format import write_dataset
    from digzsl_ray.miniworld import world
    from digzsl_ray.slug import slugify

    root = Path(root)
    rows = {"trainval": [], "test_seen": [], "test_unseen": []}
    k = 0
    for name in TINY_CLASSES:
        colour, shape = name.split()
        spec = world.ClassSpec("plain", colour, shape)
        splits = [("test_unseen", test_per_class)] if name in TINY_UNSEEN else [("trainval", per_class),
                                                                              ("test_seen", test_per_class)]
        for split, n in splits:
            for j in range(n):
                rel = f"images/{split}/{slugify(name)}/{j}.png"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                world.render(spec, 0, 77, k).save(root / rel)
                k += 1
                rows[split].append((rel, [name]))
    write_dataset(root, "tiny", TINY_CLASSES, TINY_UNSEEN, rows)
    return root


def tiny_overrides(sd: Path, clip: Path, data: Path) -> list[str]:
    """Config overrides that make every stage run in seconds on the tiny models."""
    return [
        "name=tiny", "data.format=digzsl", f"data.root={data}", "data.val_fraction=0.2",
        f"models.sd={sd}", f"models.clip=local-dir:{clip}",
        "cdm.epochs=3", "cdm.batch_size=16", "cdm.hidden_dim=16",
        "tokens.batch_size=2", "tokens.num_inference_steps=2", "tokens.max_updates=3", "tokens.min_updates=0",
        "tokens.gamma=1.0", "tokens.eval_images=2", "tokens.pool_max=2",
        "generate.images_per_class=6", "generate.batch_size=3", "generate.rows_per_shard=3",
        "generate.num_inference_steps=2",
        "classifier.epochs=3", "classifier.batch_size=16", "classifier.patience=5",
        "classifier.synthetic_val_fraction=0.34",
    ]


def make_run_dir(base: Path) -> Path:
    """A finished run directory with a (randomly initialised) classifier over the tiny CLIP."""
    import json

    from digzsl_ray.classifier import ZSLClassifier, save_classifier
    from digzsl_ray.config import to_yaml
    from digzsl_ray.methods import load_run_config as load_config
    from digzsl_ray.models.presets import clip_image_size, clip_norm, load_clip

    _, clip = make_tiny_models(base / "models")
    cfg = load_config(None, ["name=servetest", f"models.clip=local-dir:{clip}", "serve.max_batch_size=8",
                             "serve.batch_wait_timeout_s=0.01", "serve.max_body_bytes=200000",
                             "serve.max_pixels=250000", "serve.default_k=3"])
    run = base / "run"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(to_yaml(cfg))
    (run / "metrics.json").write_text(json.dumps({"calibration_lambda": 0.05}))
    model, _, _ = load_clip(cfg.models.clip)
    torch.manual_seed(0)
    clf = ZSLClassifier("clip", len(TINY_CLASSES), "mlp", clip_image_size(model), *clip_norm(model), clip_model=model)
    seen = [i for i, n in enumerate(TINY_CLASSES) if n not in TINY_UNSEEN]
    unseen = [i for i, n in enumerate(TINY_CLASSES) if n in TINY_UNSEEN]
    save_classifier(run / "classifier", clf, TINY_CLASSES, seen, unseen, cfg.models)
    return run
