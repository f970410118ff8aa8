"""ablation: every variant's metrics over several seeds, as mean and standard deviation.

Runs the whole pipeline once per seed (`digzsl run --config C --out <dir>/seed-<s>` in a
subprocess) with the seed applied to everything a run draws at random, but not to the world:
`seed` (CDM and classifier training), `tokens.seed` (token learning), `generate.seed` (generated
images) and `data.val_seed` (which trainval images are held out for validation). Then writes
`benchmarks/results/ablation.json`:

    {"seeds": [0, 1, 2], "variants": {"dct": {"zsl_top1": {"mean": ..., "std": ..., "values": [...]}, ...},
     ...}, "machine": {...}}

(std: sample standard deviation, ddof=1). `calibrations` holds the same per calibration
(`synthetic`: lambda on held-out synthetic unseen images; `valclass`: the validation-class protocol on
real images) with `validation_gzsl_U` and `validation_minus_test_U`, the gap between unseen accuracy
on the validation data lambda was chosen on and on the real test images.

    python benchmarks/ablation.py [--seeds 0 1 2] [--config miniworld] [--out /tmp/digzsl-ablation] [--keep] [--resume]

A candidate setting (a hyperparameter to choose on validation data) runs with `--set KEY=VALUE`
(repeatable) and `--name NAME` (results in `results/NAME.json`); `--base DIR` starts each seed from
a copy of DIR/seed-<s>, so only the stages the setting invalidates are recomputed. The result then
also holds each variant's validation figures (`validation`), the only ones a choice may rest on.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import mean_std as _stats  # noqa: E402
from common import save  # noqa: E402

METRICS = ("zsl_top1", "gzsl_U", "gzsl_S", "gzsl_H", "calibration_lambda", "ausuc")


def seed_overrides(seed: int) -> list[str]:
    return [f"seed={seed}", f"tokens.seed={seed}", f"generate.seed={seed + 1}", f"data.val_seed={seed}"]


def summarise(per_seed: dict[int, dict]) -> dict:
    """mean, std (ddof=1) and values of every metric per variant (the headline calibration), and the
    same under each calibration with the validation-vs-test gap of unseen accuracy."""
    seeds = sorted(per_seed)
    variants: dict = {}
    for name in per_seed[seeds[0]]["ablation"]:
        variants[name] = {key: _stats([float(per_seed[s]["ablation"][name][key]) for s in seeds]) for key in METRICS}
    out = {"seeds": seeds, "variants": variants}
    cals = per_seed[seeds[0]].get("calibrations")
    if cals:
        out["headline_calibration"] = per_seed[seeds[0]].get("calibration", "synthetic")
        by_cal: dict = {}
        for name, per in cals.items():
            for cal in per:
                if cal == "headline" or not all(cal in per_seed[s]["calibrations"].get(name, {}) for s in seeds):
                    continue
                rows = [per_seed[s]["calibrations"][name][cal] for s in seeds]
                entry = {k: _stats([float(r[k]) for r in rows]) for k in
                         ("zsl_top1", "gzsl_U", "gzsl_S", "gzsl_H", "calibration_lambda")}
                val = [(float(r["validation"]["gzsl_U"]), float(r["gzsl_U"])) for r in rows
                       if r["validation"].get("gzsl_U") is not None]
                if val:
                    entry["validation_gzsl_U"] = _stats([v for v, _ in val])
                    entry["validation_minus_test_U"] = _stats([round(v - t, 3) for v, t in val])
                entry["validation_data"] = rows[0]["validation"].get("data", "")
                by_cal.setdefault(cal, {})[name] = entry
        out["calibrations"] = by_cal
    return out


def validation_summary(per_seed: dict[int, dict]) -> dict:
    """Each variant's validation U/S/H under the headline calibration (mean, std, values): the figures a
    choice between settings may rest on (test figures never may)."""
    out: dict = {}
    for name, per in per_seed[sorted(per_seed)[0]].get("calibrations", {}).items():
        rows = [per_seed[s]["calibrations"][name] for s in sorted(per_seed)]
        vals = [r[r["headline"]]["validation"] for r in rows]
        out[name] = {k: _stats([float(v[k]) for v in vals]) for k in ("gzsl_U", "gzsl_S", "gzsl_H")
                     if all(v.get(k) is not None for v in vals)}
        out[name]["data"] = vals[0].get("data", "")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--config", default="miniworld")
    ap.add_argument("--out", default="/tmp/digzsl-ablation")
    ap.add_argument("--keep", action="store_true", help="keep the run directories")
    ap.add_argument("--resume", action="store_true",
                    help="keep existing run directories and resume them (complete stages are skipped)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="a candidate setting applied to every seed (repeatable)")
    ap.add_argument("--base", default="", help="start each seed from a copy of BASE/seed-<s> (only invalidated "
                                               "stages rerun)")
    ap.add_argument("--name", default="ablation", help="results/NAME.json (default: ablation)")
    a = ap.parse_args()
    out = Path(a.out)
    per_seed, wall = {}, {}
    for seed in a.seeds:
        run = out / f"seed-{seed}"
        if not a.resume:
            shutil.rmtree(run, ignore_errors=True)
        if a.base and not run.exists():
            shutil.copytree(Path(a.base) / f"seed-{seed}", run, ignore=shutil.ignore_patterns("ray"))
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "digzsl_ray.cli", "run", "--config", a.config, "--out", str(run)]
        for o in seed_overrides(seed) + a.sets:
            cmd += ["--set", o]
        subprocess.run(cmd, check=True)
        wall[seed] = round(time.perf_counter() - t0, 1)
        per_seed[seed] = json.loads((run / "metrics.json").read_text())
        print(json.dumps({"seed": seed, "wall_s": wall[seed],
                          **{v: r["zsl_top1"] for v, r in per_seed[seed]["ablation"].items()}}), flush=True)
    result = summarise(per_seed)
    result.update(config=a.config, wall_s=wall, seed_overrides="seed, tokens.seed, generate.seed = seed + 1, "
                                                              "data.val_seed")
    if a.sets:
        result["settings"] = a.sets
    result["validation"] = validation_summary(per_seed)
    save(a.name, result)
    if not a.keep:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
