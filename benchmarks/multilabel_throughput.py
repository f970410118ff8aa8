"""multilabel_throughput: the multi-label method's three hot loops on this machine.

1. **Prompts**: pairs per second of the grammar backend over MiniWorld's 171 pairs, and of the chat
   backend (`ChatBackend`, a tiny random Llama-architecture model built offline: the code path of
   Llama-2-7b-chat, not its speed) with `--chat-new-tokens` tokens per reply.
2. **Filter**: images per second of the CLIP discriminator (`Discriminator.decide`: resize,
   CLIP image tower at `filter.image_size`, grouping softmax, the exact-set rule), batch 64.
3. **Tuning step**: seconds per text-encoder update in a bare single-process loop
   (`TextEncoderTuner.step`, batch 4, the MiniWorld defaults) and inside the Ray Train worker of the
   `tune-text-encoder` stage (the stage's own `step_seconds_mean`, validation excluded), same
   settings, one worker. The difference is what Ray Train costs per step once running.

    python benchmarks/multilabel_throughput.py [--steps 8] [--skip-ray]

Saves benchmarks/results/multilabel_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def prompts_throughput(new_tokens: int) -> dict:
    sys.path.insert(0, str(REPO / "tests" / "methods"))
    from test_multilabel_prompts import _tiny_chat

    from digzsl_ray.methods.multilabel.prompts import ChatBackend, grammar_phrases, label_pairs
    from digzsl_ray.miniworld import world
    from digzsl_ray.miniworld.make import WorldParams

    unseen = world.choose_unseen(0, WorldParams().n_unseen)
    pairs = label_pairs(unseen)
    t0 = time.perf_counter()
    for a, b in pairs:
        grammar_phrases(a, b, 10)
    grammar = len(pairs) / (time.perf_counter() - t0)
    model, tok = _tiny_chat()
    chat = ChatBackend(model=model, tokenizer=tok, max_new_tokens=new_tokens, seed=0)
    few = pairs[:8]
    t0 = time.perf_counter()
    for a, b in few:
        chat(a, b, 10)
    chat_rate = len(few) / (time.perf_counter() - t0)
    return {"pairs": len(pairs), "grammar_pairs_per_s": round(grammar, 1), "chat_tiny_pairs_per_s": round(chat_rate, 2),
            "chat_new_tokens": new_tokens}


def filter_throughput(images: int = 256, batch: int = 64) -> dict:
    import torch

    from digzsl_ray.methods.multilabel.generation import Discriminator
    from digzsl_ray.miniworld import world
    from digzsl_ray.miniworld.make import WorldParams
    from digzsl_ray.models.presets import load_clip
    from digzsl_ray.prototypes import build_prototypes, save_prototypes

    torch.set_num_threads(2)
    names = [c.name for c in world.all_classes()]
    unseen = [names.index(n) for n in world.choose_unseen(0, WorldParams().n_unseen)]
    with tempfile.TemporaryDirectory() as d:
        model, _, tok = load_clip("miniworld")
        save_prototypes(Path(d) / "p.safetensors", build_prototypes(model, tok, names, ["a photo of a {}."]), names)
        disc = Discriminator("miniworld", "", str(Path(d) / "p.safetensors"), unseen, "exact", 0.5, 7, 0.1, {}, 64,
                             "cpu")
    x = torch.rand(images, 3, 64, 64)
    targets = [[unseen[i % len(unseen)], unseen[(i * 7 + 1) % len(unseen)]] for i in range(images)]
    disc.decide(x[:batch], targets[:batch])  # warm-up
    t0 = time.perf_counter()
    for i in range(0, images, batch):
        disc.decide(x[i:i + batch], targets[i:i + batch])
    return {"images": images, "batch": batch, "image_size": 64, "images_per_s": round(images / (time.perf_counter() - t0), 1)}


def bare_tuning(steps: int) -> dict:
    import torch

    from digzsl_ray.methods.multilabel.tuning import TextEncoderTuner
    from digzsl_ray.methods.multilabel.config import TuneConfig
    from digzsl_ray.models.presets import clip_norm, load_clip, load_sd_pipeline
    from digzsl_ray.models.sd import latent_side
    from digzsl_ray.models.vit import set_vit_resolution

    torch.set_num_threads(2)
    t = TuneConfig()
    pipe = load_sd_pipeline("miniworld")
    clip, _, tok = load_clip("miniworld")
    set_vit_resolution(clip.visual, 64)
    mean, std = clip_norm(clip)
    labels = [f"label {i}" for i in range(18)]
    tuner = TextEncoderTuner(pipe, clip, tok, labels, t, mean, std, 64, latent_side=latent_side(pipe, 64))
    targets = torch.zeros(t.batch_size, 18, dtype=torch.bool)
    targets[:, :2] = True
    prompts = ["a label 0 next to a label 1"] * t.batch_size
    tuner.step(prompts, targets, list(range(t.batch_size)))  # warm-up
    times = []
    for k in range(steps):
        t0 = time.perf_counter()
        tuner.step(prompts, targets, [k * 10 + i for i in range(t.batch_size)])
        times.append(time.perf_counter() - t0)
    return {"steps": steps, "batch_size": t.batch_size, "grad_steps": t.grad_steps,
            "num_inference_steps": t.num_inference_steps, "seconds_per_step": round(sum(times) / len(times), 4),
            "torch_threads": 2}


def ray_tuning(steps: int) -> dict:
    """The stage on Ray Train (one worker, models.torch_threads=2), its own step timing."""
    with tempfile.TemporaryDirectory() as d:
        sets = [f"tune.steps={steps}", f"tune.eval_every={steps}", "tune.val_sets=1", "models.torch_threads=2",
                "ray.dashboard=false"]
        for stage in ("prototypes", "prompts", "tune-text-encoder"):
            cmd = [sys.executable, "-m", "digzsl_ray.cli", stage, "--config", "miniworld_multilabel", "--out", d]
            subprocess.run(cmd + [a for s in sets for a in ("--set", s)], check=True, capture_output=True)
        summary = json.loads((Path(d) / "text_encoder_tuned" / "summary.json").read_text())
    return {"steps": summary["step_seconds_steps"], "seconds_per_step": summary["step_seconds_mean"],
            "world_size": summary["world_size"], "torch_threads": 2}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--chat-new-tokens", type=int, default=64)
    ap.add_argument("--skip-ray", action="store_true")
    a = ap.parse_args()
    out = {"prompts": prompts_throughput(a.chat_new_tokens), "filter": filter_throughput(),
           "tuning_bare": bare_tuning(a.steps)}
    if not a.skip_ray:
        out["tuning_ray_train"] = ray_tuning(a.steps)
        out["ray_train_over_bare"] = round(out["tuning_ray_train"]["seconds_per_step"]
                                           / out["tuning_bare"]["seconds_per_step"], 3)
    save("multilabel_throughput", out)


if __name__ == "__main__":
    main()
