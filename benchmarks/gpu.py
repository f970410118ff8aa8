"""gpu: Stable-Diffusion-1.5-sized generation and DCT updates on a CUDA GPU (skipped without one).

The UNet, VAE and text encoder are built from SD 1.5's public architecture configs with random
weights (no download), fp16, 512x512, 30 DDIM steps, guidance 7.5: images per second with PyTorch
SDPA (and with xformers when installed), and seconds per DCT update (batch 4, K=1, the CDM's CLIP
replaced by a random ViT-L/14-sized open_clip tower). Each figure is also given as a fraction of
the FLOP lower bound (about 1.61 TFLOP per guided UNet step and 2.5 TFLOP per VAE decode at
512x512) at the GPU's peak fp16 throughput (``--peak-tflops``, or a table of common GPUs).

    python benchmarks/gpu.py [--batch 4] [--steps 30] [--peak-tflops 312]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save  # noqa: E402

UNET_TFLOP_PER_GUIDED_STEP = 1.61
VAE_TFLOP_PER_DECODE = 2.5
PEAK_FP16_TFLOPS = {"A100": 312.0, "H100": 989.0, "A10G": 125.0, "L4": 121.0, "T4": 65.0, "V100": 125.0,
                    "RTX 4090": 165.0, "RTX 3090": 71.0, "L40S": 362.0}

SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=[320, 640, 1280, 1280],
                 down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
                 up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
                 cross_attention_dim=768, attention_head_dim=8)
SD15_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
                block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
                up_block_types=["UpDecoderBlock2D"] * 4)
SD15_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                 num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu")


def peak_tflops(name: str, given: float | None) -> float | None:
    if given:
        return given
    for k, v in PEAK_FP16_TFLOPS.items():
        if k in name:
            return v
    return None


def build_pipe(attention: str):
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    from digzsl_ray.models.tokenizer import build_clip_tokenizer
    from digzsl_ray.pretrain.arch import scheduler_config

    torch.manual_seed(0)
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL(**SD15_VAE), text_encoder=CLIPTextModel(CLIPTextConfig(**SD15_TEXT)),
        tokenizer=build_clip_tokenizer(), unet=UNet2DConditionModel(**SD15_UNET),
        scheduler=DDIMScheduler(**scheduler_config()), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False).to("cuda", torch.float16)
    if attention == "xformers":
        pipe.enable_xformers_memory_efficient_attention()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def images_per_second(pipe, batch: int, steps: int) -> float:
    import torch

    pipe(["a photo of a bird"] * batch, num_inference_steps=2, guidance_scale=7.5, output_type="pt")
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    n = 0
    for _ in range(3):
        pipe(["a photo of a bird"] * batch, num_inference_steps=steps, guidance_scale=7.5, output_type="pt")
        n += batch
    torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def dct_update_seconds(pipe, batch: int, steps: int) -> float:
    import open_clip
    import torch

    from digzsl_ray.methods.digzsl.cdm import CDM, CDMHead
    from digzsl_ray.methods.digzsl.config import TokensConfig
    from digzsl_ray.methods.digzsl.dct import DCTLearner

    clip = open_clip.create_model("ViT-L-14").to("cuda").eval()
    protos = torch.nn.functional.normalize(torch.randn(200, 768), dim=-1)
    cdm = CDM(clip, CDMHead(protos, 768, 0, 0.05), 224, open_clip.OPENAI_DATASET_MEAN,
              open_clip.OPENAI_DATASET_STD).to("cuda")
    s = TokensConfig(templates=["a photo of a {token} {name}"], batch_size=batch, num_inference_steps=steps,
                     grad_steps=1, guidance_scale=7.5, max_updates=6, min_updates=6, gamma=1.0,
                     gradient_checkpointing=True)
    learner = DCTLearner(pipe, cdm, list(range(150, 200)), s, precision="fp16")
    stamps = []
    learner.learn("black footed albatross", 150, "<dct-bench>", "albatross",
                  progress=lambda *a: (torch.cuda.synchronize(), stamps.append(time.perf_counter())))
    diffs = [b - a for a, b in zip(stamps[1:], stamps[2:])]
    return sorted(diffs)[len(diffs) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--peak-tflops", type=float, default=None)
    a = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        print('{"benchmark": "gpu", "skipped": "no CUDA GPU on this machine"}')
        return
    name = torch.cuda.get_device_name(0)
    peak = peak_tflops(name, a.peak_tflops)
    lower_bound_tflop_per_image = UNET_TFLOP_PER_GUIDED_STEP * a.steps + VAE_TFLOP_PER_DECODE
    out: dict = {"device": name, "peak_fp16_tflops": peak, "steps": a.steps, "batch": a.batch,
                 "lower_bound_tflop_per_image": lower_bound_tflop_per_image}
    attentions = ["sdpa"]
    try:
        import xformers  # noqa: F401

        attentions.append("xformers")
    except ImportError:
        out["xformers"] = "not installed"
    for att in attentions:
        pipe = build_pipe(att)
        ips = images_per_second(pipe, a.batch, a.steps)
        out[f"{att}_img_s"] = round(ips, 3)
        if peak:
            out[f"{att}_fraction_of_peak"] = round(ips * lower_bound_tflop_per_image / peak, 3)
        if att == "sdpa":
            s = dct_update_seconds(pipe, a.batch, a.steps)
            out["dct_update_s"] = round(s, 3)
            # an update: steps guided UNet passes (last one with backward, ~3x) + decode (+ backward)
            if peak:
                work = a.batch * (UNET_TFLOP_PER_GUIDED_STEP * (a.steps + 2) + VAE_TFLOP_PER_DECODE * 3)
                out["dct_fraction_of_peak"] = round(work / s / peak, 3)
        del pipe
        torch.cuda.empty_cache()
    save("gpu", out)


if __name__ == "__main__":
    main()
