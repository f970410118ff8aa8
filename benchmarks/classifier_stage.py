"""classifier_stage: the DIG-ZSL classifier stage (frozen CLIP backbone) against a bare loop of the same maths.

Ours: `train-classifier --variant dct` on a run directory whose images are generated, through Ray
Train on a local cluster that is already up (a pipeline shares one cluster between its stages; its
start is reported apart), with a cold feature cache (OUT/features removed first) and again warm (a
second variant, or a rerun with other head settings, finds the features). Bare: one process, no Ray:
load the CLIP, extract the same features (the same views), train the same head for the same
epochs, score the test images, in a fresh interpreter (its start and imports count, as the Ray
task's worker process pays them). Both train every epoch (patience = epochs), so the work is equal.

    python benchmarks/classifier_stage.py --run /tmp/abl/seed-0    # -> results/classifier_stage.json
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save  # noqa: E402


def bare(run: Path, cfg, split) -> float:
    """Seconds of a single-process loop: features (no cache), head epochs, test scores."""
    import torch

    from digzsl_ray.classifier import build_classifier
    from digzsl_ray.features import FrozenCLIP, zero_shot_logits
    from digzsl_ray.generation import read_manifest
    from digzsl_ray.methods.digzsl.head import head_logits, train_head
    from digzsl_ray.methods.digzsl.stages.classifier import read_synthetic_rows
    from digzsl_ray.models.presets import load_clip
    from digzsl_ray.prototypes import load_prototypes

    t0 = time.perf_counter()
    c = cfg.classifier
    torch.set_num_threads(cfg.models.torch_threads)
    protos = load_prototypes(run / "prototypes.safetensors")[0]
    clip_model = load_clip(cfg.models.clip, cfg.models.clip_pretrained)[0]
    clip = FrozenCLIP(cfg.models.clip, cfg.models.clip_pretrained, "cpu", cache_dir=None, model=clip_model)
    model = build_classifier(c, cfg.models, len(split.classes), "cpu",
                             prototypes=protos if c.head == "prototypes" else None, clip_model=clip_model)
    views = c.feature_views if c.augment else 1
    items = split.train_items()
    f_real = clip.of_paths([it.path for it in items], views=views, seed=cfg.seed)
    d = run / "synthetic"
    syn = read_synthetic_rows([str(d / f) for f in read_manifest(d)["shards"]], {}, c.synthetic_val_fraction)
    tr, held = np.flatnonzero(~syn["held"]), np.flatnonzero(syn["held"])
    f_syn = clip.of_pngs([syn["png"][i] for i in tr], views=views, seed=cfg.seed + 1)
    feats = torch.cat([f_real, f_syn], dim=1)
    labels = torch.as_tensor(np.concatenate([[it.label for it in items], syn["label"][tr]]))
    teacher = (torch.stack([torch.from_numpy(zero_shot_logits(feats[v], protos, clip.scale)) for v in range(views)])
               if c.distill > 0 else None)
    f_val = torch.cat([clip.of_paths([it.path for it in split.val])[0], clip.of_pngs([syn["png"][i] for i in held])[0]])
    y_val = np.concatenate([[it.label for it in split.val], syn["label"][held]])
    train_head(model.head, feats, labels, f_val, y_val, epochs=c.epochs, patience=c.patience, lr=c.lr,
               weight_decay=c.weight_decay, batch=c.batch_size, seed=cfg.seed, teacher=teacher, distill=c.distill,
               temperature=c.distill_temperature, init_candidate=c.init_candidate)
    with torch.no_grad():
        for s in ("test_seen", "test_unseen"):
            head_logits(model.head, clip.of_paths([it.path for it in split.items[s]])[0]).softmax(-1)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a run directory with generated images (OUT/synthetic)")
    ap.add_argument("--repeat", type=int, default=2, help="timings of each (the minimum is reported)")
    ap.add_argument("--bare-only", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.bare_only:  # the baseline in a fresh interpreter, as a user's own script would run
        import yaml

        from digzsl_ray.data import load_split
        from digzsl_ray.methods import validate_run_config

        data = yaml.safe_load((Path(a.run) / "config.yaml").read_text())
        data.setdefault("classifier", {})["patience"] = data["classifier"].get("epochs", 10)  # every epoch, as ours
        cfg = validate_run_config(data)
        bare(Path(a.run), cfg, load_split(cfg.data, out=a.run, validate=False, progress=False))
        return
    import argparse as _ap

    import ray
    import yaml

    from digzsl_ray.methods import get_method, validate_run_config
    from digzsl_ray.stages.contract import Context, execute
    from digzsl_ray.stages.runner import context

    src = Path(a.run)
    work = Path(tempfile.mkdtemp(prefix="clfbench-"))
    run = work / "run"
    shutil.copytree(src, run, ignore=shutil.ignore_patterns("ray", "features", "classifier", "ablation"))
    data = yaml.safe_load((run / "config.yaml").read_text())
    epochs = data.get("classifier", {}).get("epochs", 10)
    data.setdefault("classifier", {})["patience"] = epochs
    cfg = validate_run_config(data)
    t0 = time.perf_counter()
    tmp = tempfile.mkdtemp(prefix="r", dir="/tmp")
    ray.init(num_cpus=cfg.ray.num_cpus, include_dashboard=False, _temp_dir=tmp, logging_level="ERROR")
    ray_start = time.perf_counter() - t0
    ctx0 = context(cfg, get_method(cfg.method), run, progress=False)
    ours, warm = [], []
    for _ in range(a.repeat):
        for cold in (True, False):
            if cold:
                shutil.rmtree(run / "features", ignore_errors=True)
            shutil.rmtree(run / "classifier", ignore_errors=True)
            shutil.rmtree(run / "ray", ignore_errors=True)
            ctx = Context(cfg=cfg, rd=ctx0.rd, split=ctx0.split, method=ctx0.method, progress=False,
                          args=_ap.Namespace(variant="dct"))
            t = time.perf_counter()
            execute(ctx.method.stage("train-classifier"), ctx)
            (ours if cold else warm).append(time.perf_counter() - t)
    ray.shutdown()
    bare_s = []
    for _ in range(a.repeat):  # a fresh process each: interpreter start and imports count, as for the Ray task
        t = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--run", str(run), "--bare-only"], check=True)
        bare_s.append(time.perf_counter() - t)
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(tmp, ignore_errors=True)
    res = {"ours_s": round(min(ours), 2), "ours_warm_cache_s": round(min(warm), 2), "bare_s": round(min(bare_s), 2),
           "ratio": round(min(ours) / min(bare_s), 3), "ratio_warm_cache": round(min(warm) / min(bare_s), 3),
           "ray_init_s": round(ray_start, 2), "epochs": epochs, "feature_views": cfg.classifier.feature_views,
           "train_images": {"real": len(ctx0.split.train_items())}, "all_timings": {
               "ours": [round(x, 2) for x in ours], "ours_warm": [round(x, 2) for x in warm],
               "bare": [round(x, 2) for x in bare_s]},
           "what": "train-classifier --variant dct (frozen CLIP, cached features, one Ray task on a running local "
                   "cluster) against one process doing the same feature extraction, epochs and test scoring"}
    save("classifier_stage", res)


if __name__ == "__main__":
    main()
