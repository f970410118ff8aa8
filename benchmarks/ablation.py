"""ablation: every variant's metrics over several seeds, as mean and standard deviation.

Runs the whole pipeline once per seed (`digzsl run --config C --out <dir>/seed-<s>` in a
subprocess) with the seed applied to everything a run draws at random, but not to the world:
`seed` (CDM and classifier training), `tokens.seed` (token learning), `generate.seed` (generated
images) and `data.val_seed` (which trainval images are held out for validation). Then writes
`benchmarks/results/ablation.json`:

    {"seeds": [0, 1, 2], "variants": {"dct": {"zsl_top1": {"mean": ..., "std": ..., "values": [...]}, ...},
     ...}, "machine": {...}}

(std: sample standard deviation, ddof=1), plus the validation-vs-test gap of unseen accuracy per
variant where the evaluation reports it.

    python benchmarks/ablation.py [--seeds 0 1 2] [--config miniworld] [--out /tmp/digzsl-ablation] [--keep]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save  # noqa: E402

METRICS = ("zsl_top1", "gzsl_U", "gzsl_S", "gzsl_H", "calibration_lambda", "ausuc")


def seed_overrides(seed: int) -> list[str]:
    return [f"seed={seed}", f"tokens.seed={seed}", f"generate.seed={seed + 1}", f"data.val_seed={seed}"]


def summarise(per_seed: dict[int, dict]) -> dict:
    seeds = sorted(per_seed)
    variants: dict = {}
    for name in per_seed[seeds[0]]["ablation"]:
        variants[name] = {}
        for key in METRICS:
            values = [float(per_seed[s]["ablation"][name][key]) for s in seeds]
            variants[name][key] = {"mean": round(statistics.fmean(values), 3),
                                   "std": round(statistics.stdev(values), 3) if len(values) > 1 else 0.0,
                                   "values": values}
    return {"seeds": seeds, "variants": variants}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--config", default="miniworld")
    ap.add_argument("--out", default="/tmp/digzsl-ablation")
    ap.add_argument("--keep", action="store_true", help="keep the run directories")
    a = ap.parse_args()
    out = Path(a.out)
    per_seed, wall = {}, {}
    for seed in a.seeds:
        run = out / f"seed-{seed}"
        shutil.rmtree(run, ignore_errors=True)
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "digzsl_ray.cli", "run", "--config", a.config, "--out", str(run)]
        for o in seed_overrides(seed):
            cmd += ["--set", o]
        subprocess.run(cmd, check=True)
        wall[seed] = round(time.perf_counter() - t0, 1)
        per_seed[seed] = json.loads((run / "metrics.json").read_text())
        print(json.dumps({"seed": seed, "wall_s": wall[seed],
                          **{v: r["zsl_top1"] for v, r in per_seed[seed]["ablation"].items()}}), flush=True)
    result = summarise(per_seed)
    result.update(config=a.config, wall_s=wall, seed_overrides="seed, tokens.seed, generate.seed = seed + 1, "
                                                              "data.val_seed")
    save("ablation", result)
    if not a.keep:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
