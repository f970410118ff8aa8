"""bare_app: the baseline of benchmarks/serve.py, a single-process uvicorn + FastAPI app doing the work
of the Ray Serve endpoint per request: ``POST /v1/classify`` (multipart field ``image``) reads the
upload, decodes it with :func:`digzsl_ray.serve.decode_image` in a thread, hands the array to an
asyncio micro-batcher (up to ``max_batch_size`` requests, or ``batch_wait_timeout_s`` after the
first, one batch at a time, like ``@serve.batch``), runs the model forward and softmax in a thread
and answers ``{"predictions": top_k(...), "model_version": "bare"}``. ``GET /healthz`` too.

    python benchmarks/bare_app.py --run runs/miniworld --port 8123 [--max-batch-size 16]
        [--batch-wait-timeout-s 0.005] [--threads 1]

No Ray, no request limits beyond the decoder's (what a user would write instead of Serve).
"""

# no `from __future__ import annotations`: FastAPI must see the real `Request` annotation of a
# route defined inside make_app (a postponed one names a local it cannot resolve).
import argparse
import asyncio
import collections
import json
from pathlib import Path

import numpy as np


class MicroBatcher:
    """Collects submitted items into batches for ``fn(list) -> list`` (run in a worker thread).

    A batch closes when it holds ``max_batch_size`` items or ``timeout_s`` after it started
    collecting; batches run one at a time, and requests arriving meanwhile wait for the next."""

    def __init__(self, fn, max_batch_size: int, timeout_s: float):
        self.fn, self.max_batch_size, self.timeout_s = fn, max(1, int(max_batch_size)), float(timeout_s)
        self.pending: collections.deque = collections.deque()
        self.arrived = asyncio.Event()
        self.task: asyncio.Task | None = None
        self.batches = self.images = 0

    async def submit(self, item):
        loop = asyncio.get_running_loop()
        if self.task is None or self.task.done():
            self.task = loop.create_task(self._loop())
        fut = loop.create_future()
        self.pending.append((item, fut))
        self.arrived.set()
        return await fut

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self.pending:
                self.arrived.clear()
                await self.arrived.wait()
            deadline = loop.time() + self.timeout_s
            while len(self.pending) < self.max_batch_size:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self.arrived.clear()
                try:  # the queue is the state; a wake-up lost to the timeout costs nothing
                    await asyncio.wait_for(self.arrived.wait(), remaining)
                except TimeoutError:
                    break
            batch = [self.pending.popleft() for _ in range(min(self.max_batch_size, len(self.pending)))]
            batch = [(x, f) for x, f in batch if not f.done()]  # a cancelled request (client gone) is dropped
            if not batch:
                continue
            self.batches += 1
            self.images += len(batch)
            try:
                outs = await asyncio.to_thread(self.fn, [x for x, _ in batch])
            except Exception as e:  # noqa: BLE001  every request of the batch gets the error
                for _, f in batch:
                    if not f.done():
                        f.set_exception(e)
                continue
            for (_, f), out in zip(batch, outs):
                if not f.done():
                    f.set_result(out)


def make_app(run_dir: str, max_batch_size: int = 16, batch_wait_timeout_s: float = 0.005, threads: int = 1):
    """The FastAPI app serving ``run_dir``'s classifier (see module docstring)."""
    import torch
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    from digzsl_ray.classifier import load_classifier
    from digzsl_ray.serve import decode_image, top_k

    run = Path(run_dir)
    torch.set_num_threads(int(threads))
    model, cfg, classes = load_classifier(run / "classifier")
    names, seen = classes["classes"], set(classes["seen"])
    metrics = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").is_file() else {}
    lam = float(metrics.get("calibration_lambda", 0.0))
    size = int(cfg["image_size"])

    def forward(imgs: list[np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            return list(model(torch.from_numpy(np.stack(imgs))).float().softmax(-1).numpy())

    batcher = MicroBatcher(forward, max_batch_size, batch_wait_timeout_s)
    app = FastAPI(title="digzsl-ray bare baseline", docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/v1/classify")
    async def classify(request: Request):
        try:
            form = await request.form(max_files=2, max_fields=10)
        except Exception as e:  # noqa: BLE001  malformed multipart
            return JSONResponse({"error": f"malformed multipart body ({type(e).__name__})"}, status_code=400)
        upload = form.get("image")
        if upload is None:
            return JSONResponse({"error": "missing form field 'image'"}, status_code=400)
        data = await upload.read() if hasattr(upload, "read") else str(upload).encode()
        try:
            img = await asyncio.to_thread(decode_image, data, size, max_pixels=16_000_000, max_jpeg_scans=64)
        except Exception as e:  # noqa: BLE001  digzsl_ray.serve.RequestError: status and message
            status = getattr(e, "status", 400)
            return JSONResponse({"error": getattr(e, "message", str(e))}, status_code=status)
        probs = await batcher.submit(img)
        return {"predictions": top_k(np.asarray(probs), names, seen, lam, 5), "model_version": "bare"}

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "model_version": "bare"}

    @app.get("/v1/stats")
    async def stats():
        b, n = batcher.batches, batcher.images
        return {"batches": b, "images": n, "mean_batch": round(n / b, 3) if b else 0.0}

    return app


def main() -> None:
    import uvicorn

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a finished run directory")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--max-batch-size", type=int, default=16)
    ap.add_argument("--batch-wait-timeout-s", type=float, default=0.005)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    app = make_app(a.run, a.max_batch_size, a.batch_wait_timeout_s, a.threads)
    uvicorn.run(app, host="127.0.0.1", port=a.port, log_level="warning")


if __name__ == "__main__":
    main()
