"""Experiment tracking (``tracking.backend``): MLflow against a real ``mlflow server`` on loopback (its own
process, a temporary SQLite store, artefacts served by the server), read back through the MLflow
client; TensorBoard event files read back with TensorBoard's event reader; the per-method curve
readers on small history files. The tracker is driven with a hand-made run directory (no pipeline:
the end-to-end check is in tests/methods/digzsl/test_pipeline_ray.py)."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from digzsl_ray.config import ConfigError
from digzsl_ray.errors import UserError
from digzsl_ray.methods import get_method, load_run_config
from digzsl_ray.stages.contract import Context
from digzsl_ray.stages.rundir import RunDir
from digzsl_ray.tracking import metric_key, open_tracking, series_from_records

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

CLASSES = ["red circle", "blue square", "green triangle", "purple circle"]
METRICS = {
    "zsl_top1": 61.0, "gzsl_H": 55.5, "timing_s": {"train-cdm": 3.5},
    "ablation": {"clip_zero_shot": {"zsl_top1": 50.0, "gzsl_H": 40.0},
                 "no_synthetic": {"zsl_top1": 52.0, "gzsl_H": 45.0},
                 "plain_prompt": {"zsl_top1": 58.0, "gzsl_H": 50.0},
                 "dct": {"zsl_top1": 61.0, "gzsl_H": 55.5, "calibration_lambda": 0.3}},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real tracking server on a free loopback port, with a temporary SQLite backend store."""
    pytest.importorskip("mlflow")
    d = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    exe = Path(sys.executable).with_name("mlflow")
    cmd = [str(exe), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{d / 'db.sqlite'}", "--artifacts-destination", str(d / "art")]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job-queue consumer process beside the server
    log = open(d / "server.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            _stop(proc)
            pytest.fail("mlflow server did not start:\n" + (d / "server.log").read_text()[-3000:])
        time.sleep(0.5)
    yield uri
    _stop(proc)
    log.close()


def _stop(proc: subprocess.Popen) -> None:
    """The server and the worker processes it started (its own session: one process group)."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue


def _run_dir(root: Path) -> Path:
    """A finished DIG-ZSL run directory holding only what tracking reads: histories, metrics, report."""
    files = {
        "cdm/config.json": {"history": [{"epoch": 0, "loss": 0.9, "val_acc": 80.0}, {"resumed_at_epoch": 1},
                                        {"epoch": 1, "loss": 0.5, "val_acc": 85.0},
                                        {"epoch": 2, "loss": 0.4, "val_acc": 90.0}]},
        "tokens/index.json": {"3": {"name": "purple circle", "loss_curve": [3.0, 2.0, 1.5], "acc_curve": [0.0, 0.5, 1.0]}},
        "tokens/summary.json": {"mean": {"learned_cdm_acc": 40.0, "plain_cdm_acc": 12.5}},
        "classifier/config.json": {"history": [{"epoch": -1, "initial": True, "val_acc": 60.0},
                                               {"epoch": 0, "loss": 0.7, "val_acc": 70.0}]},
        "ablation/plain_prompt/classifier/config.json": {"history": [{"epoch": 0, "loss": 0.8, "val_acc": 65.0}]},
        "timing.json": {"train-cdm": 3.5, "learn-tokens": 9.25},
        "metrics.json": METRICS,
    }
    for rel, obj in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(json.dumps(obj))
    (root / "report.html").write_text("<html>report</html>")
    (root / "config.yaml").write_text("name: t\n")
    return root


def _ctx(root: Path, *overrides: str) -> Context:
    cfg = load_run_config(None, list(overrides))
    split = SimpleNamespace(name="fake", classes=CLASSES, unseen=[3])
    return Context(cfg=cfg, rd=RunDir(root), split=split, method=get_method("digzsl"), progress=False)


def _track(ctx: Context) -> None:
    """What run_pipeline does around the stages, on a run whose CDM was complete (skipped)."""
    tracking = open_tracking(ctx.cfg, ctx.rd.root)
    tracking.begin(ctx)
    ctx.state["skipped_stages"] = {"train-cdm"}
    for stage in ctx.method.stages:
        tracking.stage(stage, ctx)
    tracking.finish(ctx, METRICS)


def _runs(client, experiment: str) -> tuple:
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id}
    assert len(children) == len(runs) - 1  # every other run is nested under the pipeline run
    return parents[0], children


def _history(client, run, key) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))


def test_mlflow_server_receives_config_curves_variants_and_artefacts(mlflow_server, tmp_path):
    from mlflow.tracking import MlflowClient

    ctx = _ctx(_run_dir(tmp_path / "run"), "tracking.backend=mlflow", f"tracking.uri={mlflow_server}",
               "tracking.experiment=e2e", "cdm.lr=0.0025")
    _track(ctx)
    client = MlflowClient(mlflow_server)
    parent, children = _runs(client, "e2e")
    assert parent.info.status == "FINISHED" and parent.info.run_name == ctx.cfg.name
    params = parent.data.params
    assert params["cdm.lr"] == "0.0025" and params["method"] == "digzsl" and params["tracking.backend"] == "mlflow"
    assert json.loads(params["prototypes.templates"]) == ctx.cfg.prototypes.templates
    assert parent.data.metrics["zsl_top1"] == 61.0 and parent.data.metrics["timing_s/train-cdm"] == 3.5
    assert "ablation/dct/zsl_top1" not in parent.data.metrics  # per variant: the nested runs
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} == {"metrics.json", "report.html", "config.yaml"}

    stages = {f"stages/{s.name}" for s in ctx.method.stages}
    variants = {f"variants/{v}" for v in ctx.method.variants}
    assert set(children) == stages | variants
    cdm = children["stages/train-cdm"]
    assert cdm.data.tags["digzsl.status"] == "complete, skipped" and cdm.info.status == "FINISHED"
    assert _history(client, cdm, "val_acc") == [(0, 80.0), (1, 85.0), (2, 90.0)]
    assert _history(client, cdm, "wall_s") == [(0, 3.5)]
    tokens = children["stages/learn-tokens"]
    assert tokens.data.tags["digzsl.status"] == "ran"
    assert _history(client, tokens, "loss/purple circle") == [(0, 3.0), (1, 2.0), (2, 1.5)]
    assert tokens.data.metrics["fresh_seed/learned_cdm_acc"] == 40.0
    clf = children["stages/train-classifier"]
    assert _history(client, clf, "dct/val_acc") == [(-1, 60.0), (0, 70.0)]
    assert _history(client, clf, "plain_prompt/loss") == [(0, 0.8)]
    assert children["stages/generate"].data.metrics == {}  # a stage without curves: still one nested run
    dct = children["variants/dct"]
    assert dct.data.metrics == {"zsl_top1": 61.0, "gzsl_H": 55.5, "calibration_lambda": 0.3}
    assert dct.data.tags["digzsl.main"] == "True" and children["variants/plain_prompt"].data.tags["digzsl.main"] == "False"

    _track(ctx)  # a second invocation (a resumed run): a second pipeline run of its own, full curves again
    runs = client.search_runs([client.get_experiment_by_name("e2e").experiment_id])
    assert sum("mlflow.parentRunId" not in r.data.tags for r in runs) == 2


def test_mlflow_failure_mid_run_is_one_warning_not_an_error(mlflow_server, tmp_path, caplog):
    ctx = _ctx(_run_dir(tmp_path / "run"), "tracking.backend=mlflow", f"tracking.uri={mlflow_server}",
               "tracking.experiment=failing")
    tracking = open_tracking(ctx.cfg, ctx.rd.root)
    tracking.begin(ctx)

    def down(*a, **k):
        raise ConnectionError("connection refused\nmore lines")

    tracking.backend.client.log_batch = down
    with caplog.at_level(logging.WARNING, logger="digzsl"):
        for stage in ctx.method.stages:
            tracking.stage(stage, ctx)
        tracking.finish(ctx, METRICS)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert "logging stage train-cdm failed (ConnectionError: connection refused)" in warnings[0]
    assert not tracking.active


def test_a_run_that_fails_before_it_begins_ends_quietly(mlflow_server, tmp_path, caplog):
    cfg = load_run_config(None, ["tracking.backend=mlflow", f"tracking.uri={mlflow_server}"])
    with caplog.at_level(logging.WARNING, logger="digzsl"):
        open_tracking(cfg, tmp_path / "run").end("FAILED")  # e.g. the run directory belongs to another run
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_unreachable_server_is_a_user_error_at_once(tmp_path):
    cfg = load_run_config(None, ["tracking.backend=mlflow", f"tracking.uri=http://127.0.0.1:{_free_port()}"])
    t0 = time.time()
    with pytest.raises(UserError, match="no MLflow server answers"):
        open_tracking(cfg, tmp_path / "run")
    assert time.time() - t0 < 10
    assert not (tmp_path / "run").exists()  # nothing written


def test_mlflow_default_is_a_local_store_in_the_run_directory(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://192.0.2.1:5000")  # not read: offline unless tracking.uri says
    root = _run_dir(tmp_path / "run")
    _track(_ctx(root, "tracking.backend=mlflow", "name=local"))
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    parent, children = _runs(client, "local")  # experiment: the run name
    assert _history(client, children["stages/train-cdm"], "loss") == [(0, 0.9), (1, 0.5), (2, 0.4)]
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} == {"metrics.json", "report.html", "config.yaml"}
    assert (root / "mlartifacts").is_dir()


def test_tensorboard_event_files(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root = _run_dir(tmp_path / "run")
    _track(_ctx(root, "tracking.backend=tensorboard", "name=tb run"))
    (run,) = (root / "tensorboard").iterdir()  # one folder per pipeline invocation
    assert run.name.endswith("-tb-run")

    def scalars(sub: str, tag: str) -> list[tuple[int, float]]:
        acc = EventAccumulator(str(run / sub))
        acc.Reload()
        return [(e.step, e.value) for e in acc.Scalars(tag)]

    assert scalars("stages/train-cdm", "val_acc") == [(0, 80.0), (1, 85.0), (2, 90.0)]
    assert scalars("stages/train-cdm", "wall_s") == [(0, 3.5)]
    # tensorboardX writes tags with letters, digits, _ - . / only (a space becomes _)
    assert scalars("stages/learn-tokens", "loss/purple_circle") == [(0, 3.0), (1, 2.0), (2, 1.5)]
    assert scalars("variants/dct", "zsl_top1") == [(0, 61.0)]
    assert scalars(".", "zsl_top1") == [(0, 61.0)]
    acc = EventAccumulator(str(run))
    acc.Reload()
    text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "| cdm.lr |" in text and "| digzsl.method | digzsl |" in text


def test_tracking_settings_change_no_stage_fingerprint():
    """Switching tracking on redoes nothing: no stage of any method sees it in its fingerprinted config."""
    from digzsl_ray.config import section_value

    on = ["tracking.backend=mlflow", "tracking.uri=http://example.invalid", "tracking.experiment=x",
          "tracking.log_dir=/elsewhere", "tracking.artifacts=false"]
    for name in ("digzsl", "multilabel", "zerodiff"):
        a, b = load_run_config(None, [f"method={name}"]), load_run_config(None, [f"method={name}"] + on)
        for stage in get_method(name).stages:
            for key in stage.depends_on:
                assert section_value(a, key) == section_value(b, key), (name, stage.name, key)


def test_config_contract():
    cfg = load_run_config(None, [])
    assert cfg.tracking.backend == "none"
    with pytest.raises(ConfigError, match="tracking.backend"):
        load_run_config(None, ["tracking.backend=wandb"])


def test_curve_readers_of_the_other_methods(tmp_path):
    """ZeroDiff's generator and representation histories, the multi-label tuning and classifier histories."""
    zd, ml = get_method("zerodiff"), get_method("multilabel")
    files = {
        zd.output(tmp_path, "train-generators:final"): {"history": [
            {"epoch": 0, "phase": "drg", "fold": "final", "loss_d": 7.0, "wasserstein": 0.8},
            {"epoch": 0, "phase": "dfg", "fold": "final", "loss_d": 4.0, "spurious": {"spurious_unseen_z": 0.9}}]},
        zd.output(tmp_path, "train-representation:meta"): {"folds": {"val": {"loss": [4.5, 2.7]}}},
        ml.output(tmp_path, "tune-text-encoder:summary"): {"history": [
            {"step": 0, "val_acceptance": 0.0}, {"step": 1, "loss": 24.3, "val_acceptance": 12.5}]},
        ml.output(tmp_path, "train-classifier:filtered") / "config.json": {"history": [
            {"epoch": 0, "selection": 16.0, "loss_real": 16.7}]},
    }
    for path, obj in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(obj))

    def curves(method, stage):
        return method.stage(stage).curves(SimpleNamespace(path=lambda ref: method.output(tmp_path, ref)))

    gen = curves(zd, "train-generators")
    assert gen["final/drg/loss_d"] == [(0, 7.0)] and gen["final/dfg/loss_d"] == [(0, 4.0)]
    assert gen["final/dfg/spurious/spurious_unseen_z"] == [(0, 0.9)] and "val/drg/loss_d" not in gen
    assert curves(zd, "train-representation") == {"val/loss": [(0, 4.5), (1, 2.7)]}
    assert curves(ml, "tune-text-encoder") == {"val_acceptance": [(0, 0.0), (1, 12.5)], "loss": [(1, 24.3)]}
    assert curves(ml, "train-classifier") == {"filtered/selection": [(0, 16.0)], "filtered/loss_real": [(0, 16.7)]}
    assert curves(ml, "evaluate") == {}


def test_series_and_keys():
    recs = [{"epoch": 0, "loss": 1.0, "ok": True, "name": "x"}, {"marker": 1}, {"epoch": 1.0, "loss": float("nan")}]
    s = series_from_records(recs, "epoch")
    assert list(s) == ["loss"] and s["loss"][0] == (0, 1.0) and s["loss"][1][0] == 1
    assert metric_key("loss/l'oiseau (é)") == "loss/l_oiseau _é_"
    assert metric_key("loss/../a//b/") == "loss/_/a/b"
