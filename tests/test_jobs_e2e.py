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
    "classifier.epochs=2", "classifier.synthetic_val_fraction=0.25",
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


def test_job_submit_pipeline_then_serve(cluster, tmp_path):
    env, out = cluster["env"], tmp_path / "run"
    sets = [a for s in TINY_MINIWORLD for a in ("--set", s)]
    # 1. The pipeline as a Ray job.
    submit = [str(BIN / "ray"), "job", "submit", "--address", f"http://127.0.0.1:{cluster['dash']}",
              "--working-dir", ".", "--no-wait", "--", "python", "-m", "jobs.run_pipeline", "--config", "miniworld",
              "--out", str(out), "--no-progress", *sets]
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
    # 2. The run directory holds every contract file.
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("zsl_top1", "gzsl_U", "gzsl_S", "gzsl_H", "calibration_lambda", "ausuc", "timing_s", "peak_rss_mb"):
        assert key in metrics
    assert set(metrics["ablation"]) == {"no_synthetic", "plain_prompt", "dct"}
    assert len(list((out / "tokens").glob("*.safetensors"))) == 18
    assert (out / "report.html").stat().st_size > 10_000
    # 3. The endpoint from the run directory, deployed with `serve deploy`.
    cfg = tmp_path / "serve.yaml"
    cfg.write_text(json.dumps({
        "proxy_location": "HeadOnly", "http_options": {"host": "127.0.0.1", "port": cluster["serve_port"]},
        "applications": [{"name": "digzsl", "route_prefix": "/", "import_path": "digzsl_ray.serve:build_app",
                          "args": {"run_dir": str(out)}}],
        # No runtime_env: a Serve config accepts only remote (or local://) working_dir URIs, and the
        # cluster's Python has the package installed, as on a real cluster image.
    }))
    _run([str(BIN / "serve"), "deploy", str(cfg), "--address", f"http://127.0.0.1:{cluster['dash']}"], env)
    import httpx

    from digzsl_ray.miniworld import world

    spec = world.class_by_name()[json.loads((out / "run.json").read_text())["unseen"][0]]
    buf = io.BytesIO()
    world.render(spec, 0, 123, 0).save(buf, format="PNG")
    url = f"http://127.0.0.1:{cluster['serve_port']}"
    body, deadline = None, time.time() + 300
    while time.time() < deadline:
        try:
            r = httpx.post(f"{url}/v1/classify", files={"image": ("x.png", buf.getvalue(), "image/png")}, timeout=30)
            if r.status_code == 200:
                body = r.json()
                break
        except httpx.HTTPError:
            pass
        time.sleep(2)
    assert body is not None, "the endpoint never answered"
    assert len(body["predictions"]) == 5 and all(p["class"] in world.class_by_name() for p in body["predictions"])
    assert httpx.get(f"{url}/v1/classify", timeout=30).status_code == 405
