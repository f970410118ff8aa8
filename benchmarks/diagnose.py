"""diagnose: why a variant wins or loses, per unseen class, from one finished run directory.

For every unseen class: the CDM's and the MiniWorld oracle's accuracy on generated images (plain
prompt and learned DCT, fresh seeds; OUT/tokens/summary.json), the classifiers' accuracy on their
held-out *synthetic* images and on the *real* test images (ZSL: argmax over unseen classes), and the
CDM's own ZSL accuracy on the real test images. The gap "synthetic minus real" shows how much easier
generated images are than real ones; a class with a low oracle figure was drawn wrong.

    python benchmarks/diagnose.py --run runs/miniworld        # -> benchmarks/results/diagnose.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save  # noqa: E402

CLASSIFIERS = {"dct": "classifier/scores.npz", "plain_prompt": "ablation/plain_prompt/classifier/scores.npz"}


def per_class_zsl(scores: np.ndarray, labels: np.ndarray, unseen: list[int]) -> dict[int, float]:
    u = np.asarray(unseen)
    m = np.isin(labels, u)
    pred = u[scores[m][:, u].argmax(1)] if m.any() else np.zeros(0, dtype=int)
    y = labels[m]
    return {int(c): round(float((pred[y == c] == c).mean() * 100), 2) for c in unseen if (y == c).any()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default="runs/miniworld")
    a = ap.parse_args()
    run = Path(a.run)
    ev = json.loads((run / "evaluation.json").read_text())
    classes, unseen = ev["classes"], ev["unseen"]
    tokens = json.loads((run / "tokens" / "summary.json").read_text()).get("per_class", {})
    rows = {}
    synth = {}
    for v, rel in CLASSIFIERS.items():
        if (run / rel).is_file():
            s = np.load(run / rel)
            synth[v] = per_class_zsl(s["val_scores"], s["val_labels"], unseen)
    for c in unseen:
        name = classes[c]
        t = tokens.get(name, {})
        row = {k: t.get(k) for k in ("plain_cdm_acc", "learned_cdm_acc", "plain_oracle_acc", "learned_oracle_acc")}
        row["cdm_real_zsl"] = ev["variants"]["no_synthetic"]["per_class_zsl"].get(name)
        for v in CLASSIFIERS:
            if v in ev["variants"]:
                row[f"{v}_synthetic_heldout_zsl"] = synth.get(v, {}).get(c)
                row[f"{v}_real_zsl"] = ev["variants"][v]["per_class_zsl"].get(name)
        rows[name] = row

    def mean(key: str) -> float | None:
        vals = [r[key] for r in rows.values() if r.get(key) is not None]
        return round(float(np.mean(vals)), 2) if vals else None

    keys = sorted({k for r in rows.values() for k in r})
    result = {"run": str(run), "per_class": rows, "mean": {k: mean(k) for k in keys}}
    head = f"{'class':<24}" + "".join(f"{k[:18]:>19}" for k in keys)
    print(head)
    for name, r in rows.items():
        print(f"{name[:23]:<24}" + "".join(f"{'' if r.get(k) is None else r[k]:>19}" for k in keys))
    print(f"{'mean':<24}" + "".join(f"{'' if result['mean'][k] is None else result['mean'][k]:>19}" for k in keys))
    save("diagnose", result)


if __name__ == "__main__":
    main()
