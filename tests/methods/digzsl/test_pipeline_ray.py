"""The Ray stages end to end on tiny models and a tiny dataset, on one shared local Ray cluster.

Tests run in file order and share one run directory: CDM (with a worker failing once), tokens (with
an actor killed in the middle of a class), generation (with a lost shard), classifier (with a
worker failing once), evaluation and report, and the guard against another run's directory.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray")

from tiny import make_tiny_dataset, make_tiny_models, tiny_overrides  # noqa: E402

from digzsl_ray.methods import get_method  # noqa: E402
from digzsl_ray.methods import load_run_config as load_config
from digzsl_ray.stages.contract import Context, execute  # noqa: E402
from digzsl_ray.stages.rundir import RunDirError, prepare  # noqa: E402
from digzsl_ray.stages.runner import context  # noqa: E402

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("pipe")
    sd, clip = make_tiny_models(base / "models")
    data = make_tiny_dataset(base / "data")
    marker_dir = base / "faults"
    tmp = tempfile.mkdtemp(prefix="r", dir="/tmp")  # short: Ray's socket paths have a length limit
    ray.init(num_cpus=4, include_dashboard=False, _temp_dir=tmp, logging_level="ERROR",
             runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}})
    cfg = load_config(None, tiny_overrides(sd, clip, data))
    out = base / "run"
    ctx = context(cfg, get_method(), out, progress=False)
    yield {"cfg": cfg, "ctx": ctx, "rd": ctx.rd, "split": ctx.split, "base": base, "markers": marker_dir, "sd": sd,
           "clip": clip, "data": data}
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)


def _stage(env, name: str, cfg=None, args=None):
    ctx = env["ctx"]
    c = Context(cfg=cfg or env["cfg"], rd=ctx.rd, split=ctx.split, method=ctx.method, progress=False, args=args)
    return c.method.stage(name), c


def test_prototypes_and_cdm_survive_a_worker_failure(env):
    stage, ctx = _stage(env, "prototypes")
    assert not stage.complete(ctx)
    execute(stage, ctx)
    assert stage.complete(ctx)
    cdm, ctx = _stage(env, "train-cdm")
    split = ctx.split
    marker = env["markers"] / "cdm"
    os.environ["DIGZSL_FAULT"] = f"cdm:epoch=1:{marker}"
    try:
        metrics = execute(cdm, ctx)
    finally:
        os.environ["DIGZSL_FAULT"] = ""
    assert marker.is_file(), "the injected failure did not fire"
    assert cdm.complete(ctx)
    meta = json.loads(ctx.path("train-cdm:config").read_text())
    epochs = [h["epoch"] for h in meta["history"] if "epoch" in h]
    assert epochs == [0, 1, 2]  # epoch 1 failed once, then resumed from the epoch-0 checkpoint
    assert {"resumed_at_epoch": 1} in meta["history"]
    # the resume used the run's checkpoints; once the stage is complete they are gone (ray.keep_checkpoints off)
    assert not list(ctx.rd.ray_storage.glob("cdm-*"))
    for k in ("zsl_top1", "gzsl_U", "gzsl_S", "gzsl_H"):
        assert 0 <= metrics[k] <= 100
    # rerun: complete stage is skipped (no training: files untouched)
    weights = ctx.path("train-cdm:weights")
    mtime = weights.stat().st_mtime
    assert execute(cdm, ctx) == metrics  # complete: its metrics come back without training
    assert weights.stat().st_mtime == mtime
    # loadable with one call
    from digzsl_ray.methods.digzsl.cdm import load_cdm

    model = load_cdm(ctx.path("train-cdm:dir"))
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, len(split.classes))


def _reference_tokens(env) -> dict[str, torch.Tensor]:
    """Tokens of an uninterrupted single-process run with the actors' thread count."""
    from digzsl_ray.methods.digzsl.cdm import load_cdm
    from digzsl_ray.methods.digzsl.dct import DCTLearner
    from digzsl_ray.methods.digzsl.stages.tokens import class_jobs
    from digzsl_ray.models.presets import load_sd_pipeline

    cfg, split = env["cfg"], env["split"]
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.models.torch_threads)
    try:
        pipe = load_sd_pipeline(cfg.models.sd)
        learner = DCTLearner(pipe, load_cdm(env["ctx"].path("train-cdm:dir")), list(split.unseen), cfg.tokens)
        out = {}
        for job in class_jobs(cfg, split):
            out[job["name"]] = learner.learn(job["name"], job["class_idx"], job["token"], job["init_word"]).vector
        return out
    finally:
        torch.set_num_threads(threads)


def test_tokens_survive_a_killed_actor_and_equal_an_uninterrupted_run(env):
    from safetensors.torch import load_file

    from digzsl_ray.methods.digzsl.stages.tokens import token_actor_name

    cfg, rd, split = env["cfg"], env["rd"], env["split"]
    # slow the classes down a little so an actor can be caught in the middle of one
    cfg = cfg.model_copy(update={"tokens": cfg.tokens.model_copy(update={"max_updates": 6, "min_updates": 6})})
    tokens, ctx = _stage(env, "learn-tokens", cfg)
    tokens_dir = ctx.path("learn-tokens:dir")
    killed: list[str] = []
    done = threading.Event()

    def killer():
        while not done.is_set() and not killed:
            for p in ctx.path("learn-tokens:progress").glob("actor-*.json"):
                try:
                    d = json.loads(p.read_text())
                except (ValueError, OSError):
                    continue
                if 1 <= d["update"] < d["max_updates"]:
                    actor_id = int(p.stem.split("-")[1])
                    ray.kill(ray.get_actor(token_actor_name(rd.root, actor_id), namespace="digzsl"))
                    killed.append(d["class"])
                    return
            time.sleep(0.02)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    try:
        summary = execute(tokens, ctx)
    finally:
        done.set()
    t.join(timeout=5)
    assert killed, "no actor was caught in the middle of a class"
    assert summary["classes"] == len(split.unseen)
    assert summary["oracle"] == "absent"  # a user's own dataset has no world, hence no oracle
    assert tokens.complete(ctx)
    index = json.loads(ctx.path("learn-tokens:index").read_text())
    env["cfg"] = cfg
    reference = _reference_tokens(env)
    for e in index.values():
        vec = load_file(str(tokens_dir / e["file"]))[e["token"]]
        assert torch.allclose(vec, reference[e["name"]], atol=1e-6), e["name"]
        assert e["stop_reason"] in ("gamma", "patience", "max_updates") and len(e["loss_curve"]) == e["updates"]
    s = json.loads(ctx.path("learn-tokens:summary").read_text())
    assert {"plain_cdm_acc", "untrained_cdm_acc", "learned_cdm_acc"} <= set(s["mean"])
    # a rerun learns nothing
    before = {p.name: p.stat().st_mtime for p in tokens_dir.glob("*.safetensors")}
    t0 = time.time()
    tokens.run(ctx)
    assert {p.name: p.stat().st_mtime for p in tokens_dir.glob("*.safetensors")} == before
    assert time.time() - t0 < 10


def test_generation_resumes_lost_shards_without_duplicates(env):
    import pyarrow.parquet as pq

    cfg, split = env["cfg"], env["split"]
    generate, ctx = _stage(env, "generate", cfg)
    manifests = execute(generate, ctx)
    n = cfg.generate.images_per_class * len(split.unseen)
    assert manifests["dct"]["rows"] == n and manifests["plain_prompt"]["rows"] == n
    assert generate.complete(ctx)
    d = ctx.path("generate:dct")
    shards = sorted(d.glob("*.parquet"))
    lost = shards[1]
    original = pq.read_table(lost).to_pydict()
    lost.unlink()  # as if the run had been killed before this shard was written
    (d / "_manifest.json").unlink()
    assert not generate.complete(ctx)
    execute(generate, ctx)
    table = pq.read_table(d, columns=["seed", "label", "prompt", "token_sha256", "cdm_score"]).to_pydict()
    assert len(table["seed"]) == n and len(set(table["seed"])) == n  # same rows, no duplicates
    again = pq.read_table(lost).to_pydict()
    assert again["seed"] == original["seed"] and again["prompt"] == original["prompt"]
    assert np.allclose(again["cdm_score"], original["cdm_score"], atol=1e-5)
    index = json.loads(ctx.path("learn-tokens:index").read_text())
    sha = {e["name"]: e["sha256"] for e in index.values()}
    rows = pq.read_table(d, columns=["class_name", "token_sha256", "prompt"]).to_pydict()
    for name, h, prompt in zip(rows["class_name"], rows["token_sha256"], rows["prompt"]):
        assert h == sha[name] and "<dct-" in prompt


def test_classifier_resumes_after_a_worker_failure(env):
    import argparse

    split = env["split"]
    clf, ctx = _stage(env, "train-classifier", args=argparse.Namespace(variant="dct"))
    marker = env["markers"] / "classifier"
    os.environ["DIGZSL_FAULT"] = f"classifier:epoch=1:{marker}"
    try:
        execute(clf, ctx)
    finally:
        os.environ["DIGZSL_FAULT"] = ""
    assert marker.is_file()
    assert clf.complete(ctx) and not clf.variant_complete(ctx, "plain_prompt")
    meta = json.loads((ctx.path("train-classifier:dct") / "config.json").read_text())
    assert {"resumed_at_epoch": 1} in meta["history"]
    assert not list(ctx.rd.ray_storage.glob("classifier-dct-*"))  # the task's state file, removed when done
    rows = [h["rows"] for h in meta["history"] if "rows" in h]
    assert rows and all(r > 0 for r in rows)
    clf, ctx = _stage(env, "train-classifier")  # all variants: dct is complete, plain_prompt is trained
    execute(clf, ctx)
    s = np.load(ctx.path("train-classifier:plain_prompt_scores"))
    assert s["test_unseen_scores"].shape == (len(split.items["test_unseen"]), len(split.classes))
    assert np.allclose(s["test_unseen_scores"].sum(1), 1, atol=1e-4)


def test_evaluation_and_report(env):
    evaluate, ctx = _stage(env, "evaluate")
    metrics = execute(evaluate, ctx)
    for k in ("zsl_top1", "gzsl_U", "gzsl_S", "gzsl_H", "calibration_lambda", "ausuc", "timing_s", "peak_rss_mb"):
        assert k in metrics
    assert set(metrics["ablation"]) == {"clip_zero_shot", "no_synthetic", "plain_prompt", "dct"}
    # the floor is the frozen CLIP with the run's prototypes, computed here from scratch (no cache)
    from digzsl_ray.features import FrozenCLIP, zero_shot_logits
    from digzsl_ray.metrics.zsl import zsl_top1
    from digzsl_ray.prototypes import load_prototypes

    cfg, split = env["cfg"], env["split"]
    clip = FrozenCLIP(cfg.models.clip, cfg.models.clip_pretrained, "cpu")
    items = split.items["test_unseen"]
    z = zero_shot_logits(clip.of_paths([it.path for it in items])[0], load_prototypes(ctx.path("prototypes:prototypes"))[0],
                         clip.scale)
    expected = zsl_top1(z, np.array([it.label for it in items]), list(split.unseen))
    assert abs(metrics["ablation"]["clip_zero_shot"]["zsl_top1"] - round(expected, 3)) < 1e-6
    from digzsl_ray.metrics.zsl import format_headline

    table = format_headline(metrics, ctx.method.variants)
    assert table.splitlines()[1].startswith("clip_zero_shot") and "vs CLIP" in table.splitlines()[0]
    for v in metrics["ablation"].values():
        assert {"zsl_top1", "gzsl_U", "gzsl_S", "gzsl_H"} <= set(v)
    assert json.loads(ctx.path("evaluate:metrics").read_text()) == metrics
    # both calibrations for every variant; the headline is the configured one
    assert metrics["calibration"] == "synthetic"
    assert set(metrics["calibrations"]) == {"clip_zero_shot", "no_synthetic", "plain_prompt", "dct"}
    for name, cals in metrics["calibrations"].items():
        assert {"synthetic", "valclass"} <= set(cals)
        assert cals["synthetic"]["gzsl_H"] == metrics["ablation"][name]["gzsl_H"]
        assert 0.0 <= cals["valclass"]["calibration_lambda"] <= 1.0 and "gzsl_U" in cals["valclass"]["validation"]
    s = np.load(ctx.path("train-cdm:scores"))
    # the validation-class head scored real images of the held-out seen class (tiny: 1 of 4)
    assert len(s["valclass_classes"]) == 1 and set(s["valclass_unseen_labels"]) == set(s["valclass_classes"])
    page = ctx.path("evaluate:report").read_text()
    assert page.count("data:image/png;base64,") >= 6 and "t-SNE" not in page or "Token embeddings" in page



def test_tracking_a_resumed_run_logs_every_stage_to_tensorboard(env):
    """`digzsl run --set tracking.backend=tensorboard` on the finished run: every stage but the evaluation
    is skipped as complete (tracking is in no fingerprint), and the event files still hold each stage's
    curves, read back from its outputs, and each variant's final metrics."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from digzsl_ray.stages.runner import run_pipeline

    overrides = ["tokens.max_updates=6", "tokens.min_updates=6", "tracking.backend=tensorboard"]  # as the tests ran
    cfg = load_config(None, tiny_overrides(env["sd"], env["clip"], env["data"]) + overrides)
    root = env["rd"].root
    metrics = run_pipeline(cfg, get_method(), root, progress=False)
    (run,) = (root / "tensorboard").iterdir()

    def events(sub):
        acc = EventAccumulator(str(run / sub))
        acc.Reload()
        return acc

    for stage in get_method().stages:
        tags = events(f"stages/{stage.name}").Tensors("tags/text_summary")[0].tensor_proto.string_val[0].decode()
        status = "ran" if stage.name == "evaluate" else "complete, skipped"  # evaluation is always redone
        assert f"digzsl.status: {status}" in tags, (stage.name, tags)
    cdm = json.loads((root / "cdm" / "config.json").read_text())["history"]
    assert [(e.step, round(e.value, 3)) for e in events("stages/train-cdm").Scalars("val_acc")] == [
        (h["epoch"], round(h["val_acc"], 3)) for h in cdm if "epoch" in h]
    assert any(t.startswith("loss/") for t in events("stages/learn-tokens").Tags()["scalars"])
    assert "dct/val_acc" in events("stages/train-classifier").Tags()["scalars"]
    for v in get_method().variants:
        (e,) = events(f"variants/{v}").Scalars("zsl_top1")
        assert abs(e.value - metrics["ablation"][v]["zsl_top1"]) < 1e-4


def test_run_dir_of_another_config_is_refused(env, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(env["data"], other)
    for f in [other / "dataset.json", *(other / "splits").glob("*.csv")]:
        f.write_text(f.read_text().replace("red circle", "red ring"))
    cfg = load_config(None, tiny_overrides(env["sd"], env["clip"], other))
    with pytest.raises(RunDirError, match="made for a different dataset or class split.*only now: \\['red ring'\\]"):
        prepare(cfg, env["rd"].root, progress=False)


@ray.remote(num_cpus=0)
class _Worker:
    def ready(self):
        return True

    def work(self, shard):
        import os

        if shard[0] == "die":
            os._exit(1)  # the process dies: RayActorError for the caller
        if shard[0] == "bug":
            raise ValueError("bad input in the work itself")
        time.sleep(0.05)
        return [x * 2 for x in shard]


def test_pool_redispatches_lost_shards_and_propagates_bugs(env):
    from digzsl_ray.distributed.pool import PoolError, run_pool

    died = {"n": 0}

    def submit(actor, shard):
        # the first time shard [3] is handed out, its actor dies; the retry succeeds
        if shard == [3] and died["n"] == 0:
            died["n"] += 1
            return actor.work.remote(["die"])
        return actor.work.remote(shard)

    results = {}
    stats = run_pool([[i] for i in range(8)], lambda i: _Worker.remote(), submit,
                     lambda s, r: results.update({s[0]: r}), size=2, min_alive=2, max_retries=2)
    assert results == {i: [2 * i] for i in range(8)}
    assert stats.actor_deaths == 1 and stats.redispatched == 1 and stats.restarts == 1
    with pytest.raises(ray.exceptions.RayTaskError, match="bad input in the work itself"):
        run_pool([[1], ["bug"]], lambda i: _Worker.remote(), lambda a, s: a.work.remote(s), lambda s, r: None, size=2)
    with pytest.raises(PoolError, match="lost its actor"):
        run_pool([["die"]], lambda i: _Worker.remote(), lambda a, s: a.work.remote(s), lambda s, r: None,
                 size=1, max_retries=1)
