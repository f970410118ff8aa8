"""zerodiff_beat_clip: can ZeroDiff's base variant beat the frozen CLIP (`clip_zero_shot`) on ZSL top-1?
Evaluation-only recipes on finished ZeroDiff runs (their features and generators reused).

For every run directory given (one per seed, e.g. `zerodiff_ablation.py --keep`'s), each recipe is
a copy of the run with `digzsl evaluate --set ...` redone (the evaluate stage runs without Ray);
recipes that change what the generators learn (`--train` recipes, e.g. `semantics.source=miniworld`)
run `digzsl run` on the copy instead (generators retrained). Every choice is made on validation
data as in the default evaluation; test figures are read from each copy's `metrics.json`. Writes
`benchmarks/results/zerodiff_beat_clip.json`:

    {"runs": [...], "recipes": {name: {"settings": [...], "variants": {variant: {"zsl_top1"|"gzsl_H":
      {"mean", "std", "values"}}}, "validation_zsl_top1": {variant: {...}}}}, "machine"}

    python benchmarks/zerodiff_beat_clip.py RUN_DIR... [--recipe NAME=KEY=VALUE[,KEY=VALUE]] [--train NAME=...]
        [--work /tmp/digzsl-zd-beat] [--name NAME]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import mean_std, save  # noqa: E402

DEFAULT_RECIPES = {
    "default": [],
    "syn_per_class_1500": ["synthetic.per_class=1500"],
    "input_xr": ["softmax.input=xr"],
    "gzsl_classifier_for_zsl": ["softmax.zsl_classifier=false"],
}


def seed_sets(run: Path) -> list[str]:
    """The run's own overrides (config.yaml is the resolved config: its seeds are read back)."""
    import yaml

    c = yaml.safe_load((run / "config.yaml").read_text())
    return ["method=zerodiff", f"seed={c['seed']}", f"drg.seed={c['drg']['seed']}", f"dfg.seed={c['dfg']['seed']}",
            f"synthetic.seed={c['synthetic']['seed']}", f"softmax.seed={c['softmax']['seed']}",
            f"data.val_seed={c['data']['val_seed']}"]


def redo(run: Path, work: Path, sets: list[str], train: bool) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(run, work, ignore=shutil.ignore_patterns("ray"))
    cmd = [sys.executable, "-m", "digzsl_ray.cli", "run" if train else "evaluate", "--config", "miniworld",
           "--out", str(work)]
    for s in seed_sets(run) + sets:
        cmd += ["--set", s]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.loads((work / "metrics.json").read_text())


def parse(items: list[str]) -> dict[str, list[str]]:
    out = {}
    for it in items:
        name, _, sets = it.partition("=")
        out[name] = [s for s in sets.split(",") if s]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--recipe", action="append", default=[], metavar="NAME=KEY=VALUE[,KEY=VALUE]")
    ap.add_argument("--train", action="append", default=[], metavar="NAME=KEY=VALUE[,KEY=VALUE]",
                    help="a recipe that retrains the generators (digzsl run on the copy)")
    ap.add_argument("--work", default="/tmp/digzsl-zd-beat")
    ap.add_argument("--name", default="zerodiff_beat_clip")
    a = ap.parse_args()
    recipes = {k: (v, False) for k, v in (parse(a.recipe) if a.recipe else DEFAULT_RECIPES).items()}
    recipes.update({k: (v, True) for k, v in parse(a.train).items()})
    runs = [Path(r) for r in a.runs]
    result = {"runs": [str(r) for r in runs], "recipes": {}}
    for name, (sets, train) in recipes.items():
        per = [redo(r, Path(a.work) / name / r.name, sets, train) for r in runs]
        variants = per[0]["ablation"]
        entry = {"settings": sets, "retrains_generators": train,
                 "variants": {v: {k: mean_std([m["ablation"][v][k] for m in per]) for k in ("zsl_top1", "gzsl_H")}
                              for v in variants}}
        if "zsl_classifier" in per[0]:
            entry["validation_zsl_top1"] = {v: mean_std([m["zsl_classifier"]["validation_zsl_top1"][v] for m in per])
                                            for v in per[0]["zsl_classifier"]["validation_zsl_top1"]}
        result["recipes"][name] = entry
        print(json.dumps({"recipe": name, **{v: [x["zsl_top1"]["mean"], x["zsl_top1"]["std"]]
                                             for v, x in entry["variants"].items()}}), flush=True)
    save(a.name, result)


if __name__ == "__main__":
    main()
