"""`digzsl serve` as a process: SIGTERM stops the endpoint and every replica it started, a
Generator replica included, within Kubernetes' default 30 s grace period."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import psutil
import pytest
from tiny import make_run_dir

pytestmark = pytest.mark.ray


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _replicas(root: psutil.Process) -> list[psutil.Process]:
    """Serve replica processes started under ``root`` (this test's `digzsl serve` and its cluster)."""
    out = []
    for p in root.children(recursive=True):
        try:
            if "ServeReplica:digzsl" in " ".join(p.cmdline()):
                out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return out


def test_sigterm_shuts_down_serve_and_its_replicas(tmp_path):
    run = make_run_dir(tmp_path)
    port = _free_port()
    (tmp_path / "token").write_text("s3cret-token-0123456789\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_TMPDIR": "/tmp", "DIGZSL_API_TOKEN_FILE": str(tmp_path / "token")}
    proc = subprocess.Popen([sys.executable, "-m", "digzsl_ray.cli", "serve", "--run", str(run), "--port", str(port),
                             "--set", "generate_num_cpus=0.5"],  # beside the Classifier and Ingress on 2 CPUs
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            pytest.fail("digzsl serve did not come up: " + proc.stdout.read1().decode()[-2000:])
        # a Generator replica (it scales from zero: this request starts one)
        r = httpx.post(f"http://127.0.0.1:{port}/v1/generate", json={"class": "red circle", "n": 1},
                       headers={"Authorization": "Bearer s3cret-token-0123456789"}, timeout=120)
        assert r.status_code == 200 and len(r.json()["images"]) == 1, r.text
        replicas = _replicas(psutil.Process(proc.pid))
        assert any("Generator" in " ".join(p.cmdline()) for p in replicas)
        t0 = time.time()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0  # a clean stop, not a death by signal
        stop_s = time.time() - t0
        assert stop_s < 30, f"stopping took {stop_s:.1f} s, more than Kubernetes' default grace period"
        deadline = time.time() + 30
        while any(p.is_running() for p in replicas) and time.time() < deadline:
            time.sleep(0.5)
        assert not [p.pid for p in replicas if p.is_running()], "replicas outlived `digzsl serve`"
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
