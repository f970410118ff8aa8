"""The online classification endpoint (Ray Serve): ``build_app(args)``.

Two deployments: ``Ingress`` (FastAPI; parses and validates requests, decodes images) and
``Classifier`` (the model; dynamic request batching with ``@serve.batch``). Routes:

* ``POST /v1/classify``: multipart form field ``image`` (optional field/query ``k``), or JSON
  ``{"image_base64": "...", "k": 5}``; answers ``{"predictions": [{"class", "score", "seen",
  "probability"}], "model_version"}``: the top k classes under GZSL calibrated stacking (``score`` =
  softmax probability minus the run's calibration lambda for seen classes, the ranking used by
  the evaluation). A multi-label run (``method: multilabel``) answers ``{"task": "multi_label",
  "labels": [...], "predictions": [...], "threshold", "model_version"}``: ``labels`` are every label
  whose probability exceeds the threshold chosen on validation data (``threshold`` in the JSON,
  form or query overrides it, strictly between 0 and 1), ``predictions`` the top k by probability.
* ``GET /v1/classes``: class names with a seen flag; ``GET /healthz``; ``GET /v1/stats``: the
  batching counters of one Classifier replica.

Every user mistake is a 4xx JSON ``{"error": "..."}``: wrong content type (415), missing field,
bad base64 / JSON, not an image, truncated image, bad ``k`` (400), body or pixel count over the
limits (413). The classifier is loaded with safetensors and JSON only; nothing is unpickled.

``args`` (from ``serve run``/``serve deploy`` or ``digzsl serve``): ``run_dir`` (required) and
optional overrides of the run's ``serve`` config (``OVERRIDABLE``: batching, limits, replicas,
resources). A model replica lost mid-request gives a retryable 503 JSON error.
"""

import asyncio
import base64
import binascii
import hashlib
import io
import json
import logging
from pathlib import Path

import numpy as np
from fastapi import (
    Request,  # real (not postponed) annotations: the app is pickled into Serve replicas
)

log = logging.getLogger("digzsl")


# serve.* keys that build_app args may override (serve run / serve deploy / digzsl serve)
OVERRIDABLE = ("max_batch_size", "batch_wait_timeout_s", "max_body_bytes", "max_pixels", "default_k", "min_replicas",
               "max_replicas", "num_cpus", "num_gpus", "body_timeout_s", "max_header_bytes", "max_jpeg_scans",
               "docs")
LIMIT_KEYS = ("max_body_bytes", "max_pixels", "default_k", "body_timeout_s", "max_header_bytes", "max_jpeg_scans")
MAX_ECHO = 80  # characters of a client's input that an error message may quote


def _echo(value) -> str:
    from digzsl_ray.errors import short

    return short(value, MAX_ECHO)


class RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def run_config(run_dir: Path, overrides: list[str] | None = None):
    """The run directory's resolved config (config.yaml) with its method's config class."""
    from digzsl_ray.methods import load_run_config

    cfg_path = Path(run_dir) / "config.yaml"
    return load_run_config(cfg_path if cfg_path.is_file() else None, overrides)


def load_run_meta(run_dir: str | Path) -> dict:
    """What serving needs from a run directory: serve config, classes, lambda, model version."""
    from digzsl_ray.errors import MissingInputError
    from digzsl_ray.methods import get_method

    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    cdir = get_method(cfg.method).output(run_dir, get_method(cfg.method).serve_model)
    for f in ("weights.safetensors", "config.json", "classes.json"):
        if not (cdir / f).is_file():
            raise MissingInputError(f"{cdir / f}: missing; serve needs a finished run directory (digzsl run)")
    try:
        classes = json.loads((cdir / "classes.json").read_text())
        metrics = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").is_file() else {}
        names, seen, unseen = classes["classes"], classes["seen"], classes["unseen"]
        lam = float(metrics.get("calibration_lambda", 0.0))
        task = str(metrics.get("task", "single_label"))
        threshold = float(metrics.get("threshold", 0.5))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise MissingInputError(f"{run_dir}: classifier/classes.json or metrics.json is damaged "
                                f"({type(e).__name__}: {str(e)[:120]}); rerun `digzsl evaluate` or `digzsl run`") from None
    digest = hashlib.sha256((cdir / "weights.safetensors").read_bytes()).hexdigest()[:12]
    return {"serve": cfg.serve.model_dump(), "classes": names, "seen": seen, "unseen": unseen, "lambda": lam,
            "model_version": f"{cfg.name}-{digest}", "classifier_dir": str(cdir), "task": task,
            "threshold": threshold, "method": cfg.method}


def parse_threshold(raw, default: float) -> float:
    """A request's ``threshold`` (multi-label runs): a number strictly between 0 and 1, else 400."""
    if raw is None or raw == "":
        return default
    if isinstance(raw, bool):
        raise RequestError(400, "bad threshold: expected a number between 0 and 1, got a boolean")
    try:
        t = float(raw)
    except (TypeError, ValueError):
        raise RequestError(400, f"bad threshold: got {_echo(raw)}, expected a number between 0 and 1") from None
    if not 0.0 < t < 1.0:
        raise RequestError(400, f"bad threshold: got {_echo(raw)}, expected a number between 0 and 1 (exclusive)")
    return t


def multi_label_answer(probs: np.ndarray, classes: list[str], seen: set[int], threshold: float, k: int) -> dict:
    """Every label whose probability exceeds ``threshold`` (highest first) and the top ``k``."""
    p = probs.astype(np.float64)
    order = np.argsort(-p, kind="stable")

    def row(i):
        return {"class": classes[i], "probability": round(float(p[i]), 6), "seen": int(i) in seen}

    return {"labels": [row(i) for i in order if p[i] > threshold], "predictions": [row(i) for i in order[:k]],
            "threshold": threshold}


IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")  # never EPS/PS (Ghostscript) or other exotica
MAX_ASPECT = 20  # longer side / shorter side


def jpeg_scans(data: bytes) -> int:
    """Start-of-scan markers of a JPEG. Entropy-coded data never holds 0xFF 0xDA (an 0xFF there is
    followed by 0x00 or a restart marker), so the byte count is the scan count; a progressive JPEG
    has about ten, while one crafted with thousands of empty scans costs seconds of CPU per scan."""
    return data.count(b"\xff\xda") if data[:2] == b"\xff\xd8" else 0


def decode_image(data: bytes, size: int, max_pixels: int, max_jpeg_scans: int = 64) -> np.ndarray:
    """Validated image -> ``uint8 [3, size, size]``; raises :class:`RequestError` on bad input.

    Decoded as a viewer shows it (:func:`digzsl_ray.images.to_rgb`: EXIF orientation, 16-bit
    grayscale scaled, transparency on white). Work is bounded before decoding: pixel count, aspect
    ratio and, for JPEG, the number of scans."""
    from PIL import Image, UnidentifiedImageError

    from digzsl_ray.images import to_uint8_tensor

    if not data:
        raise RequestError(400, "empty image")
    scans = jpeg_scans(data)
    if scans > max_jpeg_scans:
        raise RequestError(400, f"JPEG with {scans} scans; at most {max_jpeg_scans} are decoded (a progressive "
                                f"JPEG has about 10)")
    try:
        im = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except UnidentifiedImageError:
        raise RequestError(400, "not an image: the bytes are not a supported format "
                                f"({', '.join(IMAGE_FORMATS)})") from None
    except Image.DecompressionBombError as e:
        raise RequestError(413, f"image too large: {e}") from None
    except ValueError as e:  # e.g. a PNG text or ICC chunk over PIL's safety limit
        raise RequestError(400, f"not a usable image: {str(e)[:160]}") from None
    except Exception as e:  # PIL raises many types for malformed headers
        raise RequestError(400, f"not an image ({type(e).__name__})") from None
    w, h = im.size
    if w * h > max_pixels:
        raise RequestError(413, f"image too large: {w}x{h} = {w * h} pixels, the limit is {max_pixels}")
    if min(w, h) < 1 or max(w, h) > MAX_ASPECT * min(w, h):
        raise RequestError(400, f"unsupported image shape {w}x{h}: the longer side may be at most {MAX_ASPECT} "
                                f"times the shorter")
    try:
        im.load()
    except Image.DecompressionBombError as e:
        raise RequestError(413, f"image too large: {e}") from None
    except Exception as e:  # truncated data, bad chunks, decoder errors
        raise RequestError(400, f"truncated or corrupt image ({type(e).__name__}: {str(e)[:160]})") from None
    try:
        return to_uint8_tensor(im, size).numpy()
    except Exception as e:
        raise RequestError(400, f"could not convert the image ({type(e).__name__}: {str(e)[:160]})") from None


def parse_k(raw, default: int, num_classes: int) -> int:
    if raw is None or raw == "":
        return default
    expected = f"expected an integer from 1 to {num_classes}"
    if isinstance(raw, bool):
        raise RequestError(400, f"bad k: got {_echo(raw)}, {expected}")
    try:
        k = int(raw)
        if isinstance(raw, float) and raw != k:
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        raise RequestError(400, f"bad k: got {_echo(str(raw)[:MAX_ECHO])}, {expected}") from None
    if not 1 <= k <= num_classes:
        shown = str(k) if abs(k) < 10**12 else "a number of more than 12 digits"
        raise RequestError(400, f"bad k: got {shown}, {expected}")
    return k


def top_k(probs: np.ndarray, classes: list[str], seen: set[int], lam: float, k: int) -> list[dict]:
    """Rank by calibrated score (probability minus lambda for seen classes)."""
    score = probs.astype(np.float64).copy()
    idx_seen = np.fromiter(seen, dtype=np.int64) if seen else np.zeros(0, dtype=np.int64)
    score[idx_seen] -= lam
    order = np.argsort(-score, kind="stable")[:k]
    return [{"class": classes[i], "score": round(float(score[i]), 6), "seen": i in seen,
             "probability": round(float(probs[i]), 6)} for i in order]


def build_app(args: dict):
    """The Serve application for ``args["run_dir"]`` (see module docstring)."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse
    from ray import serve
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

    UNAVAILABLE: tuple = (RayActorError, ActorDiedError, ActorUnavailableError)
    try:
        from ray.serve.exceptions import BackPressureError

        UNAVAILABLE += (BackPressureError,)
    except ImportError:
        pass
    if "run_dir" not in args:
        raise ValueError("build_app args: missing 'run_dir' (the finished run directory to serve)")
    meta = load_run_meta(args["run_dir"])
    # Overrides (serve run / serve deploy args arrive as strings) are validated like the config:
    # "false" is false, out-of-range values are errors naming the key.
    from digzsl_ray.config import ServeConfig, validate_config

    overrides = {k: args[k] for k in OVERRIDABLE if k in args}
    sc = validate_config({**meta["serve"], **overrides}, ServeConfig, "build_app args").model_dump()
    if sc["min_replicas"] > sc["max_replicas"]:
        sc["max_replicas"] = sc["min_replicas"]

    @serve.deployment(name="Classifier", max_ongoing_requests=max(32, 2 * sc["max_batch_size"]),
                      ray_actor_options={"num_cpus": sc["num_cpus"], "num_gpus": sc["num_gpus"]},
                      autoscaling_config={"min_replicas": sc["min_replicas"], "max_replicas": sc["max_replicas"],
                                          "target_ongoing_requests": sc["target_ongoing_requests"]})
    class Classifier:
        def __init__(self, classifier_dir: str, max_batch_size: int, batch_wait_timeout_s: float, threads: int,
                     method: str = "", task: str = "single_label"):
            import torch

            from digzsl_ray.classifier import load_classifier
            from digzsl_ray.models.presets import pick_device

            torch.set_num_threads(threads)
            self.device = pick_device("auto")
            self.multi_label = task == "multi_label"
            from digzsl_ray.methods import get_method

            loader = get_method(method).serve_loader if method else None
            if loader is not None:  # the method's own model: per-label probabilities (multi-label) or logits
                self.model = loader(classifier_dir, self.device)
            else:
                self.model, self.cfg, _ = load_classifier(classifier_dir, self.device)
            self.classify.set_max_batch_size(max_batch_size)
            self.classify.set_batch_wait_timeout_s(batch_wait_timeout_s)
            self.batches, self.images, self.largest = 0, 0, 0

        def stats(self) -> dict:
            """Batching counters of this replica (what dynamic batching achieved)."""
            return {"batches": self.batches, "images": self.images, "largest_batch": self.largest,
                    "mean_batch": round(self.images / self.batches, 3) if self.batches else 0.0}

        @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
        async def classify(self, images: list[np.ndarray]) -> list[np.ndarray]:
            import torch

            self.batches += 1
            self.images += len(images)
            self.largest = max(self.largest, len(images))
            x = torch.from_numpy(np.stack(images)).to(self.device)
            with torch.no_grad():
                out = self.model(x).float()
                probs = (out if self.multi_label else out.softmax(-1)).cpu().numpy()
            return list(probs)

    # No /docs, /redoc, /openapi.json unless serve.docs (they describe the service to anyone who asks);
    # no slash redirects (/v1/classify/ is a JSON 404, not an empty 307).
    docs = bool(sc.get("docs", False))
    app = FastAPI(title="digzsl-ray classifier", version="1", docs_url="/docs" if docs else None,
                  redoc_url="/redoc" if docs else None, openapi_url="/openapi.json" if docs else None,
                  redirect_slashes=False)

    # Handlers must be registered before @serve.ingress(app), which pickles the app as it is then.
    @app.exception_handler(404)
    async def not_found(request, exc):
        return JSONResponse({"error": f"no route {request.method[:20]} {_echo(request.url.path)}; see "
                                      f"/v1/classify, /v1/classes, /healthz"}, status_code=404)

    @app.exception_handler(405)
    async def not_allowed(request, exc):
        return JSONResponse({"error": f"method {request.method[:20]} not allowed on {_echo(request.url.path)}"},
                            status_code=405)

    @app.exception_handler(Exception)
    async def internal(request, exc):
        from starlette.requests import ClientDisconnect

        if isinstance(exc, ClientDisconnect):  # the client went away: nothing to answer, nothing to alert on
            log.debug("client disconnected on %s", request.url.path)
            return JSONResponse({"error": "client disconnected"}, status_code=499)
        log.exception("unhandled error on %s", request.url.path)
        return JSONResponse({"error": "internal error"}, status_code=500)

    @serve.deployment(name="Ingress", max_ongoing_requests=256,
                      autoscaling_config={"min_replicas": 1, "max_replicas": sc["max_replicas"],
                                          "target_ongoing_requests": 64},
                      ray_actor_options={"num_cpus": 0.5})
    @serve.ingress(app)
    class Ingress:
        def __init__(self, classifier, meta: dict, limits: dict, image_size: int):
            self.classifier, self.meta, self.limits, self.size = classifier, meta, limits, image_size
            self.seen = set(meta["seen"])

        def _check_headers(self, request: Request) -> None:
            size = sum(len(k) + len(v) + 4 for k, v in request.headers.raw)
            if size > self.limits["max_header_bytes"]:
                raise RequestError(431, f"request headers too large: {size} bytes, the limit is "
                                        f"{self.limits['max_header_bytes']}")

        async def _body(self, request: Request) -> bytes:
            """The whole body within ``body_timeout_s`` and ``max_body_bytes``: a client that sends
            slowly, or promises more than it sends, is cut off (408) instead of holding a slot."""
            from starlette.requests import ClientDisconnect

            limit = self.limits["max_body_bytes"]
            cl = request.headers.get("content-length")
            if cl is not None:
                try:
                    if int(cl) > limit:
                        raise RequestError(413, f"request body too large: {cl[:20]} bytes, the limit is {limit}")
                except ValueError:
                    raise RequestError(400, f"bad Content-Length header {_echo(cl)}") from None
            chunks, total = [], 0

            async def read() -> None:
                nonlocal total
                async for chunk in request.stream():
                    total += len(chunk)
                    if total > limit:
                        raise RequestError(413, f"request body too large: over {limit} bytes")
                    chunks.append(chunk)

            try:
                await asyncio.wait_for(read(), timeout=self.limits["body_timeout_s"])
            except asyncio.TimeoutError:
                raise RequestError(408, f"request body not received within {self.limits['body_timeout_s']} s "
                                        f"({total} bytes arrived)") from None
            except ClientDisconnect:
                raise RequestError(499, "client disconnected") from None
            body = b"".join(chunks)
            request._body = body  # starlette's body cache: lets request.form() parse what was read
            return body

        async def _image_and_k(self, request: Request) -> tuple[bytes, object, object]:
            ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
            k = request.query_params.get("k")
            threshold = request.query_params.get("threshold")
            if ctype == "multipart/form-data":
                await self._body(request)  # enforce the size limit before parsing (starlette caches the body)
                try:
                    form = await request.form(max_files=2, max_fields=10)
                except Exception as e:  # malformed multipart
                    raise RequestError(400, f"malformed multipart body ({type(e).__name__})") from None
                uploads = form.getlist("image")
                if not uploads:
                    raise RequestError(400, "missing form field 'image' (send the image as multipart field 'image')")
                if len(uploads) > 1:
                    raise RequestError(400, f"{len(uploads)} form fields 'image'; send one image per request")
                upload = uploads[0]
                data = await upload.read() if hasattr(upload, "read") else str(upload).encode()
                return data, form.get("k", k), form.get("threshold", threshold)
            if ctype == "application/json":
                body = await self._body(request)
                try:
                    obj = json.loads(body)
                except ValueError:
                    raise RequestError(400, "body is not valid JSON") from None
                except RecursionError:
                    raise RequestError(400, "JSON body nested too deeply") from None
                if not isinstance(obj, dict) or "image_base64" not in obj:
                    raise RequestError(400, "missing field 'image_base64' in the JSON body")
                if not isinstance(obj["image_base64"], str):
                    raise RequestError(400, "field 'image_base64' must be a base64 string")
                try:
                    data = base64.b64decode(obj["image_base64"], validate=True)
                except (binascii.Error, ValueError):
                    raise RequestError(400, "field 'image_base64' is not valid base64") from None
                return data, obj.get("k", k), obj.get("threshold", threshold)
            raise RequestError(415, f"unsupported content type {_echo(ctype) if ctype else '(none)'}: send multipart/form-data "
                                    f"with a field 'image', or application/json with 'image_base64'")

        @app.post("/v1/classify")
        async def classify(self, request: Request):
            try:
                self._check_headers(request)
                data, raw_k, raw_threshold = await self._image_and_k(request)
                k = parse_k(raw_k, self.limits["default_k"], len(self.meta["classes"]))
                multi = self.meta.get("task") == "multi_label"
                threshold = parse_threshold(raw_threshold, self.meta.get("threshold", 0.5)) if multi else None
                # decoding is CPU work: off the event loop, so one big image does not stall the replica
                img = await asyncio.to_thread(decode_image, data, self.size, self.limits["max_pixels"],
                                              self.limits["max_jpeg_scans"])
            except RequestError as e:
                return JSONResponse({"error": e.message}, status_code=e.status)
            try:
                probs = await self.classifier.classify.remote(img)
            except UNAVAILABLE as e:  # a replica lost mid-request (node failure, restart): retryable
                log.warning("classifier unavailable: %s", type(e).__name__)
                return JSONResponse({"error": "the model replica was unavailable; retry the request"},
                                    status_code=503, headers={"Retry-After": "1"})
            if multi:
                return {"task": "multi_label", **multi_label_answer(np.asarray(probs), self.meta["classes"], self.seen,
                                                                   threshold, k),
                        "model_version": self.meta["model_version"]}
            preds = top_k(np.asarray(probs), self.meta["classes"], self.seen, self.meta["lambda"], k)
            return {"predictions": preds, "model_version": self.meta["model_version"]}

        def _refused(self, request: Request):
            try:
                self._check_headers(request)
            except RequestError as e:
                return JSONResponse({"error": e.message}, status_code=e.status)
            return None

        @app.get("/v1/classes")
        async def classes(self, request: Request):
            if (refused := self._refused(request)) is not None:
                return refused
            return {"classes": [{"name": n, "seen": i in self.seen} for i, n in enumerate(self.meta["classes"])],
                    "model_version": self.meta["model_version"]}

        @app.get("/v1/stats")
        async def stats(self, request: Request):
            if (refused := self._refused(request)) is not None:
                return refused
            return await self.classifier.stats.remote()

        @app.get("/healthz")
        async def healthz(self, request: Request):
            if (refused := self._refused(request)) is not None:
                return refused
            return {"status": "ok", "model_version": self.meta["model_version"]}

    cfg_json = json.loads(Path(meta["classifier_dir"], "config.json").read_text())
    threads = max(1, int(sc["num_cpus"]))
    classifier = Classifier.bind(meta["classifier_dir"], sc["max_batch_size"], sc["batch_wait_timeout_s"], threads,
                                 meta["method"], meta["task"])
    limits = {k: sc[k] for k in LIMIT_KEYS}
    return Ingress.bind(classifier, {k: meta[k] for k in ("classes", "seen", "lambda", "model_version", "task",
                                                          "threshold")}, limits,
                        int(cfg_json["image_size"]))


def serve_blocking(args) -> int:
    """``digzsl serve --run OUT``: a local (or RAY_ADDRESS) cluster, the app on host:port, until Ctrl-C
    or SIGTERM; either shuts down Serve (proxy and replicas) and the cluster it started, exit code 0."""
    import signal
    import time

    from ray import serve

    from digzsl_ray.distributed.cluster import init_ray

    overrides = [o if o.startswith("serve.") else f"serve.{o}" for o in args.overrides]
    if args.host is not None:
        overrides.append(f"serve.host={args.host}")
    if args.port is not None:  # validated like the config (1..65535), 0 included
        overrides.append(f"serve.port={args.port}")
    load_run_meta(args.run)  # a directory that cannot be served is a one-line error before Ray starts
    cfg = run_config(Path(args.run), overrides)
    host, port = cfg.serve.host, cfg.serve.port
    init_ray()
    serve.start(http_options={"host": host, "port": port, "request_timeout_s": cfg.serve.request_timeout_s})

    def on_sigterm(signum, frame):  # `kill`, systemd, Kubernetes: stop like Ctrl-C, replicas included
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)  # after ray.init, which installs a handler of its own
    app_args = {"run_dir": str(Path(args.run).resolve())} | {k: v for k, v in cfg.serve.model_dump().items()
                                                             if k in OVERRIDABLE}
    try:  # a signal may come while the replicas still start: shut down all the same
        serve.run(build_app(app_args), name="digzsl", route_prefix="/")
        print(f"serving {args.run} on http://{host}:{port}  (POST /v1/classify, GET /v1/classes, GET /healthz); "
              f"Ctrl-C to stop", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        import ray

        # Shutting down signals Ray's own processes; a second signal must not cut the shutdown short.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        serve.shutdown()  # the proxy and every replica (each in its own process group) stop with it
        ray.shutdown()
    return 0
