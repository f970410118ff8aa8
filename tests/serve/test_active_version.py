"""What serving reads from a run directory, without Ray: the active version followed within the
check interval, a damaged active.json logged and never a silent switch."""

from __future__ import annotations

import logging

from digzsl_ray.live.versions import VersionStore
from digzsl_ray.serve.rundir import ActiveVersion

BASE = {"id": "mw-abc", "number": 0, "parent": None, "added_classes": [], "classes": ["a", "b", "c"], "seen": [0, 1],
        "unseen": [2], "lambda": 0.1, "task": "single_label", "threshold": 0.5, "method": "digzsl",
        "classifier_dir": "/nowhere/classifier", "tokens": {}, "metrics": {}, "extra": {}}


def test_the_active_version_is_followed_and_a_damaged_pointer_keeps_the_served_one(tmp_path, caplog):
    run = tmp_path / "run"
    (run / "classifier").mkdir(parents=True)
    store = VersionStore(run, dict(BASE))
    staging = tmp_path / "staging"
    (staging / "classifier").mkdir(parents=True)
    (staging / "classifier" / "weights.safetensors").write_bytes(b"w1")
    v1 = store.commit(staging, {"run_name": "mw", "parent": "mw-abc", "added_classes": ["d"],
                                "classes": ["a", "b", "c", "d"], "seen": [0, 1], "unseen": [2, 3], "lambda": 0.1,
                                "tokens": {}, "added_tokens": {}})
    now = [100.0]
    active = ActiveVersion(store, interval=0.2)
    active._clock = lambda: now[0]
    assert active.current()["model_version"] == "mw-abc"
    store.activate(v1["id"])
    assert active.current()["model_version"] == "mw-abc"  # within the interval: not checked yet
    active.refresh_now()  # this replica activated it: followed at once
    assert active.current()["model_version"] == v1["id"] and active.current()["classes"][-1] == "d"
    for damage in (b"\x00garbage", b"", b"[1, 2]"):
        store.active_path.write_bytes(damage)
        now[0] += 1.0
        with caplog.at_level(logging.ERROR, logger="digzsl"):
            caplog.clear()
            assert active.current()["model_version"] == v1["id"]  # never a silent switch to version 0
        assert "cannot read the active version" in caplog.text
    store.activate("mw-abc")  # repaired: a rollback is followed after the interval
    now[0] += 1.0
    assert active.current()["model_version"] == "mw-abc"
