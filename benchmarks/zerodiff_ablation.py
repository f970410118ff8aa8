"""zerodiff_ablation: ZeroDiff++'s four variants (base / diffgen / difftta / full) over several seeds.

Runs `digzsl run --config miniworld --set method=zerodiff --out <dir>/seed-<s>` once per seed in a
subprocess, the seed applied to everything a run draws at random but not to the world: `seed`
(SupCon initialisation), `drg.seed` / `dfg.seed` (generators), `synthetic.seed` (= seed + 1),
`softmax.seed` and `data.val_seed` (which trainval images are held out). Writes
`benchmarks/results/zerodiff_ablation.json`:

    {"seeds": [...], "variants": {variant: {"zsl_top1"|"gzsl_U"|"gzsl_S"|"gzsl_H"|"ausuc"|"calibration_lambda":
      {"mean", "std", "values"}}}, "calibrations": {variant: {"synthetic"|"valclass": {metric: {...}}}},
     "validation_fold": {variant: {"H": {...}}}, "validation_gap_H": {variant: {...}} (validation-fold H minus
     test H), "pseudo_labels": {...}, "spuriousness": {...},
     "wall_s", "peak_rss_mb", "timing_s", "machine"}

    python benchmarks/zerodiff_ablation.py [--seeds 0 1 2] [--out /tmp/digzsl-zd-ablation] [--keep] [--resume]
        [--set KEY=VALUE ...] [--name NAME]
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import mean_std as _stats  # noqa: E402
from common import run_seed, save, seed_parser  # noqa: E402

METRICS = ("zsl_top1", "gzsl_U", "gzsl_S", "gzsl_H", "ausuc", "calibration_lambda")


def seed_overrides(seed: int) -> list[str]:
    return [f"seed={seed}", f"drg.seed={9182 + seed}", f"dfg.seed={9182 + seed}", f"synthetic.seed={seed + 1}",
            f"softmax.seed={seed}", f"data.val_seed={seed}"]


def summarise(per_seed: dict[int, dict]) -> dict:
    seeds = sorted(per_seed)
    first = per_seed[seeds[0]]
    variants = {v: {k: _stats([float(per_seed[s]["ablation"][v][k]) for s in seeds]) for k in METRICS}
                for v in first["ablation"]}
    cals = {v: {c: {k: _stats([float(per_seed[s]["calibrations"][v][c][k]) for s in seeds]) for k in METRICS}
                for c in first["calibrations"][v]} for v in first["calibrations"]}
    val = {v: {k: _stats([float(per_seed[s]["validation_fold"][v][k]) for s in seeds]) for k in ("U", "S", "H")}
           for v in first["validation_fold"]}
    pseudo = {f: {k: _stats([float(per_seed[s]["pseudo_labels"][f][k]) for s in seeds])
                  for k in ("n", "accuracy_measured", "from_test_seen", "threshold") if k in first["pseudo_labels"][f]}
              for f in first["pseudo_labels"]}
    # what the validation fold promised against what the test set gave, per variant (positive: the fold flattered it)
    gap = {v: _stats([float(per_seed[s]["validation_fold"][v]["H"]) - float(per_seed[s]["ablation"][v]["gzsl_H"])
                      for s in seeds]) for v in first["validation_fold"]}
    spur = {f: {k: _stats([float(per_seed[s]["spuriousness"][f][k]) for s in seeds
                           if per_seed[s]["spuriousness"][f].get(k) is not None])
                for k in ("spurious_seen_z", "spurious_unseen_z", "semantic_error_unseen")}
            for f in first["spuriousness"]}
    return {"seeds": seeds, "variants": variants, "calibrations": cals, "validation_fold": val,
            "validation_gap_H": gap, "pseudo_labels": pseudo, "spuriousness": spur,
            "headline_calibration": first.get("calibration")}


def main() -> None:
    a = seed_parser(__doc__.split("\n\n")[0], "miniworld", "/tmp/digzsl-zd-ablation", "zerodiff_ablation").parse_args()
    out = Path(a.out)
    per_seed, wall, peak, timing = {}, {}, {}, {}
    for seed in a.seeds:
        wall[seed], per_seed[seed] = run_seed(a.config, out / f"seed-{seed}",
                                              ["method=zerodiff"] + seed_overrides(seed) + a.sets, a.resume)
        peak[seed] = per_seed[seed].get("peak_rss_mb")
        timing[seed] = per_seed[seed].get("timing_s")
        print(json.dumps({"seed": seed, "wall_s": wall[seed],
                          **{v: [r["zsl_top1"], r["gzsl_H"]] for v, r in per_seed[seed]["ablation"].items()}}), flush=True)
    result = summarise(per_seed)
    result.update(config=a.config, wall_s=wall, peak_rss_mb=peak, timing_s=timing,
                  seed_overrides="seed, drg.seed = dfg.seed = 9182 + seed, synthetic.seed = seed + 1, softmax.seed, "
                                 "data.val_seed")
    if a.sets:
        result["settings"] = a.sets
    save(a.name, result)
    if not a.keep:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
