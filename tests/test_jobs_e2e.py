"""`ray job submit` end to end on a real local cluster (`ray start --head` on 127.0.0.1).

Submits `python -m jobs.run_pipeline` with a tiny MiniWorld config (the shipped models, a few
updates and images), waits for SUCCEEDED, checks the run directory, deploys the endpoint from it
with `serve deploy`, classifies a rendered test image over HTTP and stops the cluster.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

TINY_MINIWORLD = [
    "cdm.epochs=2", "tokens.max_updates=2", "tokens.min_updates=0", "tokens.eval_images=2",
    "tokens.batch_size=2", "tokens.num_inference_steps=4", "generate.images_per_class=4",
    "generate.rows_per_shard=4", "generate.batch_size=4", "generate.num_inference_steps=4",
    "classifier.epochs=1", "classifier.synthetic_val_fraction=0.25",
    # the plain-prompt set and its classifier are covered by tests/methods/digzsl/test_pipeline_ray.py;
    # here they would add a generation pass and a Ray Train run to the suite's slowest test
    "generate.plain_prompt=false",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str], env: dict, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if check:
        assert r.returncode == 0, f"{' '.join(cmd[:3])} exited {r.returncode}:\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def cluster():
    if not (REPO / "digzsl_ray" / "assets" / "miniworld" / "sd" / "model_index.json").is_file():
        pytest.skip("the shipped MiniWorld models are missing")
    tmp = Path(tempfile.mkdtemp(prefix="rj", dir="/tmp"))
    gcs, dash, serve_port = _free_port(), _free_port(), _free_port()
    # Ray >= 2.59 turns token authentication on for local clusters: give the cluster and every
    # client (job submit, serve deploy, the job's own driver) the same token, as the docs say.
    token = tmp / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = dict(os.environ, HF_HUB_OFFLINE="1", RAY_ADDRESS=f"http://127.0.0.1:{dash}", TQDM_DISABLE="1",
               PATH=f"{BIN}:{os.environ.get('PATH', '')}", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    start = [str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}",
             "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
             f"--temp-dir={tmp}", "--num-cpus=4", "--disable-usage-stats"]
    _run(start, {k: v for k, v in env.items() if k != "RAY_ADDRESS"}, timeout=180)
    try:
        yield {"env": env, "dash": dash, "gcs": gcs, "serve_port": serve_port, "tmp": tmp}
    finally:
        _run([str(BIN / "ray"), "stop", "--force"], env, timeout=120, check=False)
        shutil.rmtree(tmp, ignore_errors=True)


def _submit_and_wait(cluster, config: str, out: Path, sets: list[str]) -> None:
    """`ray job submit ... jobs.run_pipeline --config CONFIG --out OUT`, then wait for SUCCEEDED."""
    env = cluster["env"]
    args = [a for s in sets for a in ("--set", s)]
    submit = [str(BIN / "ray"), "job", "submit", "--address", f"http://127.0.0.1:{cluster['dash']}",
              "--working-dir", ".", "--no-wait", "--", "python", "-m", "jobs.run_pipeline", "--config", config,
              "--out", str(out), "--no-progress", *args]
    for _ in range(30):  # the dashboard's job agent takes a few seconds to come up after `ray start`
        sub = _run(submit, env, timeout=300, check=False)
        if sub.returncode == 0:
            break
        assert "No available agent" in sub.stderr, sub.stderr.splitlines()[-3:]
        time.sleep(2)
    assert sub.returncode == 0, sub.stderr.splitlines()[-3:]
    job_id = next(line.split("'")[1] for line in sub.stdout.splitlines() + sub.stderr.splitlines()
                  if "submitted successfully" in line)
    deadline = time.time() + 1200
    status = ""
    while time.time() < deadline:
        r = _run([str(BIN / "ray"), "job", "status", job_id], env, check=False)
        # Ray 2.60 prints "Job '<id>' succeeded" (lower case, on stdout or stderr); older releases
        # print "Status for job '<id>': SUCCEEDED". Compare case-insensitively.
        status = (r.stdout + r.stderr).upper()
        assert r.returncode == 0, f"ray job status {job_id} failed: {r.stderr.splitlines()[-3:]}"
        if any(s in status for s in ("SUCCEEDED", "FAILED", "STOPPED")):
            break
        time.sleep(5)
    logs = _run([str(BIN / "ray"), "job", "logs", job_id], env, check=False).stdout
    assert "SUCCEEDED" in status, f"{status}\n{logs[-4000:]}"


def _deploy_and_classify(cluster, out: Path, tmp_path: Path, png: bytes) -> dict:
    """`serve deploy` the endpoint of run directory OUT; the answer to one image."""
    import httpx

    cfg = tmp_path / "serve.yaml"
    cfg.write_text(json.dumps({
        "proxy_location": "HeadOnly", "http_options": {"host": "127.0.0.1", "port": cluster["serve_port"]},
        "applications": [{"name": "digzsl", "route_prefix": "/", "import_path": "digzsl_ray.serve:build_app",
                          "args": {"run_dir": str(out)}}],
        # No runtime_env: a Serve config accepts only remote (or local://) working_dir URIs, and the
        # cluster's Python has the package installed, as on a real cluster image.
    }))
    _run([str(BIN / "serve"), "deploy", str(cfg), "--address", f"http://127.0.0.1:{cluster['dash']}"], cluster["env"])
    url = f"http://127.0.0.1:{cluster['serve_port']}"
    want = json.loads((out / "run.json").read_text())["method"]
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            r = httpx.post(f"{url}/v1/classify", files={"image": ("x.png", png, "image/png")}, timeout=30)
            # a redeploy answers from the old app until the new one is up: wait for this run's answer
            if r.status_code == 200 and (r.json().get("task") == "multi_label") == (want == "multilabel"):
                return r.json()
        except httpx.HTTPError:
            pass
        time.sleep(2)
    raise AssertionError("the endpoint never answered")


def _png(im) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def test_job_submit_pipeline_then_serve(cluster, tmp_path):
    import httpx

    from digzsl_ray.miniworld import world

    out = tmp_path / "run"
    # 1. The pipeline as a Ray job.
    _submit_and_wait(cluster, "miniworld", out, TINY_MINIWORLD)
    # 2. The run directory holds every contract file.
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("zsl_top1", "gzsl_U", "gzsl_S", "gzsl_H", "calibration_lambda", "ausuc", "timing_s", "peak_rss_mb"):
        assert key in metrics
    assert set(metrics["ablation"]) == {"no_synthetic", "dct"}
    assert len(list((out / "tokens").glob("*.safetensors"))) == 18
    assert (out / "report.html").stat().st_size > 10_000
    # 3. The endpoint from the run directory, deployed with `serve deploy`.
    spec = world.class_by_name()[json.loads((out / "run.json").read_text())["unseen"][0]]
    body = _deploy_and_classify(cluster, out, tmp_path, _png(world.render(spec, 0, 123, 0)))
    assert len(body["predictions"]) == 5 and all(p["class"] in world.class_by_name() for p in body["predictions"])
    assert "task" not in body  # the single-label contract is unchanged
    assert httpx.get(f"http://127.0.0.1:{cluster['serve_port']}/v1/classify", timeout=30).status_code == 405


TINY_MULTILABEL = [
    "prompts.phrases_per_pair=2", "tune.steps=2", "tune.eval_every=1", "tune.val_sets=2", "tune.batch_size=2",
    "tune.num_inference_steps=3", "tune.grad_steps=1", "generate.images_per_label=2", "generate.rows_per_shard=8",
    "generate.num_inference_steps=3", "generate.batch_size=8", "classifier.epochs=1", "classifier.n_ctx=4",
    "classifier.synthetic_val_fraction=0.3",
]


def test_job_submit_multilabel_pipeline_then_serve(cluster, tmp_path):
    import httpx
    import pyarrow.parquet as pq

    from digzsl_ray.miniworld import world

    out = tmp_path / "ml"
    _submit_and_wait(cluster, "miniworld_multilabel", out, TINY_MULTILABEL)
    metrics = json.loads((out / "metrics.json").read_text())
    keys = ("zsl_mAP", "zsl_F1@3", "zsl_F1@5", "gzsl_mAP", "gzsl_F1@3", "gzsl_F1@5", "zsl_P@3", "zsl_R@5")
    assert all(0.0 <= metrics[k] <= 100.0 for k in keys)
    assert set(metrics["ablation"]) == {"no_synthetic", "unfiltered", "filtered", "filtered_tuned"}
    assert all(all(k in v for k in keys) for v in metrics["ablation"].values())
    assert metrics["metric_preset"] == "dualcoop" and metrics["task"] == "multi_label" and 0 < metrics["threshold"] < 1
    unseen = json.loads((out / "run.json").read_text())["unseen"]
    # every unseen label is in at least 2 planned images of each set; every row records its decision
    for image_set in ("base", "tuned"):
        m = json.loads((out / "synthetic_ml" / image_set / "_manifest.json").read_text())
        rows = pq.read_table(out / "synthetic_ml" / image_set / m["shards"][0]).to_pylist()
        assert {"target_labels", "probs", "accepted", "labels", "labels_added", "reason"} <= set(rows[0])
        assert all(len(r["probs"]) == len(unseen) and (r["labels"] != []) == r["accepted"] for r in rows)
        assert set(m["acceptance"]["per_label"]) == set(unseen)
    from transformers import CLIPTextModel

    CLIPTextModel.from_pretrained(str(out / "text_encoder_tuned" / "text_encoder"))  # a stock diffusers folder
    assert (out / "report.html").stat().st_size > 10_000
    # the endpoint answers label sets
    specs = [world.class_by_name()[n] for n in unseen[:2]]
    body = _deploy_and_classify(cluster, out, tmp_path, _png(world.render_scene(specs, 0, 123, 0)))
    assert body["task"] == "multi_label" and len(body["predictions"]) == 5
    assert all(p["probability"] > body["threshold"] for p in body["labels"])
    url = f"http://127.0.0.1:{cluster['serve_port']}/v1/classify"
    r = httpx.post(url, files={"image": ("x.png", _png(world.render_scene(specs, 0, 123, 0)), "image/png")},
                   data={"threshold": "0.001"}, timeout=30)
    assert r.status_code == 200 and r.json()["threshold"] == 0.001
    assert len(r.json()["labels"]) >= max(len(body["labels"]), 1)  # a lower threshold answers at least as many
    r = httpx.post(url, files={"image": ("x.png", b"x", "image/png")}, data={"threshold": "2"}, timeout=30)
    assert r.status_code == 400 and "threshold" in r.json()["error"]
