"""multilabel_ablation: the multi-label method's four variants over several seeds (mean and std).

Runs `digzsl run --config miniworld_multilabel --out <dir>/seed-<s>` once per seed in a subprocess,
the seed applied to everything a run draws at random but not to the world: `seed` (classifier
initialisation and batches), `prompts.seed` (the grammar's phrases), `tune.seed` (tuning label
sets and latents), `generate.seed` (= seed + 1: label sets, prompts and latents of the generated
images) and `data.val_seed` (which trainval scenes are held out). Writes
`benchmarks/results/multilabel_ablation.json`:

    {"seeds": [...], "variants": {"filtered_tuned": {"zsl_mAP": {"mean", "std", "values"}, ...}, ...},
     "per_label_AP": {variant: {label: mean}}, "acceptance": {"base"|"tuned": {"overall": {...}}},
     "tuning": {...}, "validation": {variant: {selection score}}, "wall_s", "peak_rss_mb", "machine"}

    python benchmarks/multilabel_ablation.py [--seeds 0 1 2] [--out /tmp/digzsl-ml-ablation] [--keep] [--resume]
        [--set KEY=VALUE ...] [--name NAME]
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import mean_std as _stats  # noqa: E402
from common import run_seed, save, seed_parser  # noqa: E402

METRICS = ("zsl_mAP", "zsl_F1@3", "zsl_F1@5", "gzsl_mAP", "gzsl_F1@3", "gzsl_F1@5", "zsl_P@3", "zsl_R@3")


def seed_overrides(seed: int) -> list[str]:
    return [f"seed={seed}", f"prompts.seed={seed}", f"tune.seed={seed}", f"generate.seed={seed + 1}",
            f"data.val_seed={seed}"]


def summarise(per_seed: dict[int, dict], validation: dict[int, dict]) -> dict:
    seeds = sorted(per_seed)
    first = per_seed[seeds[0]]
    variants = {v: {k: _stats([float(per_seed[s]["ablation"][v][k]) for s in seeds]) for k in METRICS}
                for v in first["ablation"]}
    labels = list(first["ablation"][next(iter(first["ablation"]))]["per_label_AP"])
    per_label = {v: {n: round(statistics.fmean(per_seed[s]["ablation"][v]["per_label_AP"][n] for s in seeds), 2)
                     for n in labels} for v in first["ablation"]}
    acceptance = {k: {"overall": _stats([float(per_seed[s]["acceptance"][k]["overall"]) for s in seeds])}
                  for k in first.get("acceptance", {}) if k != "paired"}
    if "paired" in first.get("acceptance", {}):  # base vs tuned encoder on the shared round-0 rows (McNemar)
        acceptance["paired"] = {s: per_seed[s]["acceptance"]["paired"] for s in seeds}
    tuning = None
    if first.get("tuning"):
        tuning = {"chosen_step": [per_seed[s]["tuning"]["chosen_step"] for s in seeds],
                  "val_acceptance_untuned": _stats([per_seed[s]["tuning"]["untuned"]["val_acceptance"] for s in seeds]),
                  "val_acceptance_chosen": _stats([per_seed[s]["tuning"]["chosen"]["val_acceptance"] for s in seeds])}
    val = {v: _stats([validation[s][v] for s in seeds]) for v in first["ablation"] if v in validation[seeds[0]]}
    return {"seeds": seeds, "variants": variants, "per_label_AP": per_label, "acceptance": acceptance,
            "tuning": tuning, "validation": val, "metric_preset": first.get("metric_preset")}


def main() -> None:
    a = seed_parser(__doc__.split("\n\n")[0], "miniworld_multilabel", "/tmp/digzsl-ml-ablation",
                    "multilabel_ablation").parse_args()
    out = Path(a.out)
    per_seed, validation, wall, peak = {}, {}, {}, {}
    for seed in a.seeds:
        run = out / f"seed-{seed}"
        wall[seed], per_seed[seed] = run_seed(a.config, run, seed_overrides(seed) + a.sets, a.resume)
        peak[seed] = per_seed[seed].get("peak_rss_mb")
        validation[seed] = {v: json.loads((run / "classifier_ml" / v / "config.json").read_text())["best"]["selection"]
                            for v in per_seed[seed]["ablation"] if (run / "classifier_ml" / v).is_dir()}
        print(json.dumps({"seed": seed, "wall_s": wall[seed],
                          **{v: r["zsl_mAP"] for v, r in per_seed[seed]["ablation"].items()}}), flush=True)
    result = summarise(per_seed, validation)
    result.update(config=a.config, wall_s=wall, peak_rss_mb=peak,
                  seed_overrides="seed, prompts.seed, tune.seed, generate.seed = seed + 1, data.val_seed")
    if a.sets:
        result["settings"] = a.sets
    save(a.name, result)
    if not a.keep:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
