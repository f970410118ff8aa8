"""Adding one class to a served DIG-ZSL run: ``Method.add_class`` (docs/live.md).

Stages of a job (each skips itself when its output is in the job folder, so a job resumes):

1. ``prototype``  the new name's CLIP prototype (prompt ensemble), and the parent's CDM with the
                  new prototype appended (its projection unchanged) -> ``cdm/``
2. ``token``      its discriminative class token on the token actor pool (the batch stage's actors)
                  -> ``tokens/<slug>.safetensors``
3. ``generate``   its synthetic images on the Ray Data generation pool -> ``synthetic/``
4. ``classifier`` ``live.classifier``: ``retrain-head`` trains the parent's head plus a new row on
                  frozen features of the real seen training images and every synthetic unseen image
                  (the new class's included), epoch chosen on validation data; ``extend`` only
                  appends a row, the mean direction of the new class's synthetic features in the
                  input space of the head's last layer
5. ``gate``       mean per-class validation accuracy on the existing classes (real val images of
                  seen classes, held-out synthetic images of unseen ones; the half of them that did
                  not choose the epoch) under the served ranking
                  (calibrated stacking), parent vs new; more than ``live.max_drop_points`` lost:
                  rejected, with its figures
6. ``version``    a new immutable version in ``OUT/models/`` (lineage, metrics), activated unless
                  ``live.activate`` is off

Real seen training features of a frozen CLIP backbone are cached in ``OUT/live/``: they do not
change from one added class to the next.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np

from digzsl_ray.io import read_json, write_json, write_npz
from digzsl_ray.slug import slugify

log = logging.getLogger("digzsl")

STAGES = ("prototype", "token", "generate", "classifier", "gate", "version")


def _version_dir(v: dict) -> Path:
    return Path(v["classifier_dir"]).parent


def cdm_dir_of(run_dir: Path, v: dict) -> Path:
    d = _version_dir(v) / "cdm"
    return d if (d / "config.json").is_file() and v.get("number", 0) else run_dir / "cdm"


def synthetic_dirs_of(run_dir: Path, v: dict) -> list[Path]:
    """Every synthetic set behind a version: the run's and those of the classes added since."""
    return [run_dir / "synthetic"] + [run_dir / p for p in v.get("extra", {}).get("synthetic", [])]


# 1. prototype + extended CDM ----------------------------------------------------------------------
def extend_cdm(parent_cdm: Path, out: Path, prototype, name: str) -> None:
    """The parent's CDM with one more class: the projection as it was, the prototype appended."""
    import torch
    from safetensors.torch import load_file, save_file

    from digzsl_ray.io import atomic_path

    state = load_file(str(parent_cdm / "head.safetensors"))
    meta = read_json(parent_cdm / "config.json")
    state["prototypes"] = torch.cat([state["prototypes"], prototype.reshape(1, -1).to(state["prototypes"].dtype)])
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "head.safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
    names = list(meta.get("class_names", [])) + [name]
    write_json(out / "config.json", {**meta, "class_names": names})


# 4. features and the head -------------------------------------------------------------------------
def _features(model, images_u8, batch: int = 256):
    import torch

    out = []
    with torch.no_grad():
        for i in range(0, len(images_u8), batch):
            out.append(model.features(images_u8[i : i + batch]).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, 1)


def _synthetic_rows(dirs: list[Path], val_fraction: float) -> dict:
    """PNG bytes and labels of every synthetic set, split into train and held-out rows (the
    classifier stage's rule: keep thresholds, :func:`is_validation_row`)."""
    import pyarrow.parquet as pq

    from digzsl_ray.generation import is_validation_row, read_manifest

    out = {"train": ([], []), "val": ([], [])}
    for d in dirs:
        m = read_manifest(d)
        if not m:
            continue
        thr = m.get("keep_threshold", {})
        for f in m["shards"]:
            t = pq.read_table(d / f, columns=["png", "label", "class_name", "cdm_score", "seed"]).to_pydict()
            for png, y, n, sc, seed in zip(t["png"], t["label"], t["class_name"], t["cdm_score"], t["seed"]):
                k = thr.get(n)
                if k is not None and sc < k:
                    continue
                side = "val" if is_validation_row(int(seed), val_fraction) else "train"
                out[side][0].append(png)
                out[side][1].append(int(y))
    return out


def feature_sets(run_dir: Path, cfg, model, split, dirs: list[Path], size: int, rep=None) -> dict:
    """Features ``{"train"|"val": (X [N, D], y [N])}`` of real seen and synthetic unseen images."""
    import torch

    from digzsl_ray.images import decode_png_bytes, load_images

    key = hashlib.sha256(json.dumps([model.kind, cfg.models.clip, cfg.models.clip_pretrained, size,
                                     [it.path for it in split.train_items()], [it.path for it in split.val]])
                         .encode()).hexdigest()[:16]
    cache = run_dir / "live" / f"real-features-{key}.npz"
    if model.kind == "clip" and cache.is_file():
        z = np.load(cache)
        real = {s: (torch.from_numpy(z[f"{s}_x"]), torch.from_numpy(z[f"{s}_y"])) for s in ("train", "val")}
    else:
        real = {}
        for s, items in (("train", split.train_items()), ("val", split.val)):
            x = load_images([it.path for it in items], size)
            real[s] = (_features(model, x), torch.tensor([it.label for it in items], dtype=torch.int64))
        if model.kind == "clip":  # a frozen tower: the same features for every later job
            write_npz(cache, **{f"{s}_{k}": v.numpy() for s, (xx, yy) in real.items() for k, v in (("x", xx), ("y", yy))})
    if rep is not None:
        rep.progress(0.3, "real features")
    syn = _synthetic_rows(dirs, cfg.classifier.synthetic_val_fraction)
    out = {}
    for s in ("train", "val"):
        pngs, ys = syn[s]
        fx = _features(model, decode_png_bytes(pngs, size)) if pngs else torch.zeros(0, real[s][0].shape[1])
        out[s] = (torch.cat([real[s][0], fx]), torch.cat([real[s][1], torch.tensor(ys, dtype=torch.int64)]))
    if rep is not None:
        rep.progress(0.6, "synthetic features")
    return out


def class_direction(head, feats, prototype):
    """The new class's row direction in the input space of the head's last layer: the normalised
    mean of its synthetic training features (through the hidden layers of an MLP head), or its
    prototype when it has no images (a prototype or linear head)."""
    import torch
    import torch.nn as nn

    hidden = nn.Sequential(*list(head.children())[:-1]) if isinstance(head, nn.Sequential) else None
    if not len(feats):
        if hidden is not None:
            raise ValueError("the new class has no synthetic training images to place its row in the MLP head")
        return torch.nn.functional.normalize(prototype, dim=0)
    with torch.no_grad():
        h = hidden.eval()(feats) if hidden is not None else feats
    return torch.nn.functional.normalize(h.mean(0), dim=0)


def grown_head(model, n_new: int, new_row):
    """The parent's head with ``n_new`` more outputs; the new rows start from ``new_row`` (a unit
    direction in the input space of the last layer, :func:`class_direction`), scaled to the
    existing rows' mean norm, with their mean bias."""
    import torch
    import torch.nn as nn

    from digzsl_ray.classifier import PrototypeHead

    head = model.head
    if isinstance(head, PrototypeHead):
        w = head.weight.detach()
        new = PrototypeHead(torch.cat([w, new_row.reshape(1, -1).to(w.dtype) * w.norm(dim=1).mean()]))
        new.log_scale.data.copy_(head.log_scale.detach())
        return new
    last = head if isinstance(head, nn.Linear) else head[-1]
    grown = nn.Linear(last.in_features, last.out_features + n_new)
    with torch.no_grad():
        grown.weight[: last.out_features] = last.weight
        grown.bias[: last.out_features] = last.bias
        if isinstance(head, nn.Linear):
            grown.weight[last.out_features:] = new_row.reshape(1, -1) * last.weight.norm(dim=1).mean()
            grown.bias[last.out_features:] = last.bias.mean()
    if isinstance(head, nn.Linear):
        return grown
    with torch.no_grad():  # an MLP head: the new row of its last layer
        grown.weight[last.out_features:] = new_row.reshape(1, -1) * last.weight.norm(dim=1).mean()
        grown.bias[last.out_features:] = last.bias.mean()
    layers = [copy.deepcopy(m) for m in list(head.children())[:-1]] + [grown]
    return nn.Sequential(*layers)


def scores(head, x, lam: float, seen: list[int]):
    """Calibrated stacking scores (what serving ranks by): softmax minus lambda on seen columns."""
    import torch

    from digzsl_ray.metrics.zsl import calibrate

    with torch.no_grad():
        p = head(x).softmax(-1).double().numpy()
    return calibrate(p, list(seen), lam)


def mean_class_acc(pred: np.ndarray, y: np.ndarray, classes) -> float:
    accs = [float((pred[y == c] == c).mean()) for c in classes if (y == c).any()]
    return 100.0 * float(np.mean(accs)) if accs else float("nan")


def train_head(head, train, val, n_classes: int, live, seed: int, lam: float, seen: list[int], rep=None):
    """Class-balanced cross-entropy on features; the epoch with the best validation accuracy
    (mean per class over every class, calibrated ranking) is kept."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    x, y = train
    counts = torch.bincount(y, minlength=n_classes).float()
    w = torch.where(counts > 0, 1.0 / counts.clamp(min=1), torch.zeros_like(counts))[y]
    opt = torch.optim.AdamW(head.parameters(), lr=live.lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    best, best_state, history = -1.0, None, []
    all_classes = list(range(n_classes))
    for epoch in range(live.epochs):
        head.train()
        idx = torch.multinomial(w, len(y), replacement=True, generator=gen)
        for i in range(0, len(idx), live.batch_size):
            b = idx[i : i + live.batch_size]
            loss = F.cross_entropy(head(x[b]), y[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        head.eval()
        acc = mean_class_acc(scores(head, val[0], lam, seen).argmax(1), val[1].numpy(), all_classes)
        history.append({"epoch": epoch, "loss": round(float(loss.detach()), 5), "val_acc": round(acc, 3)})
        if acc > best:
            best, best_state = acc, {k: v.detach().clone() for k, v in head.state_dict().items()}
        if rep is not None:
            rep.progress(0.6 + 0.4 * (epoch + 1) / live.epochs, f"epoch {epoch + 1}/{live.epochs}")
    head.load_state_dict(best_state)
    return head.eval(), history


# The job ------------------------------------------------------------------------------------------
def _parent_of(job_dir: Path, versions) -> dict:
    """The version a job builds on, fixed when the job first starts (so a resumed job builds on the same one)."""
    pfile = job_dir / "parent.json"
    if not pfile.is_file():
        write_json(pfile, {"version": versions.active_id()})
    return versions.get(read_json(pfile)["version"])


def _prototype_and_cdm(run_dir: Path, parent: dict, name: str, cfg, device, proto_path: Path, cdm_dir: Path) -> None:
    """Stage 1: the new name's CLIP prototype and the parent's CDM with it appended (skipped when both exist)."""
    from digzsl_ray.models.presets import load_clip
    from digzsl_ray.prototypes import build_prototypes, save_prototypes

    if not (proto_path.is_file() and (cdm_dir / "config.json").is_file()):
        clip, _, tok = load_clip(cfg.models.clip, cfg.models.clip_pretrained, device=device)
        p = build_prototypes(clip, tok, [name], cfg.prototypes.templates, device=device).cpu()
        extend_cdm(cdm_dir_of(run_dir, parent), cdm_dir, p[0], name)
        save_prototypes(proto_path, p, [name], extra={"clip": cfg.models.clip})


def _learn_token(job_dir: Path, cdm_dir: Path, name: str, new_idx: int, slug: str, unseen: list, classes: list,
                 cfg, rep) -> dict:
    """Stage 2: the new class's token on the token actor pool (skipped when learned); its index entry."""
    from digzsl_ray.methods.digzsl.dct import init_word_for, placeholder_for
    from digzsl_ray.methods.digzsl.stages.tokens import learn_on_pool, load_index, write_result

    tokens_dir, index_path = job_dir / "tokens", job_dir / "tokens" / "index.json"
    job = {"name": name, "class_idx": new_idx, "slug": slug, "token": placeholder_for(slug, cfg.tokens.placeholder),
           "init_word": init_word_for(name, cfg.tokens.init_word)}
    index = load_index(index_path)
    if slug not in index or not (tokens_dir / f"{slug}.safetensors").is_file():
        tokens_dir.mkdir(parents=True, exist_ok=True)
        progress_dir = job_dir / "progress"
        progress_dir.mkdir(exist_ok=True)

        def on_tick():
            for f in progress_dir.glob("actor-*.json"):
                try:
                    d = json.loads(f.read_text())
                    rep.progress(d["update"] / d["max_updates"], f"update {d['update']}/{d['max_updates']}")
                except (ValueError, KeyError, OSError):
                    pass

        learn_on_pool(cfg, [job], str(cdm_dir), progress_dir, unseen, classes, job_dir,
                      lambda shard, results: [write_result(tokens_dir, index_path, index, r, "live")
                                              for r in results], on_tick)
    return load_index(index_path)[slug]


def _generate_images(syn_dir: Path, tokens_dir: Path, cdm_dir: Path, entry: dict, name: str, new_idx: int,
                     slug: str, unseen: list, cfg, rep) -> None:
    """Stage 3: the new class's synthetic images on the generation pool (the shards not yet written)."""
    from digzsl_ray.generation import read_manifest
    from digzsl_ray.methods.digzsl.generation import plan_shards, prompts_for
    from digzsl_ray.methods.digzsl.stages.generate import build_manifest, generate_shards
    from digzsl_ray.methods.digzsl.variants import DCT

    live, g = cfg.live, cfg.generate
    n_images = live.images_per_class or g.images_per_class
    shards = plan_shards(DCT, [{"name": name, "label": new_idx, "slug": slug, "token": entry["token"],
                                "token_sha256": entry["sha256"],
                                "prompts": prompts_for(cfg.tokens.templates, entry["token"], name, n_images)}],
                         g.rows_per_shard, g.seed, "live")
    todo = [s for s in shards if not (syn_dir / f"{s.shard_id}.parquet").is_file()]
    if todo or read_manifest(syn_dir) is None:
        syn_dir.mkdir(parents=True, exist_ok=True)
        done = [0]

        def on_rows(n):
            done[0] += n
            rep.progress(done[0] / max(1, sum(len(s.seeds) for s in todo)), f"{done[0]} images")

        if todo:
            generate_shards(syn_dir, todo, dict(sd=cfg.models.sd, tokens_dir=str(tokens_dir), cdm_dir=str(cdm_dir),
                                                unseen=unseen), cfg, on_rows=on_rows)
        write_json(syn_dir / "_manifest.json", build_manifest(syn_dir, shards, DCT, g, "live"))


def _new_classifier(run_dir: Path, parent: dict, syn_dir: Path, staging: Path, new_idx: int, prototype,
                    classes: list, unseen: list, cfg, split, device, rep):
    """Stage 4: the parent's classifier with a row for the new class (``live.classifier``), saved to
    ``staging/classifier``; returns the parent's head, the new head and the held-out rows
    ``(xv, yv, pick)`` (``pick``: the half that chose the epoch)."""
    import torch

    from digzsl_ray.classifier import load_classifier, save_classifier

    live = cfg.live
    model, ccfg, _ = load_classifier(parent["classifier_dir"], device)
    dirs = synthetic_dirs_of(run_dir, parent) + [syn_dir]
    feats = feature_sets(run_dir, cfg, model, split, dirs, ccfg["image_size"], rep)
    new_train = feats["train"][0][feats["train"][1] == new_idx]
    parent_head = model.head  # grown_head copies what it keeps: the parent's head stays as it was, for the gate
    head = grown_head(model, 1, class_direction(parent_head, new_train, prototype))
    history: list = []
    # held-out rows in two halves: even rows choose the epoch, odd rows are the gate's (so the
    # gate never scores the data that picked the model)
    xv, yv = feats["val"]
    pick = torch.arange(len(yv)) % 2 == 0
    if live.classifier == "retrain-head":
        head, history = train_head(head, feats["train"], (xv[pick], yv[pick]), len(classes), live, cfg.seed,
                                   float(parent["lambda"]), list(parent["seen"]), rep)
    model.head = head
    shutil.rmtree(staging, ignore_errors=True)
    save_classifier(staging / "classifier", model, classes, list(parent["seen"]), unseen, cfg.models,
                    extra={"variant": f"live-{live.classifier}", "parent": parent["id"], "history": history})
    return parent_head, head, (xv, yv, pick)


def _gate(parent: dict, parent_head, head, held_out, new_idx: int, live) -> tuple[dict, float, float]:
    """Stage 5: parent vs new head on the gate's half of the held-out rows; returns the gate's
    figures (``passed`` included), and the existing classes' accuracy before and after."""
    xv, yv, pick = held_out
    xv, yv = xv[~pick], yv[~pick]
    lam, seen = float(parent["lambda"]), list(parent["seen"])
    existing = list(range(len(parent["classes"])))
    keep = (yv != new_idx).numpy()
    old = mean_class_acc(scores(parent_head, xv[keep], lam, seen).argmax(1), yv[keep].numpy(), existing)
    s_new = scores(head, xv, lam, seen)
    new_existing = mean_class_acc(s_new[keep].argmax(1), yv[keep].numpy(), existing)
    new_cls = mean_class_acc(s_new[~keep].argmax(1), yv[~keep].numpy(), [new_idx])
    gate = {"existing_val_acc_parent": round(old, 3), "existing_val_acc_new": round(new_existing, 3),
            "drop_points": round(old - new_existing, 3), "max_drop_points": live.max_drop_points,
            "new_class_val_acc": round(new_cls, 3), "new_class_val_images": int((~keep).sum()),
            "classifier": live.classifier}
    gate["passed"] = old - new_existing <= live.max_drop_points
    return gate, old, new_existing


def _commit_version(run_dir: Path, job_dir: Path, staging: Path, tokens_dir: Path, cdm_dir: Path, syn_dir: Path,
                    parent: dict, name: str, slug: str, classes: list, unseen: list, metrics: dict, versions,
                    cfg) -> dict:
    """Stage 6: the staged classifier, token and CDM committed as a new version (activated unless
    ``live.activate`` is off)."""
    (staging / "tokens").mkdir(parents=True, exist_ok=True)
    shutil.copy2(tokens_dir / f"{slug}.safetensors", staging / "tokens" / f"{slug}.safetensors")
    shutil.copytree(cdm_dir, staging / "cdm", dirs_exist_ok=True)
    extra = dict(parent.get("extra", {}))
    extra["synthetic"] = list(extra.get("synthetic", [])) + [str(syn_dir.relative_to(run_dir))]
    v = versions.commit(staging, {
        "run_name": cfg.name, "parent": parent["id"], "added_classes": list(parent.get("added_classes", [])) + [name],
        "classes": classes, "seen": list(parent["seen"]), "unseen": unseen, "lambda": float(parent["lambda"]),
        "task": "single_label", "threshold": float(parent.get("threshold", 0.5)), "method": "digzsl",
        "metrics": metrics, "tokens": dict(parent.get("tokens", {})),
        "added_tokens": {name: f"tokens/{slug}.safetensors"}, "extra": extra, "job": job_dir.name})
    if cfg.live.activate:
        versions.activate(v["id"])
    return v


def add_class(run_dir: Path, job_dir: Path, name: str, rep, versions, cfg, split) -> dict:
    """Run (or resume) the add-class job of ``name``; returns ``{"status": "succeeded" | "rejected",
    "version", "parent", "metrics", "reason"}``. ``versions``: the run's
    :class:`~digzsl_ray.live.versions.VersionStore`; ``cfg``: the run config; ``split``: its data."""
    from digzsl_ray.generation import read_manifest
    from digzsl_ray.models.presets import pick_device
    from digzsl_ray.prototypes import load_prototypes

    run_dir, job_dir = Path(run_dir), Path(job_dir)
    parent = _parent_of(job_dir, versions)
    classes = list(parent["classes"]) + [name]
    new_idx = len(parent["classes"])
    unseen = list(parent["unseen"]) + [new_idx]
    slug = slugify(name)
    metrics: dict = {"parent": parent["id"]}
    live = cfg.live
    device = pick_device(cfg.models.device)

    # 1. prototype and the CDM over the parent's classes plus this one
    proto_path, cdm_dir = job_dir / "prototype.safetensors", job_dir / "cdm"
    with rep.stage("prototype"):
        _prototype_and_cdm(run_dir, parent, name, cfg, device, proto_path, cdm_dir)
    prototype = load_prototypes(proto_path)[0][0]

    # 2. the token, on the token actor pool
    tokens_dir = job_dir / "tokens"
    with rep.stage("token"):
        entry = _learn_token(job_dir, cdm_dir, name, new_idx, slug, unseen, classes, cfg, rep)
        metrics["token"] = {"updates": entry["updates"], "stop_reason": entry["stop_reason"],
                            "fresh_seed_cdm_acc": {k: round(100 * v["cdm_acc"], 2) for k, v in entry["eval"].items()}}

    # 3. its synthetic images
    syn_dir = job_dir / "synthetic"
    with rep.stage("generate"):
        _generate_images(syn_dir, tokens_dir, cdm_dir, entry, name, new_idx, slug, unseen, cfg, rep)
        metrics["images"] = read_manifest(syn_dir)["rows"]

    # 4. the classifier
    staging = job_dir / "staging"
    with rep.stage("classifier"):
        parent_head, head, held_out = _new_classifier(run_dir, parent, syn_dir, staging, new_idx, prototype,
                                                      classes, unseen, cfg, split, device, rep)

    # 5. the gate on validation data
    with rep.stage("gate"):
        metrics["gate"], old, new_existing = _gate(parent, parent_head, head, held_out, new_idx, live)
        passed = metrics["gate"]["passed"]
    if not passed:
        return {"status": "rejected", "parent": parent["id"], "metrics": metrics,
                "reason": f"existing classes' validation accuracy {old:.1f}% -> {new_existing:.1f}%: a drop of "
                          f"{old - new_existing:.1f} points, more than live.max_drop_points={live.max_drop_points}"}

    # 6. the version
    with rep.stage("version"):
        v = _commit_version(run_dir, job_dir, staging, tokens_dir, cdm_dir, syn_dir, parent, name, slug, classes,
                            unseen, metrics, versions, cfg)
    return {"status": "succeeded", "version": v["id"], "parent": parent["id"], "metrics": metrics}
