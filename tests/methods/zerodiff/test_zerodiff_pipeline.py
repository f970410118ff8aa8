"""ZeroDiff's stages end to end on the tiny CLIP and dataset, on one local Ray cluster: features on
Ray Data, the two folds' generators on two Ray Train workers surviving a worker failure, the
evaluation's contract keys and protocol labels, the report, and the served classifier."""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray")

from tiny import make_tiny_dataset, make_tiny_models, tiny_overrides  # noqa: E402

from digzsl_ray.methods import get_method  # noqa: E402
from digzsl_ray.methods import load_run_config  # noqa: E402
from digzsl_ray.stages.contract import Context, execute  # noqa: E402
from digzsl_ray.stages.runner import context  # noqa: E402

pytestmark = pytest.mark.ray

ZD = ["method=zerodiff", "represent.epochs=2", "represent.hidden=16", "represent.r_dim=8", "represent.proj_dim=4",
      "drg.epochs=2", "dfg.epochs=3", "drg.hidden=16", "drg.critic_hidden=16", "dfg.hidden=16",
      "dfg.critic_hidden=16", "drg.batch_size=8", "dfg.batch_size=8", "drg.critic_iter=2", "dfg.critic_iter=2",
      "generators.spurious_every=2", "generators.checkpoint_every=2", "synthetic.per_class=20", "softmax.epochs=3", "softmax.batch_size=16",
      "transduct.tta_steps=3", "transduct.threshold_grid=[0.0, 0.5]", "features.actors=1", "features.batch_size=16"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("zd")
    sd, clip = make_tiny_models(base / "models")
    data = make_tiny_dataset(base / "data")
    tmp = tempfile.mkdtemp(prefix="r", dir="/tmp")
    ray.init(num_cpus=4, include_dashboard=False, _temp_dir=tmp, logging_level="ERROR",
             runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}})
    cfg = load_run_config(None, tiny_overrides(sd, clip, data) + ZD)
    ctx = context(cfg, get_method("zerodiff"), base / "run", progress=False)
    yield {"cfg": cfg, "ctx": ctx, "base": base}
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)


def _stage(env, name, cfg=None):
    ctx = env["ctx"]
    c = Context(cfg=cfg or env["cfg"], rd=ctx.rd, split=ctx.split, method=ctx.method, progress=False)
    return c.method.stage(name), c


def test_features_and_generators_survive_a_worker_failure(env):
    from digzsl_ray.methods.zerodiff.features import read_features

    for name in ("prototypes", "extract-features", "train-representation"):
        execute(*_stage(env, name))
    stage, ctx = _stage(env, "extract-features")
    assert stage.complete(ctx)
    split = ctx.split
    for s in ("trainval", "test_seen", "test_unseen"):
        x, y = read_features(ctx.path("extract-features:dir") / s)
        assert x.shape == (len(split.items[s]), 16) and y.tolist() == [it.label for it in split.items[s]]
        assert np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-4)  # L2-normalised CLIP features
    gens, ctx = _stage(env, "train-generators")
    marker = env["base"] / "faults" / "generators"
    os.environ["DIGZSL_FAULT"] = f"generators:epoch=3:{marker}"
    try:
        summary = execute(gens, ctx)
    finally:
        os.environ["DIGZSL_FAULT"] = ""
    assert marker.is_file(), "the injected failure did not fire"
    assert gens.complete(ctx) and set(summary) == {"val", "final"}
    for fold in ("val", "final"):
        h = json.loads(ctx.path(f"train-generators:{fold}").read_text())
        recs = [(r["phase"], r["epoch"]) for r in h["history"] if "phase" in r]
        assert recs == [("drg", 0), ("drg", 1), ("dfg", 0), ("dfg", 1), ("dfg", 2)]  # each epoch once
        assert any("resumed_at" in r for r in h["history"])
        assert [r["epoch"] for r in h["history"] if "spurious" in r] == [1, 2]
        assert {"spurious_seen", "spurious_unseen", "semantic_error_unseen"} <= set(
            next(r["spurious"] for r in h["history"] if "spurious" in r))
    val = json.loads(ctx.path("train-generators:val").read_text())
    v = val["unseen"]
    assert v and not set(v) & set(split.unseen) and set(v) <= set(split.seen)  # validation classes play unseen

    # a second, uninterrupted run of the same seeds in fresh worker processes: byte-identical weights and the
    # same per-epoch losses (initial weights drawn from drg.seed / dfg.seed, not from the process's random state)
    def outputs():
        d = ctx.path("train-generators:dir")
        curves = {f: [{k: x for k, x in r.items() if k != "seconds"} for r in
                      json.loads((d / f / "history.json").read_text())["history"] if "phase" in r] for f in ("val", "final")}
        return {f"{f}/{m}": (d / f / f"{m}.safetensors").read_bytes() for f in ("val", "final") for m in ("drg", "dfg")}, curves

    first = outputs()
    gens.run(ctx)
    second = outputs()
    assert first[0] == second[0] and first[1] == second[1]


def test_evaluation_contract_report_and_serving(env):
    from digzsl_ray.methods.zerodiff.serving import load_served

    stage, ctx = _stage(env, "evaluate")
    m = execute(stage, ctx)
    for k in ("zsl_top1", "gzsl_U", "gzsl_S", "gzsl_H", "calibration_lambda", "ausuc", "timing_s", "peak_rss_mb"):
        assert k in m
    assert set(m["ablation"]) == {"clip_zero_shot", "base", "diffgen", "difftta", "full"}
    # the floor: the frozen CLIP with the run's prototypes, lambda from the validation classes' real images
    assert set(m["calibrations"]["clip_zero_shot"]) == {"valclass"}
    assert m["calibrations"]["clip_zero_shot"]["valclass"]["gzsl_H"] == m["ablation"]["clip_zero_shot"]["gzsl_H"]
    assert m["main_variant"] == "full" and m["select_on_test"] is False and m["calibration"] == "valclass"
    assert m["gzsl_H"] == m["ablation"]["full"]["gzsl_H"]
    for v, cals in m["calibrations"].items():
        assert {"valclass", "synthetic"} == set(cals) or v == "clip_zero_shot"
        assert cals["valclass"]["gzsl_H"] == m["ablation"][v]["gzsl_H"]
        assert -1.0 <= cals["valclass"]["calibration_lambda"] <= 1.0
    assert m["validation_fold"]["base"]["epoch"] in range(3)
    # each transductive variant's threshold chosen on the validation fold's scoring half, from the grid
    assert all(m["validation_fold"][v]["threshold"] in (0.0, 0.5) for v in ("diffgen", "difftta", "full"))
    assert m["pseudo_labels"]["val"]["threshold"] == m["validation_fold"]["full"]["threshold"]
    assert {"n", "accuracy_measured", "from_test_seen"} <= set(m["pseudo_labels"]["final"])
    assert set(m["pseudo_labels_by_variant"]) == {"diffgen", "difftta", "full"}
    # ZSL top-1 from the separate ZSL classifier, its epoch chosen on the validation fold; the ZSL pool of the
    # transductive variants is test_unseen alone
    zc = m["zsl_classifier"]
    assert set(zc["epoch"]) == {"base", "diffgen", "difftta", "full"} and all(e in range(3) for e in zc["epoch"].values())
    assert all(v["from_test_seen"] == 0.0 for v in zc["pseudo_labels"].values())
    assert set(zc["gzsl_classifier_zsl_top1"]) == set(zc["epoch"])
    page = ctx.path("evaluate:report").read_text()
    assert page.count("data:image/png;base64,") >= 3 and "t-SNE" in page and "our reading" in page
    model = load_served(ctx.path("evaluate:served"))
    out = model(torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8))
    assert out.shape == (2, len(ctx.split.classes))
    # the test-selected protocol is labelled everywhere it shows
    cfg = env["cfg"].model_copy(deep=True)
    cfg.evaluate.select_on_test = True
    stage, ctx = _stage(env, "evaluate", cfg)
    m2 = execute(stage, ctx)
    assert m2["select_on_test"] is True and "TEST-SELECTED" in m2["protocol"]
    assert all(v["test_selected"] for v in m2["ablation"].values())
    assert "TEST-SELECTED" in ctx.path("evaluate:report").read_text()
    # the best test H over every (epoch, lambda) is at least the H of the validation-chosen pair
    assert m2["gzsl_H"] >= m["ablation"]["full"]["gzsl_H"] - 1e-6
