"""serve: requests per second and p50/p99 latency of /v1/classify at 1, 8 and 32 concurrent
clients (loopback, bounded request counts), with dynamic batching on and off, plus where the time
goes: image decoding, the model per batch size, and the rest (proxy, routing, HTTP); and a baseline.

    python benchmarks/serve.py [--run runs/miniworld] [--requests 400] [--only all|serve|bare]

Baseline (``bare``): what a user would pick instead of Ray Serve, a single-process uvicorn + FastAPI
app (benchmarks/bare_app.py, started as a subprocess) doing the same work per request: multipart
upload, ``decode_image`` in a thread, an asyncio micro-batcher with the same batching (16 requests
or 5 ms) and the model forward in a thread, measured with the same clients. ``--only bare`` runs
just the baseline (no Ray) and saves it as ``serve_bare``; ``--only serve`` just the Ray Serve
part; ``all`` (the default) both, and the saved ``serve`` result then also holds ``bare`` and the
ratios ``serve_over_bare_rps`` / ``serve_over_bare_p99`` (batched Serve over bare, per client count).

Needs a finished run directory (``make demo`` writes runs/miniworld).
"""

from __future__ import annotations

import argparse
import io
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save  # noqa: E402

CLIENTS = (1, 8, 32)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _images(n: int) -> list[bytes]:
    from digzsl_ray.miniworld import world

    out = []
    for i, spec in enumerate(world.all_classes() * (n // 72 + 1)):
        buf = io.BytesIO()
        world.render(spec, 0, 90, i).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out[:n]


def load(url: str, clients: int, total: int, images: list[bytes]) -> dict:
    import httpx

    lat: list[float] = []
    errors = [0]
    per = max(1, total // clients)
    lock = threading.Lock()

    def worker(k):
        with httpx.Client(base_url=url, timeout=60) as c:
            for i in range(per):
                data = images[(k * per + i) % len(images)]
                t0 = time.perf_counter()
                r = c.post("/v1/classify", files={"image": ("x.png", data, "image/png")})
                dt = time.perf_counter() - t0
                with lock:
                    lat.append(dt)
                    errors[0] += r.status_code != 200

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    t0 = time.perf_counter()
    [t.start() for t in threads]
    [t.join() for t in threads]
    wall = time.perf_counter() - t0
    lat.sort()
    return {"rps": round(len(lat) / wall, 1), "p50_ms": round(1000 * lat[len(lat) // 2], 2),
            "p99_ms": round(1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], 2), "errors": errors[0],
            "requests": len(lat)}


BARE = {"max_batch_size": 16, "batch_wait_timeout_s": 0.005, "threads": 1}


def bare_baseline(run: Path, images: list[bytes], requests: int) -> dict:
    """``{clients: load(...)}`` of benchmarks/bare_app.py (uvicorn + FastAPI, one process, no Ray)."""
    import httpx

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, str(Path(__file__).resolve().parent / "bare_app.py"), "--run", str(run.resolve()),
           "--port", str(port), "--max-batch-size", str(BARE["max_batch_size"]),
           "--batch-wait-timeout-s", str(BARE["batch_wait_timeout_s"]), "--threads", str(BARE["threads"])]
    proc = subprocess.Popen(cmd)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"bare_app.py exited with code {proc.returncode} before answering /healthz")
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("bare_app.py did not answer /healthz within 120 s")
            time.sleep(0.2)
        warm = load(url, 4, 40, images)  # warm-up
        if warm["errors"]:  # a broken baseline must not pass for a fast one
            raise RuntimeError(f"bare_app.py answered {warm['errors']} of 40 warm-up requests with an error")
        return {str(c): load(url, c, requests, images) for c in CLIENTS}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def breakdown(run: Path, images: list[bytes]) -> dict:
    """In-process costs: decode one image; model forward at batch 1 and 16 (per image)."""
    import torch

    from digzsl_ray.classifier import load_classifier
    from digzsl_ray.serve import decode_image

    torch.set_num_threads(1)
    model, cfg, _ = load_classifier(run / "classifier")
    t0 = time.perf_counter()
    arrs = [decode_image(b, cfg["image_size"], 10**8) for b in images[:200]]
    dec = (time.perf_counter() - t0) / 200
    out = {"decode_ms": round(1000 * dec, 3)}
    for bs in (1, 16):
        x = torch.from_numpy(np.stack(arrs[:bs]))
        with torch.no_grad():
            model(x)
            t0 = time.perf_counter()
            for _ in range(20):
                model(x)
        out[f"model_ms_per_image_batch{bs}"] = round(1000 * (time.perf_counter() - t0) / 20 / bs, 3)
    return out


def serve_part(run: Path, images: list[bytes], requests: int) -> dict:
    """The Ray Serve figures (batched, unbatched), the time breakdown and the settings."""
    import ray
    from ray import serve

    from digzsl_ray.distributed.cluster import init_ray
    from digzsl_ray.serve import build_app

    init_ray(num_cpus=4)
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}"
    result: dict = {}
    # batched / unbatched: the ingress and the model in two deployments (a handle hop per request);
    # in_ingress: serve.model_in_ingress, the model batched inside the ingress replicas
    for mode, mbs, local in (("batched", 16, False), ("unbatched", 1, False), ("in_ingress", 16, True)):
        serve.run(build_app({"run_dir": str(run.resolve()), "max_batch_size": mbs, "batch_wait_timeout_s": 0.005,
                             "model_in_ingress": local}),
                  name="digzsl", route_prefix="/")
        load(url, 4, 40, images)  # warm-up
        result[mode] = {str(c): load(url, c, requests, images) for c in CLIENTS}
        serve.delete("digzsl")
    serve.shutdown()
    ray.shutdown()
    bd = breakdown(run, images)
    p50_1 = result["batched"]["1"]["p50_ms"]
    bd["other_ms_at_1_client"] = round(p50_1 - bd["decode_ms"] - bd["model_ms_per_image_batch1"], 2)
    gain = {c: round(result["batched"][c]["rps"] / result["unbatched"][c]["rps"], 3) for c in map(str, CLIENTS)}
    return {**result, "batched_over_unbatched_rps": gain, "time_breakdown": bd,
            "settings": {"requests_per_setting": requests, "replicas": "autoscaling 1..2 (config)",
                         "max_batch_size": 16, "batch_wait_timeout_s": 0.005}}


def direct_part(run: Path, images: list[bytes], requests: int) -> dict:
    """Ray Serve with direct ingress (``RAY_SERVE_ENABLE_DIRECT_INGRESS=1``, set before Ray starts:
    run in its own process) and the model in the ingress replica: clients talk to the replica's
    own HTTP port (what an external load balancer or Serve's HAProxy mode does), no proxy hop.
    One replica (the machine has 2 cores); the proxy path of the same app is measured too."""
    import httpx
    import ray
    from ray import serve

    from digzsl_ray.distributed.cluster import init_ray
    from digzsl_ray.serve import build_app

    init_ray(num_cpus=4)
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app({"run_dir": str(run.resolve()), "max_batch_size": 16, "batch_wait_timeout_s": 0.005,
                         "model_in_ingress": True, "min_replicas": 1, "max_replicas": 1}), name="digzsl",
              route_prefix="/")
    direct = None
    for p in range(30000, 30100):  # RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT upwards
        try:
            if httpx.get(f"http://127.0.0.1:{p}/healthz", timeout=1).status_code == 200:
                direct = p
                break
        except httpx.HTTPError:
            continue
    out = {}
    for name, url in (("in_ingress_one_replica_via_proxy", f"http://127.0.0.1:{port}"),
                      ("direct_ingress", f"http://127.0.0.1:{direct}" if direct else None)):
        if url is None:
            out[name] = {"error": "no replica answered on a direct-ingress port"}
            continue
        load(url, 4, 40, images)  # warm-up
        out[name] = {str(c): load(url, c, requests, images) for c in CLIENTS}
    serve.shutdown()
    ray.shutdown()
    return out


def _direct_in_subprocess(run: Path, requests: int) -> dict:
    import json
    import os
    import subprocess
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        path = f.name
    env = dict(os.environ, RAY_SERVE_ENABLE_DIRECT_INGRESS="1")
    subprocess.run([sys.executable, __file__, "--run", str(run), "--requests", str(requests), "--only", "direct",
                    "--direct-out", path], env=env, check=True)
    return json.loads(Path(path).read_text())


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default="runs/miniworld")
    ap.add_argument("--requests", type=int, default=400, help="requests per client-count setting")
    ap.add_argument("--direct-out", default="", help=argparse.SUPPRESS)
    ap.add_argument("--only", choices=("all", "serve", "bare", "direct"), default="all",
                    help="serve: the Ray Serve endpoint only; bare: the uvicorn + FastAPI baseline only (no Ray); "
                         "all: both, with the ratios")
    a = ap.parse_args()
    run = Path(a.run)
    if not (run / "classifier" / "weights.safetensors").is_file():
        sys.exit(f"{run}: no finished run directory; run `make demo` first (or pass --run)")
    images = _images(300)
    if a.only == "direct":  # the child process of `all` (RAY_SERVE_ENABLE_DIRECT_INGRESS=1 in its environment)
        import json

        Path(a.direct_out).write_text(json.dumps(direct_part(run, images, a.requests)))
        return
    bare = None
    if a.only in ("all", "bare"):  # before Ray starts, so no Ray process shares the CPUs with it
        bare = bare_baseline(run, images, a.requests)
        if a.only == "bare":
            save("serve_bare", {"bare": bare, "settings": {"requests_per_setting": a.requests,
                                                           "server": "uvicorn + FastAPI, one process", **BARE}})
            return
    out = serve_part(run, images, a.requests)
    if bare is not None:
        b = out["batched"]
        out["bare"] = bare
        out["serve_over_bare_rps"] = {c: _ratio(b[c]["rps"], bare[c]["rps"]) for c in map(str, CLIENTS)}
        out["serve_over_bare_p99"] = {c: _ratio(b[c]["p99_ms"], bare[c]["p99_ms"]) for c in map(str, CLIENTS)}
        out.update(_direct_in_subprocess(run, a.requests))
        for mode in ("in_ingress", "in_ingress_one_replica_via_proxy", "direct_ingress"):
            m = out.get(mode, {})
            if "1" in m:
                out[f"{mode}_over_bare_rps"] = {c: _ratio(m[c]["rps"], bare[c]["rps"]) for c in map(str, CLIENTS)}
                out[f"{mode}_over_bare_p99"] = {c: _ratio(m[c]["p99_ms"], bare[c]["p99_ms"]) for c in map(str, CLIENTS)}

    save("serve", out)


if __name__ == "__main__":
    main()
