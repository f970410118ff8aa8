"""The live service's core without Ray: versions, the job queue and its resume, names, tokens,
the head growth and the gate's arithmetic, ``data.exclude_classes``."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import torch

from digzsl_ray.live import auth
from digzsl_ray.live.jobs import JobError, JobRunner, JobStore, run_job
from digzsl_ray.live.names import name_problem
from digzsl_ray.live.versions import VersionError, VersionStore, public, serving_meta

BASE = {"id": "mw-abc", "number": 0, "parent": None, "added_classes": [], "classes": ["a", "b", "c"], "seen": [0, 1],
        "unseen": [2], "lambda": 0.1, "task": "single_label", "threshold": 0.5, "method": "digzsl",
        "classifier_dir": "/nowhere/classifier", "tokens": {}, "metrics": {}, "extra": {}}


def _staging(tmp_path, weights: bytes):
    st = tmp_path / f"staging-{len(list(tmp_path.iterdir()))}"
    (st / "classifier").mkdir(parents=True)
    (st / "classifier" / "weights.safetensors").write_bytes(weights)
    (st / "tokens").mkdir()
    (st / "tokens" / "d.safetensors").write_bytes(b"tok")
    return st


def test_versions_are_immutable_with_lineage_and_activation_is_a_pointer(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    vs = VersionStore(run, dict(BASE))
    assert vs.active_id() == "mw-abc" and [v["id"] for v in vs.list()] == ["mw-abc"]
    v1 = vs.commit(_staging(tmp_path, b"w1"), {"run_name": "mw", "parent": "mw-abc", "added_classes": ["d"],
                                              "classes": ["a", "b", "c", "d"], "seen": [0, 1], "unseen": [2, 3],
                                              "lambda": 0.1, "metrics": {"gate": {"passed": True}},
                                              "tokens": {}, "added_tokens": {"d": "tokens/d.safetensors"}})
    assert v1["id"].startswith("mw-v1-") and v1["parent"] == "mw-abc" and v1["number"] == 1
    assert v1["tokens"]["d"] == str(run / "models" / v1["id"] / "tokens" / "d.safetensors")
    assert vs.active_id() == "mw-abc"  # committing is not activating
    vs.activate(v1["id"])
    assert vs.active()["classes"][-1] == "d" and serving_meta(vs.active())["model_version"] == v1["id"]
    v2 = vs.commit(_staging(tmp_path, b"w2"), {"run_name": "mw", "parent": v1["id"], "added_classes": ["d", "e"],
                                              "classes": ["a", "b", "c", "d", "e"], "seen": [0, 1],
                                              "unseen": [2, 3, 4], "lambda": 0.1, "tokens": v1["tokens"],
                                              "added_tokens": {}})
    assert v2["number"] == 2 and v2["tokens"]["d"] == v1["tokens"]["d"]  # inherited tokens resolve
    assert [public(v)["id"] for v in vs.list()] == ["mw-abc", v1["id"], v2["id"]]
    vs.activate("mw-abc")  # rollback to version 0
    assert vs.active_id() == "mw-abc"
    for bad in ("nope", "../run", ".hidden"):
        with pytest.raises(VersionError):
            vs.activate(bad)
    assert vs.active_id() == "mw-abc"
    assert "classifier_dir" not in public(v2) and public(v2)["classes"] == 5


def test_names_bad_ones_are_refused_with_a_reason():
    assert name_problem("striped red circle") is None and name_problem("Black-footed Albatross") is None
    assert name_problem("Québec's café (old)") is None
    for bad, words in (("", "empty"), ("   ", "empty"), ("x" * 65, "at most 64"), ("a/b", "path separator"),
                       ("a\x00b", "U+0000"), ("<script>", "'<'"), ("a\u202eb", "U+202E"), (5, "string"),
                       (" lead", "spaces"), ("..", "unusable")):
        problem = name_problem(bad)
        assert problem and words in problem, (bad, problem)


def test_bearer_token_401_403_and_constant_time_digest(tmp_path, monkeypatch):
    f = tmp_path / "token"
    f.write_text("s3cret-token-0123456789\n")
    monkeypatch.delenv(auth.ENV, raising=False)
    assert auth.token_digest("") is None
    d = auth.token_digest(str(f))
    assert d and "s3cret" not in d
    monkeypatch.setenv(auth.ENV, str(f))  # the environment names the file without any config
    assert auth.token_digest("") == d
    assert auth.check("Bearer s3cret-token-0123456789", d) is None
    assert auth.check(None, d)[0] == 401 and auth.check("Basic abc", d)[0] == 401
    assert auth.check("Bearer wrong", d)[0] == 403
    assert auth.check("Bearer anything", None)[0] == 403  # no token configured: mutations are off
    monkeypatch.delenv(auth.ENV)
    (tmp_path / "short").write_text("abc")
    with pytest.raises(auth.TokenFileError, match="at least 16"):
        auth.token_digest(str(tmp_path / "short"))
    with pytest.raises(auth.TokenFileError, match="missing"):
        auth.token_digest(str(tmp_path / "missing"))


def _fake_add_class(calls, gate_passes=True, fail_at=None, hold=None):
    def run(run_dir, job_dir, name, rep):
        for stage in ("prototype", "token", "version"):
            if rep.done(stage):
                continue
            if fail_at == stage and not (job_dir / "failed-once").exists():
                (job_dir / "failed-once").write_text("")
                raise RuntimeError("actor lost for good")
            with rep.stage(stage):
                if hold is not None:
                    hold.wait(10)
                rep.progress(0.5)
                calls.append((name, stage))
        return {"status": "succeeded" if gate_passes else "rejected", "version": f"v-{name}" if gate_passes else None,
                "metrics": {"gate": {"passed": gate_passes}}}
    return run


def test_job_queue_one_at_a_time_409_400_429_and_states(tmp_path):
    calls: list = []
    known = ["a", "b"]
    hold = threading.Event()
    runner = JobRunner(tmp_path, _fake_add_class(calls, hold=hold), ("prototype", "token", "version"),
                       lambda: known, queue_size=2)
    j1 = runner.submit("new one", name_problem)
    j2 = runner.submit("other", name_problem)
    for name, status in (("A", 409), ("New-One", 409), ("bad/name", 400), ("third", 429)):
        with pytest.raises(JobError) as e:
            runner.submit(name, name_problem)
        assert e.value.status == status, name
    hold.set()
    deadline = time.time() + 20
    while not runner.idle() and time.time() < deadline:
        time.sleep(0.05)
    s1, s2 = runner.store.get(j1["id"]), runner.store.get(j2["id"])
    assert s1["status"] == s2["status"] == "succeeded" and s1["version"] == "v-new one"
    # one job at a time, in order: every stage of the first before any of the second
    assert [n for n, _ in calls] == ["new one"] * 3 + ["other"] * 3
    assert all(st["status"] == "done" and st["seconds"] is not None for st in s1["stages"].values())
    assert s1["progress"] == 1.0 and s1["ended"] >= s1["started"]
    with pytest.raises(JobError) as e:
        runner.store.get("../etc")
    assert e.value.status == 404


def test_a_job_stalled_without_a_free_cpu_says_so_and_the_note_goes_when_it_moves(tmp_path):
    calls: list = []
    hold, go_on = threading.Event(), threading.Event()

    def add_class(run_dir, job_dir, name, rep):  # stage "token" stalls (its Ray tasks pending) until go_on
        with rep.stage("token"):
            rep.progress(0.1)
            hold.set()
            go_on.wait(20)
            rep.progress(0.6)
            calls.append(name)
        return {"status": "succeeded", "version": "v1", "metrics": {}}

    free = {"cpus": (0.0, 2.0)}
    runner = JobRunner(tmp_path, add_class, ("token",), lambda: [], queue_size=2, stall_s=0.3,
                       free_cpus=lambda: free["cpus"])
    job = runner.submit("slow one", name_problem)
    assert hold.wait(10)
    deadline = time.time() + 10
    while "waiting" not in runner.store.get(job["id"]) and time.time() < deadline:
        time.sleep(0.1)
    w = runner.store.get(job["id"])["waiting"]
    assert w["for"] == "a free CPU" and "0 of the cluster's 2 CPUs free" in w["detail"]
    assert runner.store.get(job["id"])["status"] == "running"  # still running, now saying why it waits
    go_on.set()
    deadline = time.time() + 10
    while not runner.idle() and time.time() < deadline:
        time.sleep(0.05)
    final = runner.store.get(job["id"])
    assert final["status"] == "succeeded" and "waiting" not in final and calls == ["slow one"]
    # a stall with CPUs free is not blamed on the cluster
    free["cpus"] = (1.0, 2.0)
    assert runner.check_stalled() is None


def test_a_job_resumes_after_a_restart_skipping_its_finished_stages(tmp_path):
    calls: list = []
    store = JobStore(tmp_path)
    state = store.create("gamma", ("prototype", "token", "version"))
    final = run_job(store, state, _fake_add_class(calls, fail_at="token"))
    assert final["status"] == "failed" and "actor lost" in final["error"]
    # a service restart: a job found queued or running is resumed; simulate one that was running
    st = store.get(state["id"])
    st["status"] = "running"
    store.save(st)
    runner = JobRunner(tmp_path, _fake_add_class(calls), ("prototype", "token", "version"), lambda: [], queue_size=4)
    deadline = time.time() + 20
    while not runner.idle() and time.time() < deadline:
        time.sleep(0.05)
    assert store.get(state["id"])["status"] == "succeeded"
    assert calls == [("gamma", "prototype"), ("gamma", "token"), ("gamma", "version")]  # prototype ran once


def test_rejected_jobs_keep_their_figures_and_eta_uses_finished_jobs(tmp_path):
    store = JobStore(tmp_path)
    s = run_job(store, store.create("x", ("prototype", "token", "version")), _fake_add_class([], gate_passes=False))
    assert s["status"] == "rejected" and s["version"] is None and s["metrics"]["gate"]["passed"] is False
    assert set(store.typical_seconds()) == {"prototype", "token", "version"}
    # the next job's ETA: its current stage from its progress, the later ones from the finished job
    from digzsl_ray.live.jobs import Reporter

    st = store.create("y", ("prototype", "token", "version"))
    rep = Reporter(store, st)
    with rep.stage("prototype"):
        time.sleep(0.05)
        rep._last_write = 0.0
        rep.progress(0.5)
        on_disk = store.get(st["id"])
        assert on_disk["eta_basis"] == "full" and on_disk["eta_s"] is not None and on_disk["eta_s"] >= 0
        assert on_disk["stage"] == "prototype" and on_disk["stages"]["prototype"]["progress"] == 0.5


def test_grown_head_keeps_old_answers_and_the_gate_arithmetic():
    from digzsl_ray.classifier import PrototypeHead
    from digzsl_ray.methods.digzsl.addclass import grown_head, mean_class_acc, scores, train_head

    torch.manual_seed(0)
    d, c = 16, 4
    centres = torch.nn.functional.normalize(torch.randn(c + 1, d), dim=1)

    class M:
        head = PrototypeHead(centres[:c])
        head_kind = "prototypes"

    grown = grown_head(M, 1, centres[c])
    x = torch.nn.functional.normalize(centres[:c].repeat_interleave(20, 0) + 0.1 * torch.randn(20 * c, d), dim=1)
    with torch.no_grad():
        old, new = M.head(x), grown(x)
    assert new.shape == (20 * c, c + 1) and torch.allclose(new[:, :c], old)  # old columns unchanged
    # features of five classes; train the grown head and check the new class is learned
    xs = torch.nn.functional.normalize(centres.repeat_interleave(40, 0) + 0.15 * torch.randn(40 * (c + 1), d), dim=1)
    ys = torch.arange(c + 1).repeat_interleave(40)

    class Live:
        lr, epochs, batch_size = 5e-2, 15, 64

    head, history = train_head(grown, (xs, ys), (xs, ys), c + 1, Live, 0, 0.0, [0, 1])
    acc = mean_class_acc(scores(head, xs, 0.0, [0, 1]).argmax(1), ys.numpy(), [c])
    assert acc > 90 and len(history) == 15
    assert mean_class_acc(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), [0, 1]) == pytest.approx(250 / 3)


def test_linear_head_grows_and_keeps_its_columns():
    from digzsl_ray.methods.digzsl.addclass import grown_head

    class M:
        head = torch.nn.Linear(8, 3)

    g = grown_head(M, 1, torch.nn.functional.normalize(torch.randn(8), dim=0))
    x = torch.randn(5, 8)
    with torch.no_grad():
        assert torch.allclose(g(x)[:, :3], M.head(x))


def test_exclude_classes_drops_a_class_everywhere_and_renumbers():
    from digzsl_ray.data.split import Item, ZSLSplit

    items = {"trainval": [Item(f"/t{i}", (i % 3,)) for i in range(9)], "test_seen": [Item("/s0", (0,))],
             "test_unseen": [Item("/u0", (3,))]}
    sp = ZSLSplit("w", ["a", "b", "c", "d"], [0, 1, 2], [3], items, val=[items["trainval"][1]], val_classes=[1, 2])
    out = sp.without_classes(["b"])
    assert out.classes == ["a", "c", "d"] and out.seen == [0, 1] and out.unseen == [2] and out.val_classes == [1]
    assert [it.label for it in out.items["trainval"]] == [0, 1, 0, 1, 0, 1] and out.val == []
    assert out.items["test_unseen"][0].label == 2 and out.notes["excluded_classes"] == ["b"]
    with pytest.raises(ValueError, match="not classes"):
        sp.without_classes(["zzz"])


def test_job_state_is_json_with_the_contract_keys(tmp_path):
    store = JobStore(tmp_path)
    s = store.create("delta", ("prototype",))
    on_disk = json.loads((tmp_path / "jobs" / s["id"] / "state.json").read_text())
    assert {"id", "name", "status", "stage", "progress", "eta_s", "stages", "version", "metrics", "error"} <= set(on_disk)


def test_mlp_head_extends_by_the_class_mean_in_its_hidden_space():
    from digzsl_ray.methods.digzsl.addclass import class_direction, grown_head

    torch.manual_seed(0)
    head = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Dropout(0.1), torch.nn.Linear(16, 3))
    head.eval()

    class M:
        pass

    M.head = head
    new_feats = torch.randn(1, 8).repeat(30, 1) + 0.01 * torch.randn(30, 8)
    g = grown_head(M, 1, class_direction(head, new_feats, torch.zeros(8))).eval()
    x = torch.randn(5, 8)
    with torch.no_grad():
        assert torch.allclose(g(x)[:, :3], head(x))  # the existing classes answer as before
        assert g[0] is not head[0]  # the parent's layers are copies, never trained in place
    assert g(new_feats).shape == (30, 4)


def _served_run(tmp_path):
    """The files serving reads of a finished run (no model is loaded by what this test calls)."""
    from digzsl_ray.config import to_yaml
    from digzsl_ray.methods import load_run_config

    run = tmp_path / "run"
    (run / "classifier").mkdir(parents=True)
    (run / "config.yaml").write_text(to_yaml(load_run_config(None, ["name=cli"])))
    (run / "classifier" / "weights.safetensors").write_bytes(b"w")
    (run / "classifier" / "config.json").write_text("{}")
    (run / "classifier" / "classes.json").write_text(json.dumps({"classes": ["red circle", "blue square"],
                                                                 "seen": [0], "unseen": [1]}))
    (run / "metrics.json").write_text(json.dumps({"calibration_lambda": 0.1}))
    return run


def test_cli_add_class_refuses_bad_and_known_names_and_models_lists_versions(tmp_path, capsys):
    from digzsl_ray.cli.main import main

    run = _served_run(tmp_path)
    assert main(["add-class", "--run", str(run), "--name", "a/b"]) == 2
    assert "path separator" in capsys.readouterr().err
    assert main(["add-class", "--run", str(run), "--name", "Red-Circle"]) == 2
    assert "already known" in capsys.readouterr().err
    assert main(["add-class", "--run", str(run), "--name", "x", "--set", "live.max_drop_points=-1"]) == 2
    assert main(["models", "--run", str(run)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("* cli-") and "classes 2" in out
    assert main(["models", "--run", str(run), "--activate", "nope"]) == 2
    assert not (run / "jobs").exists()  # nothing queued by refused requests


def test_version_zero_carries_the_tokens_the_method_names(tmp_path):
    """DIG-ZSL's ``tokens`` hook: the run's token index, only files that exist; a damaged index gives none."""
    from digzsl_ray.live.versions import base_from_meta
    from digzsl_ray.methods import get_method

    tokens = get_method("digzsl").tokens
    (tmp_path / "tokens").mkdir()
    (tmp_path / "tokens" / "a.safetensors").write_bytes(b"t")
    (tmp_path / "tokens" / "index.json").write_text('{"0": {"name": "red circle", "file": "a.safetensors"}, '
                                                    '"1": {"name": "blue square", "file": "gone.safetensors"}}')
    assert tokens(tmp_path) == {"red circle": str(tmp_path / "tokens" / "a.safetensors")}
    meta = {"model_version": "v0", "classes": ["red circle"], "seen": [0], "unseen": [], "lambda": 0.0,
            "task": "single_label", "threshold": 0.5, "method": "digzsl", "classifier_dir": "c",
            "tokens": tokens(tmp_path)}
    assert base_from_meta(tmp_path, meta)["tokens"] == meta["tokens"]
    (tmp_path / "tokens" / "index.json").write_text("[1, 2")
    assert tokens(tmp_path) == {}
    assert get_method("multilabel").tokens is None and get_method("zerodiff").generation is None
