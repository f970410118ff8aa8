"""The Python API without a cluster: importing it is torch- and Ray-free, a run directory opens with its
config, metrics, ablation and artefacts, and bad input is a clear error. (Its classifier against the
endpoint: tests/serve/test_endpoint.py.)"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def test_import_is_torch_and_ray_free_and_the_surface_is_named():
    code = ("import sys, digzsl_ray as dz; assert dz.__all__ == ['Classifier', 'Run', 'classify', 'generate', "
            "'open_run', 'run']; dz.open_run; print('torch' in sys.modules, 'ray' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.split() == ["False", "False"], r.stderr[-2000:]
    import digzsl_ray

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        digzsl_ray.nope  # noqa: B018


def test_open_run_reads_config_metrics_ablation_and_artefacts(tmp_path):
    import digzsl_ray as dz

    (tmp_path / "config.yaml").write_text("method: zerodiff\nname: t\nseed: 3\n")
    (tmp_path / "metrics.json").write_text(json.dumps({"zsl_top1": 71.0, "ablation": {
        "clip_zero_shot": {"zsl_top1": 72.0}, "full": {"zsl_top1": 71.0}}}))
    (tmp_path / "generators" / "val").mkdir(parents=True)
    (tmp_path / "generators" / "val" / "history.json").write_text("{}")
    (tmp_path / "report.html").write_text("<html></html>")
    run = dz.open_run(tmp_path)
    assert run.method == "zerodiff" and run.config["seed"] == 3 and run.metrics["zsl_top1"] == 71.0
    assert set(run.ablation) == {"clip_zero_shot", "full"} and run.report == tmp_path / "report.html"
    assert run.artefacts["train-generators:val"] == tmp_path / "generators" / "val" / "history.json"
    assert "evaluate:metrics" in run.artefacts and "extract-features:dir" not in run.artefacts


def test_open_run_of_a_folder_that_is_no_run_is_a_user_error(tmp_path):
    import digzsl_ray as dz
    from digzsl_ray.errors import UserError

    with pytest.raises(UserError, match="config.yaml: missing"):
        dz.open_run(tmp_path)
    with pytest.raises(TypeError, match="a path, bytes, a PIL image or a uint8 array"):
        from digzsl_ray.api import _as_bytes

        _as_bytes(3.5)
