"""beat_clip: what DIG-ZSL's images add to the frozen CLIP it starts from, per seed and per class.

Reads finished (or generated-up-to-images) run directories of several seeds and measures, without
Ray and without retraining anything upstream:

1. the floor, ``clip_zero_shot``: the frozen CLIP tower's features against the run's prototypes;
2. the judges of the generated images (DCT and plain prompt): the frozen CLIP's zero-shot accuracy
   among unseen classes (an independent judge: the CDM made the DCT gradient), the CDM's own
   ``cdm_score`` accuracy, the MiniWorld oracle's accuracy and where its errors go (target / other
   unseen / seen), per class (hypotheses H1, H2, H4 of docs/DESIGN.md section 5);
3. classifier recipes on cached frozen features (the same maths as the classifier stage,
   :mod:`digzsl_ray.methods.digzsl.head`): the head, distillation toward zero-shot CLIP, the CLIP
   filter, the initial head as a selection candidate, classes whose token failed dropped (H5).
   Each gets the test ZSL top-1, GZSL U/S/H (lambda from validation data) and its validation accuracy
   (real seen val + held-out synthetic images, the same set for every recipe of a variant), which is
   what a choice between recipes may rest on.

    python benchmarks/beat_clip.py --runs /tmp/abl/seed-0 /tmp/abl/seed-1 /tmp/abl/seed-2
    # -> benchmarks/results/beat_clip.json (mean +- std over the runs, per seed, per class)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import mean_std, save  # noqa: E402

# recipe name -> head settings (every other setting is the classifier section of the run's config)
RECIPES = {
    "mlp": dict(head="mlp"),
    "proto": dict(head="prototypes"),
    "proto+init": dict(head="prototypes", init_candidate=True),
    "proto+distill": dict(head="prototypes", distill=0.5),
    "proto+filter": dict(head="prototypes", clip_filter=True),
    "proto+distill+filter": dict(head="prototypes", distill=0.5, clip_filter=True),
    "proto+distill+filter+init": dict(head="prototypes", distill=0.5, clip_filter=True, init_candidate=True),
    "proto+distill+filter+drop": dict(head="prototypes", distill=0.5, clip_filter=True, drop_failed=True),
    # diagnostics, not product choices: the oracle keeps only correct images (an upper bound of what
    # right images add; MiniWorld only), and a per-class fallback to the plain-prompt images where the
    # frozen CLIP accepts fewer of the DCT images than of the plain ones
    "proto+distill+oracle": dict(head="prototypes", distill=0.5, oracle_filter=True),
    "proto+oracle": dict(head="prototypes", oracle_filter=True),
    "proto+distill+fallback": dict(head="prototypes", distill=0.5, fallback=True),
    "he2023": dict(head="prototypes", distill=0.5, clip_filter=True, epochs=30, patience=30, weight_decay=0.1),
}


def load_run(run: Path):
    from digzsl_ray.data import load_split
    from digzsl_ray.methods import validate_run_config
    from digzsl_ray.prototypes import load_prototypes

    import yaml

    cfg = validate_run_config(yaml.safe_load((run / "config.yaml").read_text()))
    split = load_split(cfg.data, out=run, validate=False, progress=False)
    protos = load_prototypes(run / "prototypes.safetensors")[0]
    return cfg, split, protos


def read_synthetic(d: Path) -> dict:
    import pyarrow.parquet as pq

    from digzsl_ray.generation import read_manifest

    m = read_manifest(d)
    cols = {"png": [], "label": [], "class_name": [], "seed": [], "cdm_score": []}
    for f in (m or {}).get("shards", []):
        t = pq.read_table(d / f, columns=list(cols)).to_pydict()
        for k in cols:
            cols[k].extend(t[k])
    return {k: (v if k == "png" else np.asarray(v)) for k, v in cols.items()}


def oracle_judge(pngs: list[bytes], classes: list[str]) -> np.ndarray:
    """The MiniWorld oracle's predicted class index (in the run's class order; -1 = a class not in the run)."""
    import torch

    from digzsl_ray.images import decode_png_bytes
    from digzsl_ray.miniworld.oracle import load_oracle, oracle_predict

    model, names = load_oracle(Path(__file__).resolve().parents[1] / "digzsl_ray/assets/miniworld/oracle")
    pos = {n: i for i, n in enumerate(classes)}
    x = decode_png_bytes(pngs, 32).float().div(255)
    with torch.no_grad():
        pred = oracle_predict(model, x).numpy()
    return np.array([pos.get(names[p], -1) for p in pred])


def judges(syn: dict, zs_logits: np.ndarray, split) -> dict:
    """Accuracy of the generated images under the frozen CLIP (argmax over unseen), the CDM score
    (> 1/#unseen: the CDM's softmax of the own class) and the oracle, overall and per class."""
    unseen = np.asarray(split.unseen)
    y = syn["label"]
    clip_pred = unseen[zs_logits[:, unseen].argmax(1)]
    orc = oracle_judge(syn["png"], list(split.classes))
    seen_set = set(split.seen)
    out = {"clip_acc": float((clip_pred == y).mean() * 100), "oracle_acc": float((orc == y).mean() * 100),
           "oracle_other_unseen": float(np.mean([(p != t) and p in set(unseen.tolist()) for p, t in zip(orc, y)]) * 100),
           "oracle_seen": float(np.mean([p in seen_set for p in orc]) * 100), "per_class": {}}
    for c in split.unseen:
        m = y == c
        if m.any():
            out["per_class"][split.classes[c]] = {"clip_acc": round(float((clip_pred[m] == c).mean() * 100), 1),
                                                  "oracle_acc": round(float((orc[m] == c).mean() * 100), 1)}
    return out


def evaluate_scores(test_s, y_s, test_u, y_u, val_s, yv_s, val_u, yv_u, split, grid) -> dict:
    from digzsl_ray.metrics.zsl import full_report

    r = full_report(test_s, y_s, test_u, y_u, val_s, yv_s, val_u, yv_u, list(split.seen), list(split.unseen), grid)
    return {k: round(float(r[k]), 3) for k in ("zsl_top1", "gzsl_U", "gzsl_S", "gzsl_H", "calibration_lambda",
                                                  "ausuc")} | {
        "per_class_zsl": {split.classes[c]: round(a, 1) for c, a in r["per_class_zsl"].items()}}


def _zsl(p: np.ndarray, y: np.ndarray, cols: np.ndarray) -> float:
    from digzsl_ray.metrics.zsl import mean_per_class_accuracy

    return mean_per_class_accuracy(y, cols[p[:, cols].argmax(1)], list(cols))


def valclass_images(run: Path, cfg, split, vset: list[int]) -> dict:
    """Plain-prompt images of the validation classes (the run's generation settings and plain template,
    seeds of their own), generated once and kept in ``OUT/valclass_plain.npz``."""
    path = run / "valclass_plain.npz"
    names = [split.classes[i] for i in vset]
    if path.is_file():
        d = np.load(path, allow_pickle=False)
        if list(d["names"]) == names:
            buf, ends = d["png"].tobytes(), d["ends"]
            png = [buf[a:b] for a, b in zip(np.concatenate([[0], ends[:-1]]), ends)]
            return {"png": png, "label": d["label"], "seed": d["seed"]}
    import torch

    from digzsl_ray.images import png_bytes
    from digzsl_ray.models.presets import load_sd_pipeline
    from digzsl_ray.models.sd import generate

    g = cfg.generate
    pipe = load_sd_pipeline(cfg.models.sd, torch.device("cpu"), "fp32", cfg.models.attention)
    n = g.images_per_class
    labels = np.repeat(np.array(vset), n)
    seeds = np.array([900_000 + 10_000 * g.seed + i for i in range(len(labels))])
    prompts = [g.plain_template.format(name=split.classes[y]) for y in labels]
    imgs = generate(pipe, prompts, seeds.tolist(), g.num_inference_steps, g.guidance_scale, batch=g.batch_size)
    png = [png_bytes(im) for im in imgs]
    np.savez(path, png=np.frombuffer(b"".join(png), dtype=np.uint8), ends=np.cumsum([len(b) for b in png]),
             label=labels, seed=seeds, names=np.array(names))
    return {"png": png, "label": labels, "seed": seeds}


def run_seed(run: Path, variants: list[str], recipes: dict, valclass: bool = True) -> dict:
    import torch

    from digzsl_ray.classifier import PrototypeHead
    from digzsl_ray.features import FrozenCLIP, clip_filter, softmax, zero_shot_logits
    from digzsl_ray.generation import is_validation_row
    from digzsl_ray.data.split import validation_classes
    from digzsl_ray.methods.digzsl.head import head_logits, train_head

    cfg, split, protos = load_run(run)
    c = cfg.classifier
    torch.set_num_threads(2)
    clip = FrozenCLIP(cfg.models.clip, cfg.models.clip_pretrained, "cpu", cache_dir=run / "features")
    views, seed = 3, cfg.seed
    train_items = split.train_items()
    f_real = clip.of_paths([it.path for it in train_items], views=views, seed=seed)
    y_real = np.array([it.label for it in train_items])
    f_val = clip.of_paths([it.path for it in split.val])[0]
    y_val = np.array([it.label for it in split.val])
    f_ts = clip.of_paths([it.path for it in split.items["test_seen"]])[0]
    y_ts = np.array([it.label for it in split.items["test_seen"]])
    f_tu = clip.of_paths([it.path for it in split.items["test_unseen"]])[0]
    y_tu = np.array([it.label for it in split.items["test_unseen"]])
    grid = np.linspace(0.0, cfg.evaluate.lambda_max, cfg.evaluate.lambda_grid)
    scale = clip.scale
    out: dict = {"logit_scale": round(scale, 3), "variants": {}, "judges": {}}

    def zs(f):
        return softmax(zero_shot_logits(f, protos, scale))

    syn = {v: read_synthetic(run / ("synthetic" if v == "dct" else "synthetic_plain")) for v in variants}
    f_syn = {v: clip.of_pngs(syn[v]["png"], views=views, seed=seed + 1) for v in variants}
    held = {v: np.array([is_validation_row(int(s), c.synthetic_val_fraction) for s in syn[v]["seed"]]) for v in variants}
    # the floor: lambda on real seen val + held-out DCT images (as for the CDM), scored by the frozen CLIP
    hv = held["dct"]
    out["variants"]["clip_zero_shot"] = evaluate_scores(
        zs(f_ts), y_ts, zs(f_tu), y_tu, zs(f_val), y_val, zs(f_syn["dct"][0][hv]), syn["dct"]["label"][hv], split, grid)
    orc, clip_ok = {}, {}
    for v in variants:
        out["judges"][v] = judges(syn[v], zero_shot_logits(f_syn[v][0], protos, scale), split)
        orc[v] = oracle_judge(syn[v]["png"], list(split.classes))
        # the frozen CLIP's acceptance rate (its filter) per class on the training rows: the fallback's judge
        ok = clip_filter(zero_shot_logits(f_syn[v][0], protos, scale), syn[v]["label"], list(split.unseen))
        tr_ = ~held[v]
        clip_ok[v] = {int(cl): float(ok[tr_ & (syn[v]["label"] == cl)].mean()) for cl in split.unseen
                      if (tr_ & (syn[v]["label"] == cl)).any()}
        # the CDM's own accuracy on the images: its score of the own class above chance among unseen
        out["judges"][v]["cdm_score_mean"] = round(float(np.mean(syn[v]["cdm_score"])), 4)
    index = json.loads((run / "tokens" / "index.json").read_text()) if (run / "tokens" / "index.json").is_file() else {}
    # a token failed when it never reached the gamma stop (patience or the update cap ended it)
    failed = {r["name"] for r in index.values() if r.get("stop_reason") != "gamma"}
    out["failed_tokens"] = sorted(failed)
    out["tokens"] = {r["name"]: {"stop_reason": r.get("stop_reason"), "updates": r.get("updates"),
                                 "final_cdm_acc": r.get("final_cdm_acc"),
                                 **{f"{k}_{m}": round(100 * r["eval"][k][m], 1) for k in ("plain", "learned")
                                    for m in ("cdm_acc", "oracle_acc") if m in r.get("eval", {}).get(k, {})}}
                     for r in index.values()}

    def fit(r: dict, ft, yt, fv, yv):
        """A head trained by recipe ``r`` on features ``ft [V, N, D]`` (selection on ``fv``, ``yv``)."""
        torch.manual_seed(cfg.seed)
        if r["head"] == "prototypes":
            head = PrototypeHead(protos, scale)  # starts as the frozen CLIP's zero-shot classifier
        else:
            head = torch.nn.Sequential(torch.nn.Linear(ft.shape[-1], 512), torch.nn.GELU(), torch.nn.Dropout(0.1),
                                       torch.nn.Linear(512, len(split.classes)))
        teacher = None
        if r.get("distill"):
            # the teacher: the frozen CLIP's zero-shot logits (the prototype head starts equal to it)
            teacher = torch.stack([torch.from_numpy(zero_shot_logits(ft[i], protos, scale)) for i in range(len(ft))])
        info = train_head(head, ft, yt, fv, yv, epochs=r.get("epochs", c.epochs), patience=r.get("patience", c.patience),
                          lr=c.lr, weight_decay=r.get("weight_decay", c.weight_decay), batch=c.batch_size,
                          seed=cfg.seed, teacher=teacher, distill=r.get("distill", 0.0),
                          temperature=r.get("temperature", 2.0), init_candidate=r.get("init_candidate", False))
        return head, info

    # The validation-class check (real images, never test): seen classes V are treated as unseen. A
    # recipe trains on the real images of the other seen classes, plain-prompt images of V and the
    # variant's images of the unseen classes; it is scored on V's real trainval images (argmax over V
    # and the unseen classes), which is what it does with classes that only have synthetic images.
    vset = validation_classes(split, cfg.data.val_seed) if valclass else []
    if vset:
        vimg = valclass_images(run, cfg, split, vset)
        f_vsyn = clip.of_pngs(vimg["png"], views=views, seed=seed + 2)
        v_held = np.array([is_validation_row(int(x), c.synthetic_val_fraction) for x in vimg["seed"]])
        not_v = ~np.isin(y_real, vset)
        v_items = [it for it in split.items["trainval"] if it.label in set(vset)]
        f_vreal = clip.of_paths([it.path for it in v_items])[0]
        y_vreal = np.array([it.label for it in v_items])
        v_cols = np.array(sorted(set(vset) | set(split.unseen)))
        out["valclass"] = {"classes": [split.classes[i] for i in vset],
                           "clip_zero_shot": round(float(_zsl(zs(f_vreal), y_vreal, v_cols)), 3)}

    for v in variants:
        s = syn[v]
        tr = ~held[v]
        keep = clip_filter(zero_shot_logits(f_syn[v][0], protos, scale), s["label"], list(split.unseen))
        out["judges"][v]["clip_filter_kept"] = round(float(keep.mean() * 100), 1)
        # the same validation set for every recipe: real seen val + this variant's held-out images (unfiltered)
        fv = torch.cat([f_val, f_syn[v][0][held[v]]])
        yv = np.concatenate([y_val, s["label"][held[v]]])
        for name, r in recipes.items():
            t0 = time.perf_counter()
            rows = tr & keep if r.get("clip_filter") else tr
            if r.get("drop_failed"):
                rows = rows & ~np.isin(s["class_name"], list(failed))
            if r.get("oracle_filter"):
                rows = rows & (orc[v] == s["label"])
            fs, ys = f_syn[v][:, rows], s["label"][rows]
            if r.get("fallback"):
                if v != "dct" or "plain_prompt" not in syn:
                    continue
                p_ = syn["plain_prompt"]
                use_plain = [cl for cl in split.unseen if clip_ok["plain_prompt"].get(cl, 0) > clip_ok["dct"].get(cl, 0)]
                rows = tr & ~np.isin(s["label"], use_plain)
                prow = ~held["plain_prompt"] & np.isin(p_["label"], use_plain)
                fs = torch.cat([f_syn[v][:, rows], f_syn["plain_prompt"][:, prow]], dim=1)
                ys = np.concatenate([s["label"][rows], p_["label"][prow]])
                res_extra = {"fallback_classes": [split.classes[cl] for cl in use_plain]}
            ft = torch.cat([f_real, fs], dim=1)
            yt = torch.as_tensor(np.concatenate([y_real, ys]))
            head, info = fit(r, ft, yt, fv, yv)
            with torch.no_grad():
                p = {k: head_logits(head, f).softmax(-1).numpy() for k, f in
                     (("ts", f_ts), ("tu", f_tu), ("val", fv))}
            ms = np.isin(yv, split.seen)
            res = evaluate_scores(p["ts"], y_ts, p["tu"], y_tu, p["val"][ms], yv[ms], p["val"][~ms], yv[~ms], split, grid)
            res.update(best_epoch=info["best_epoch"], best_val_acc=round(info["best_val_acc"], 3),
                       train_rows=int(len(ys)), seconds=round(time.perf_counter() - t0, 2))
            if r.get("fallback"):
                res.update(res_extra)
            if vset:
                vkeep = (clip_filter(zero_shot_logits(f_vsyn[0], protos, scale), vimg["label"], list(v_cols))
                         if r.get("clip_filter") else np.ones(len(v_held), bool)) & ~v_held
                ft2 = torch.cat([f_real[:, not_v], f_vsyn[:, vkeep], fs], dim=1)
                yt2 = torch.as_tensor(np.concatenate([y_real[not_v], vimg["label"][vkeep], ys]))
                vm = ~np.isin(y_val, vset)
                fv2 = torch.cat([f_val[vm], f_vsyn[0][v_held], f_syn[v][0][held[v]]])
                yv2 = np.concatenate([y_val[vm], vimg["label"][v_held], s["label"][held[v]]])
                head2, _ = fit(r, ft2, yt2, fv2, yv2)
                with torch.no_grad():
                    pv = head_logits(head2, f_vreal).softmax(-1).numpy()
                res["valclass_zsl"] = round(float(_zsl(pv, y_vreal, v_cols)), 3)
            out["variants"][f"{v}/{name}"] = res
            print(f"{run.name} {v}/{name}: ZSL {res['zsl_top1']:.1f} H {res['gzsl_H']:.1f} "
                  f"val {res['best_val_acc']:.1f} valclass {res.get('valclass_zsl', float('nan')):.1f} "
                  f"epoch {info['best_epoch']}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", nargs="+", required=True, help="run directories, one per seed")
    ap.add_argument("--variants", nargs="+", default=["dct", "plain_prompt"])
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    ap.add_argument("--name", default="beat_clip", help="results/NAME.json")
    ap.add_argument("--no-valclass", action="store_true", help="skip the validation-class check")
    a = ap.parse_args()
    per_run = {str(r): run_seed(Path(r), a.variants, {k: RECIPES[k] for k in a.recipes}, not a.no_valclass)
               for r in a.runs}
    first = next(iter(per_run.values()))
    keys = ("zsl_top1", "gzsl_U", "gzsl_S", "gzsl_H", "ausuc", "best_val_acc", "valclass_zsl")
    summary = {name: {k: mean_std([r["variants"][name][k] for r in per_run.values()]) for k in keys
                      if k in first["variants"][name]} for name in first["variants"]}
    judges = {v: {k: mean_std([r["judges"][v][k] for r in per_run.values()])
                  for k in ("clip_acc", "oracle_acc", "oracle_other_unseen", "oracle_seen", "clip_filter_kept")}
              for v in first["judges"]}
    # per unseen class, mean over the runs: the floor, the default recipe with each image set, and the
    # judges of those images (why a class gains or loses)
    per_class: dict = {}
    rec = "proto+distill"
    for cname in first["variants"]["clip_zero_shot"]["per_class_zsl"]:
        row = {"clip_zero_shot": np.mean([r["variants"]["clip_zero_shot"]["per_class_zsl"][cname] for r in per_run.values()])}
        for v in first["judges"]:
            if f"{v}/{rec}" in first["variants"]:
                row[f"{v}/{rec}"] = np.mean([r["variants"][f"{v}/{rec}"]["per_class_zsl"][cname] for r in per_run.values()])
            for j in ("clip_acc", "oracle_acc"):
                row[f"{v}_images_{j}"] = np.mean([r["judges"][v]["per_class"][cname][j] for r in per_run.values()])
        per_class[cname] = {k: round(float(x), 1) for k, x in row.items()}
    floor = summary["clip_zero_shot"]["zsl_top1"]["mean"]
    def cell(s: dict, k: str) -> str:
        return f"{s[k]['mean']:>8.1f} ±{s[k]['std']:>4.1f}" if k in s else " " * 14

    lines = [f"{'variant/recipe':<36}{'ZSL T1':>14}{'GZSL H':>14}{'val acc':>14}{'valclass ZSL':>14}"]
    for name, s in summary.items():
        lines.append(f"{name:<36}" + "".join(cell(s, k) for k in ("zsl_top1", "gzsl_H", "best_val_acc", "valclass_zsl")))
    if all("valclass" in r for r in per_run.values()):
        vc = mean_std([r["valclass"]["clip_zero_shot"] for r in per_run.values()])
        summary["valclass_clip_zero_shot"] = vc
        lines.append(f"(validation classes, frozen CLIP zero-shot: {vc['mean']:.1f} ± {vc['std']:.1f})")
    print("\n".join(lines))
    print(f"(floor clip_zero_shot ZSL top-1 {floor:.1f})")
    hdr = ["class", "CLIP", *[k for k in next(iter(per_class.values())) if k != "clip_zero_shot"]]
    print("per class (mean over runs): " + " | ".join(hdr))
    for cname, row in sorted(per_class.items(), key=lambda kv: kv[1]["clip_zero_shot"]):
        print(f"  {cname:<24}" + " ".join(f"{x:>6.1f}" for x in row.values()))
    save(a.name, {"runs": list(per_run), "summary": summary, "judges": judges, "per_class": per_class, "per_run": per_run,
                  "recipes": {k: RECIPES[k] for k in a.recipes}})


if __name__ == "__main__":
    main()
