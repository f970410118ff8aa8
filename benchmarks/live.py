"""live: the cost of adding one class to a running service, and what it does to classify latency.

    python benchmarks/live.py [--run runs/miniworld] [--name "checkered purple hexagon"] [--classifier retrain-head]

Copies the run directory (``models/``, ``jobs/`` and ``live/`` left out) to a temporary folder,
serves it on a local Ray cluster, measures classify latency (p50/p99) at a steady rate from two
clients while idle, then during one add-class job (``POST /v1/classes``), and records the job's
wall time by stage and its gate figures. When the name is a MiniWorld class the run never had
(``data.exclude_classes``), the new class's top-1 accuracy on fresh renders is measured too.
Results: benchmarks/results/live.json (or live-<classifier>.json with --tag).
"""

from __future__ import annotations

import argparse
import io
import secrets
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _png(im) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def steady_load(url: str, images: list[bytes], stop: threading.Event, period: float, out: list) -> None:
    import httpx

    with httpx.Client(base_url=url, timeout=60) as c:
        i = 0
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                r = c.post("/v1/classify", files={"image": ("x.png", images[i % len(images)], "image/png")})
                out.append((time.time(), time.perf_counter() - t0, r.status_code))
            except httpx.HTTPError as e:
                out.append((time.time(), time.perf_counter() - t0, type(e).__name__))
            i += 1
            time.sleep(max(0.0, period - (time.perf_counter() - t0)))


def latency(rows: list) -> dict:
    lat = sorted(d for _, d, _ in rows)
    if not lat:
        return {}
    return {"requests": len(lat), "p50_ms": round(1000 * lat[len(lat) // 2], 2),
            "p99_ms": round(1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], 2),
            "non_200": sum(1 for *_, s in rows if s != 200)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default="runs/miniworld")
    ap.add_argument("--name", default="checkered purple hexagon", help="the class to add")
    ap.add_argument("--classifier", default="", help="live.classifier for the job (default: the run's config)")
    ap.add_argument("--images", type=int, default=0, help="live.images_per_class (0: the run's config)")
    ap.add_argument("--idle-s", type=float, default=20.0, help="seconds of idle load before the job")
    ap.add_argument("--tag", default="", help="suffix of the result file")
    a = ap.parse_args()
    import httpx
    import ray
    import yaml
    from ray import serve

    from digzsl_ray.distributed.cluster import init_ray
    from digzsl_ray.miniworld import world
    from digzsl_ray.serve import build_app

    src = Path(a.run)
    if not (src / "classifier" / "weights.safetensors").is_file():
        sys.exit(f"{src}: no finished run directory; run `make demo` first (or pass --run)")
    tmp = Path(tempfile.mkdtemp(prefix="live-bench-"))
    run = tmp / "run"
    shutil.copytree(src, run, ignore=shutil.ignore_patterns("models", "jobs", "live", "ray"), symlinks=True)
    cfg_path = run / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg.setdefault("live", {})
    if a.classifier:
        cfg["live"]["classifier"] = a.classifier
    if a.images:
        cfg["live"]["images_per_class"] = a.images
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    token = tmp / "token"
    token.write_text(secrets.token_hex(24))
    init_ray(num_cpus=4)
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app({"run_dir": str(run), "api_token_file": str(token), "max_replicas": 1}), name="digzsl",
              route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    c = httpx.Client(base_url=url, timeout=60)
    auth = {"Authorization": f"Bearer {token.read_text()}"}
    names = [n for n in world.class_by_name() if n != a.name]
    images = [_png(world.render(world.class_by_name()[n], 0, 77, i)) for i, n in enumerate(names)]
    for b in images[:8]:  # warm-up
        c.post("/v1/classify", files={"image": ("x.png", b, "image/png")})

    def load_for(seconds: float | None, stop: threading.Event) -> list:
        rows: list = []
        threads = [threading.Thread(target=steady_load, args=(url, images[k::2], stop, 0.2, rows)) for k in range(2)]
        [t.start() for t in threads]
        if seconds is not None:
            time.sleep(seconds)
            stop.set()
            [t.join() for t in threads]
        return rows if seconds is not None else (rows, threads)

    idle = load_for(a.idle_s, threading.Event())
    stop = threading.Event()
    busy, threads = load_for(None, stop)
    t0 = time.time()
    r = c.post("/v1/classes", json={"name": a.name}, headers=auth)
    if r.status_code != 202:
        stop.set()
        sys.exit(f"POST /v1/classes: {r.status_code} {r.text}")
    job_id = r.json()["id"]
    state = r.json()
    while state["status"] not in ("succeeded", "rejected", "failed"):
        time.sleep(1)
        state = c.get(f"/v1/jobs/{job_id}").json()
    wall = time.time() - t0
    t_end = time.time()
    time.sleep(3)
    stop.set()
    [t.join() for t in threads]
    during = [row for row in busy if row[0] <= t_end]
    result = {"run": str(src), "name": a.name, "status": state["status"], "job_wall_s": round(wall, 1),
              "stages_s": {k: v["seconds"] for k, v in state["stages"].items()}, "metrics": state["metrics"],
              "classify_idle": latency(idle), "classify_during_job": latency(during),
              "classify_after_swap": latency([row for row in busy if row[0] > t_end]),
              "settings": {"clients": 2, "rate_per_client_hz": 5, "classifier": a.classifier or "run config",
                           "images": a.images or "run config",
                           "model_in_ingress": bool(cfg.get("serve", {}).get("model_in_ingress", False))}}
    if a.name in world.class_by_name() and state["status"] == "succeeded":
        fresh = [_png(world.render(world.class_by_name()[a.name], 0, 91, i)) for i in range(60)]
        hits = [c.post("/v1/classify", files={"image": ("x.png", b, "image/png")}).json()["predictions"][0]["class"]
                == a.name for b in fresh]
        result["new_class_top1_fresh_renders"] = round(100 * sum(hits) / len(hits), 1)
    serve.shutdown()
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)
    save("live" + (f"-{a.tag}" if a.tag else ""), result)


if __name__ == "__main__":
    main()
