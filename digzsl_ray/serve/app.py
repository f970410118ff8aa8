"""The Serve application: ``build_app(args)`` and its deployments.

Deployments: ``Ingress`` (FastAPI; parses and validates requests, decodes images), ``Classifier``
(the model; dynamic request batching with ``@serve.batch``; with ``serve.model_in_ingress`` the
ingress replicas hold the model themselves), ``Jobs`` (the add-class job queue of the run
directory) and ``Generator`` (Stable Diffusion with the learned tokens; scales from zero). The live
routes (``POST /v1/classes``, ``GET /v1/jobs/{id}``, ``GET /v1/models``, ``POST
/v1/models/{id}/activate``, ``POST /v1/generate``), model versions, access control and metrics are
described in docs/live.md. Routes of the classifier:

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
import json
import logging
from pathlib import Path

import numpy as np
from fastapi import (
    Request,  # real (not postponed) annotations: the app is pickled into Serve replicas
)

from digzsl_ray.serve.requests import (
    RequestError,
    _echo,
    decode_image,
    multi_label_answer,
    parse_k,
    parse_threshold,
    top_k,
)
from digzsl_ray.serve.rundir import Scheduled, add_class_fn, load_run_meta, run_config, version_store

log = logging.getLogger("digzsl")


# serve.* keys that build_app args may override (serve run / serve deploy / digzsl serve)
OVERRIDABLE = ("max_batch_size", "batch_wait_timeout_s", "max_body_bytes", "max_pixels", "default_k", "min_replicas",
               "max_replicas", "num_cpus", "num_gpus", "body_timeout_s", "max_header_bytes", "max_jpeg_scans",
               "max_body_reads_per_client", "docs", "api_token_file", "protect_classify", "model_in_ingress",
               "generate_max_n", "generate_max_queued", "generate_max_batch_size", "generate_min_replicas", "generate_max_replicas", "generate_num_gpus",
               "generate_num_cpus", "generate_downscale_delay_s")
LIMIT_KEYS = ("max_body_bytes", "max_pixels", "default_k", "body_timeout_s", "max_header_bytes", "max_jpeg_scans",
              "max_body_reads_per_client")
def ray_free_cpus() -> tuple[float, float] | None:
    """(free CPUs, total CPUs) of the Ray cluster this replica runs on (the add-class watchdog's probe)."""
    try:
        import ray

        return float(ray.available_resources().get("CPU", 0.0)), float(ray.cluster_resources().get("CPU", 0.0))
    except Exception:  # noqa: BLE001 - a probe, never a failure
        return None


_METRICS: list = []


def request_metrics():
    """This process's :class:`~digzsl_ray.distributed.metrics.Metrics` (created on first use, in the replica)."""
    if not _METRICS:
        from digzsl_ray.distributed.metrics import Metrics

        _METRICS.append(Metrics())
    return _METRICS[0]


def build_app(args: dict):
    """The Serve application for ``args["run_dir"]`` (see module docstring)."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse
    from ray import serve
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

    UNAVAILABLE: tuple = (RayActorError, ActorDiedError, ActorUnavailableError)
    BACKPRESSURE: tuple = ()
    try:
        from ray.serve.exceptions import BackPressureError

        UNAVAILABLE += (BackPressureError,)
        BACKPRESSURE = (BackPressureError,)
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

    class ModelHost:
        """The model of a replica: the versions in use, dynamic batching (``predict``). The
        Classifier deployment is one; with ``serve.model_in_ingress`` the ingress replicas are."""

        def _init_model(self, classifier_dir: str, max_batch_size: int, batch_wait_timeout_s: float, threads: int,
                        method: str = "", task: str = "single_label"):
            import torch

            from digzsl_ray.distributed.metrics import Metrics
            from digzsl_ray.models.presets import pick_device

            torch.set_num_threads(threads)
            self.device = pick_device("auto")
            self.multi_label = task == "multi_label"
            self.method = method
            self.models: dict = {}  # classifier folder -> model (the versions in use; at most KEEP)
            self._model(classifier_dir)  # the run's own classifier, loaded before the replica takes requests
            self.predict.set_max_batch_size(max_batch_size)
            self.predict.set_batch_wait_timeout_s(batch_wait_timeout_s)
            self.batches, self.images, self.largest = 0, 0, 0
            self.model_metrics = Metrics()

        KEEP = 4

        def _model(self, classifier_dir: str):
            """The model of one version's classifier folder, loaded once. A frozen CLIP tower is
            shared by every version (only the head differs), so a new version costs its head."""
            m = self.models.get(classifier_dir)
            if m is not None:
                return m
            from digzsl_ray.serve.model import load_model

            shared = next((x for x in self.models.values() if getattr(x, "kind", "") == "clip"), None)
            m = load_model(classifier_dir, self.method, self.device, shared)
            if len(self.models) >= self.KEEP:  # the oldest version other than the first goes
                self.models.pop(next(k for k in list(self.models)[1:]))
            self.models[classifier_dir] = m
            return m

        def preload(self, classifier_dir: str) -> bool:
            self._model(classifier_dir)
            return True

        def ready(self, classifier_dir: str, size: int) -> bool:
            """The version's model loaded and one forward pass done (the first one pays for lazy
            initialisation): what ``/readyz`` waits for."""
            import torch

            warm = self.__dict__.setdefault("_warm", set())
            if classifier_dir not in warm:
                with torch.no_grad():
                    self._model(classifier_dir)(torch.zeros(1, 3, size, size, dtype=torch.uint8).to(self.device))
                warm.add(classifier_dir)
            return True

        def batch_stats(self) -> dict:
            """Batching counters of this replica (what dynamic batching achieved)."""
            return {"batches": self.batches, "images": self.images, "largest_batch": self.largest,
                    "mean_batch": round(self.images / self.batches, 3) if self.batches else 0.0,
                    "versions_loaded": len(self.models)}

        @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
        async def predict(self, images: list[np.ndarray], dirs: list[str]) -> list[np.ndarray]:
            from digzsl_ray.serve.model import probabilities

            self.batches += 1
            self.images += len(images)
            self.largest = max(self.largest, len(images))
            self.model_metrics.batch_size("classify", len(images))
            out: list = [None] * len(images)
            # a batch that spans an activation holds requests of two versions: one forward per version
            for d in dict.fromkeys(dirs):
                idx = [i for i, x in enumerate(dirs) if x == d]
                probs = probabilities(self._model(d), np.stack([images[i] for i in idx]), self.multi_label,
                                      self.device)
                for j, i in enumerate(idx):
                    out[i] = probs[j]
            return out

    @serve.deployment(name="Classifier", max_ongoing_requests=max(32, 2 * sc["max_batch_size"]),
                      ray_actor_options={"num_cpus": sc["num_cpus"], "num_gpus": sc["num_gpus"]},
                      autoscaling_config={"min_replicas": sc["min_replicas"], "max_replicas": sc["max_replicas"],
                                          "target_ongoing_requests": sc["target_ongoing_requests"]})
    class Classifier(ModelHost):
        def __init__(self, *model_args):
            self._init_model(*model_args)

    # No /docs, /redoc, /openapi.json unless serve.docs (they describe the service to anyone who asks);
    # no slash redirects (/v1/classify/ is a JSON 404, not an empty 307).
    docs = bool(sc.get("docs", False))
    app = FastAPI(title="digzsl-ray classifier", version="1", docs_url="/docs" if docs else None,
                  redoc_url="/redoc" if docs else None, openapi_url="/openapi.json" if docs else None,
                  redirect_slashes=False)

    # Handlers must be registered before @serve.ingress(app), which pickles the app as it is then.
    @app.middleware("http")
    async def count_requests(request, call_next):
        response = await call_next(request)
        route = request.scope.get("route")
        request_metrics().request(getattr(route, "path", "unrouted"), response.status_code)
        return response

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

    local = bool(sc.get("model_in_ingress", False))
    if local:  # the ingress replicas hold the model: they take its resources and autoscale on its load
        ingress_scaling = {"min_replicas": max(1, sc["min_replicas"]), "max_replicas": sc["max_replicas"],
                           "target_ongoing_requests": sc["target_ongoing_requests"]}
        ingress_actor = {"num_cpus": sc["num_cpus"], "num_gpus": sc["num_gpus"]}
    else:
        ingress_scaling = {"min_replicas": 1, "max_replicas": sc["max_replicas"], "target_ongoing_requests": 64}
        ingress_actor = {"num_cpus": 0.5}

    @serve.deployment(name="Ingress", max_ongoing_requests=256, autoscaling_config=ingress_scaling,
                      ray_actor_options=ingress_actor)
    @serve.ingress(app)
    class Ingress(ModelHost):
        def __init__(self, classifier, run_dir: str, limits: dict, image_size: int, access: dict, jobs=None,
                     generator=None, model_args=None):
            from digzsl_ray.distributed.metrics import Metrics

            if model_args is not None:  # serve.model_in_ingress: one hop per request fewer
                self._init_model(*model_args)
            self.local = model_args is not None
            self.classifier, self.limits, self.size = classifier, limits, image_size
            self.versions = version_store(run_dir)
            self.schedule = Scheduled(self.versions)
            self.access, self.jobs, self.generator = access, jobs, generator
            self.metrics = Metrics()
            self._served = None
            self._reading: dict[str, int] = {}  # client address -> request bodies it is sending now

        @property
        def meta(self) -> dict:
            m = self.schedule.current()
            if m["model_version"] != self._served:
                self.metrics.version(m["model_version"], self._served)
                if self._served is not None:
                    log.info("serving model version %s (was %s)", m["model_version"], self._served)
                    # warm the new version's head before most requests need it
                    if self.local:
                        self.preload(m["classifier_dir"])
                    else:
                        self.classifier.preload.remote(m["classifier_dir"])
                self._served = m["model_version"]
            return m

        def _guard(self, request: Request, protected: bool = True):
            """The one check in front of every route: oversized headers are 431 (before the token is
            even read), then a route that needs the bearer token answers 401/403 without it. Returns
            the JSON answer that refuses the request, or None."""
            from digzsl_ray.live.auth import check

            try:
                self._check_headers(request)
            except RequestError as e:
                return JSONResponse({"error": e.message}, status_code=e.status)
            if not protected:
                return None
            refused = check(request.headers.get("authorization"), self.access.get("digest"))
            if refused is None:
                return None
            status, message = refused
            headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
            return JSONResponse({"error": message}, status_code=status, headers=headers)

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
            client = request.client.host if request.client else "?"
            if self._reading.get(client, 0) >= self.limits["max_body_reads_per_client"]:
                raise RequestError(429, f"too many request bodies in flight from one client (the limit is "
                                        f"{self.limits['max_body_reads_per_client']}); retry when they are sent")
            self._reading[client] = self._reading.get(client, 0) + 1
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
            finally:
                left = self._reading.get(client, 1) - 1
                if left > 0:
                    self._reading[client] = left
                else:
                    self._reading.pop(client, None)
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
            if (denied := self._guard(request, self.access.get("protect_classify", False))) is not None:
                return denied
            meta = self.meta  # one version for the whole request, whatever activations happen meanwhile
            try:
                data, raw_k, raw_threshold = await self._image_and_k(request)
                k = parse_k(raw_k, self.limits["default_k"], len(meta["classes"]))
                multi = meta.get("task") == "multi_label"
                threshold = parse_threshold(raw_threshold, meta.get("threshold", 0.5)) if multi else None
                # decoding is CPU work: off the event loop, so one big image does not stall the replica
                img = await asyncio.to_thread(decode_image, data, self.size, self.limits["max_pixels"],
                                              self.limits["max_jpeg_scans"])
            except RequestError as e:
                return JSONResponse({"error": e.message}, status_code=e.status)
            try:
                if self.local:
                    probs = await self.predict(img, meta["classifier_dir"])
                else:
                    probs = await self.classifier.predict.remote(img, meta["classifier_dir"])
            except UNAVAILABLE as e:  # a replica lost mid-request (node failure, restart): retryable
                log.warning("classifier unavailable: %s", type(e).__name__)
                return JSONResponse({"error": "the model replica was unavailable; retry the request"},
                                    status_code=503, headers={"Retry-After": "1"})
            seen = set(meta["seen"])
            if multi:
                return {"task": "multi_label", **multi_label_answer(np.asarray(probs), meta["classes"], seen,
                                                                   threshold, k),
                        "model_version": meta["model_version"]}
            preds = top_k(np.asarray(probs), meta["classes"], seen, meta["lambda"], k)
            return {"predictions": preds, "model_version": meta["model_version"]}

        @app.get("/v1/classes")
        async def classes(self, request: Request):
            if (denied := self._guard(request, self.access.get("protect_classify", False))) is not None:
                return denied
            meta = self.meta
            seen = set(meta["seen"])
            return {"classes": [{"name": n, "seen": i in seen} for i, n in enumerate(meta["classes"])],
                    "model_version": meta["model_version"]}

        @app.get("/v1/stats")
        async def stats(self, request: Request):
            if (denied := self._guard(request, protected=False)) is not None:
                return denied
            return self.batch_stats() if self.local else await self.classifier.batch_stats.remote()

        @app.get("/readyz")
        async def readyz(self, request: Request):
            """Readiness: 200 once the served version's model has answered a forward pass on a replica
            that classify requests reach; 503 while it loads (a liveness probe uses /healthz)."""
            if (denied := self._guard(request, protected=False)) is not None:
                return denied
            meta = self.meta
            try:
                if self.local:
                    await asyncio.to_thread(self.ready, meta["classifier_dir"], self.size)
                else:
                    await asyncio.wait_for(self.classifier.ready.remote(meta["classifier_dir"], self.size), timeout=5.0)
            except (asyncio.TimeoutError, *UNAVAILABLE):
                return JSONResponse({"status": "loading", "model_version": meta["model_version"]}, status_code=503,
                                    headers={"Retry-After": "1"})
            return {"status": "ready", "model_version": meta["model_version"]}

        @app.get("/healthz")
        async def healthz(self, request: Request):
            if (denied := self._guard(request, protected=False)) is not None:
                return denied
            return {"status": "ok", "model_version": self.meta["model_version"]}

        # The live service: classes added from their names, versions, generation ------------------
        async def _json_body(self, request: Request) -> dict:
            ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype != "application/json":
                raise RequestError(415, f"unsupported content type {_echo(ctype) if ctype else '(none)'}: send "
                                        f"application/json")
            try:
                obj = json.loads(await self._body(request))
            except (ValueError, RecursionError):
                raise RequestError(400, "body is not valid JSON") from None
            if not isinstance(obj, dict):
                raise RequestError(400, "the JSON body must be an object")
            return obj

        def _no_jobs(self):
            return JSONResponse({"error": f"the {self.access.get('method', '')!r} method cannot add classes to its "
                                          f"runs"}, status_code=501)

        @app.post("/v1/classes")
        async def add_class(self, request: Request):
            if (denied := self._guard(request)) is not None:
                return denied
            if self.jobs is None:
                return self._no_jobs()
            try:
                obj = await self._json_body(request)
                if "name" not in obj:
                    raise RequestError(400, "missing field 'name' (the class name to add)")
            except RequestError as e:
                return JSONResponse({"error": e.message}, status_code=e.status)
            out = await self.jobs.submit.remote(obj["name"])
            if "refused" in out:
                headers = {"Retry-After": "60"} if out["refused"] == 429 else None
                return JSONResponse({"error": out["error"]}, status_code=out["refused"], headers=headers)
            return JSONResponse(out, status_code=202, headers={"Location": f"/v1/jobs/{out['id']}"})

        @app.get("/v1/jobs")
        async def list_jobs(self, request: Request):
            if (denied := self._guard(request, self.access.get("protect_classify", False))) is not None:
                return denied
            if self.jobs is None:
                return self._no_jobs()
            return {"jobs": await self.jobs.list.remote()}

        @app.get("/v1/jobs/{job_id}")
        async def get_job(self, job_id: str, request: Request):
            if (denied := self._guard(request, self.access.get("protect_classify", False))) is not None:
                return denied
            if self.jobs is None:
                return self._no_jobs()
            out = await self.jobs.get.remote(job_id)
            if "refused" in out:
                return JSONResponse({"error": out["error"]}, status_code=out["refused"])
            return out

        @app.delete("/v1/jobs/{job_id}")
        async def cancel_job(self, job_id: str, request: Request):
            if (denied := self._guard(request)) is not None:
                return denied
            if self.jobs is None:
                return self._no_jobs()
            out = await self.jobs.cancel.remote(job_id)
            if "refused" in out:
                return JSONResponse({"error": out["error"]}, status_code=out["refused"])
            return JSONResponse(out, status_code=200 if out["status"] == "cancelled" else 202)

        @app.get("/v1/models")
        async def models(self, request: Request):
            from digzsl_ray.live.versions import public

            if (denied := self._guard(request, self.access.get("protect_classify", False))) is not None:
                return denied
            versions = await asyncio.to_thread(self.versions.list)
            return {"models": [public(v) for v in versions], "active": self.meta["model_version"]}

        @app.post("/v1/models/{version}/activate")
        async def activate(self, version: str, request: Request):
            from digzsl_ray.live.versions import VersionError, public

            if (denied := self._guard(request)) is not None:
                return denied
            try:
                v = await asyncio.to_thread(self.versions.activate, version)
            except VersionError as e:
                return JSONResponse({"error": str(e)}, status_code=404)
            self.schedule._checked = 0.0  # this replica follows at once; the others within 0.2 s
            log.info("model version %s activated", v["id"])
            return {"active": v["id"], "model": public(v)}

        @app.post("/v1/generate")
        async def generate(self, request: Request):
            if (denied := self._guard(request)) is not None:
                return denied
            if self.generator is None:
                return JSONResponse({"error": "generation is not available for this run's method"}, status_code=501)
            meta = self.meta
            try:
                obj = await self._json_body(request)
                name, n, seed = obj.get("class"), obj.get("n", 4), obj.get("seed", 0)
                if not isinstance(name, str) or not name:
                    raise RequestError(400, "missing field 'class' (a class name the model knows)")
                if name not in meta["classes"]:
                    raise RequestError(404, f"unknown class {_echo(name)}; GET /v1/classes lists them")
                limit = self.access["generate_max_n"]
                if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= limit:
                    raise RequestError(400, f"bad n: got {_echo(n)}, expected an integer from 1 to {limit}")
                if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**31:
                    raise RequestError(400, f"bad seed: got {_echo(seed)}, expected an integer from 0 to 2**31-1")
            except RequestError as e:
                return JSONResponse({"error": e.message}, status_code=e.status)
            token = meta["tokens"].get(name)  # the served version's token files, read with its metadata
            try:
                pngs = await self.generator.generate.remote({"class": name, "n": n, "seed": seed, "token": token})
            except BACKPRESSURE:
                return JSONResponse({"error": "the generation queue is full; retry later"}, status_code=429,
                                    headers={"Retry-After": "5"})
            except UNAVAILABLE as e:
                log.warning("generator unavailable: %s", type(e).__name__)
                return JSONResponse({"error": "the generation replica was unavailable; retry the request"},
                                    status_code=503, headers={"Retry-After": "1"})
            if "multipart/mixed" in request.headers.get("accept", ""):
                from fastapi.responses import Response

                boundary = hashlib.sha256(b"".join(pngs)).hexdigest()[:24]
                parts = [f"--{boundary}\r\nContent-Type: image/png\r\nContent-Disposition: attachment; "
                         f"filename=\"{i}.png\"\r\n\r\n".encode() + b + b"\r\n" for i, b in enumerate(pngs)]
                return Response(b"".join(parts) + f"--{boundary}--\r\n".encode(),
                                media_type=f"multipart/mixed; boundary={boundary}",
                                headers={"X-Model-Version": meta["model_version"], "X-Seed": str(seed)})
            return {"images": [base64.b64encode(b).decode() for b in pngs], "class": name, "seed": seed,
                    "model_version": meta["model_version"], "token": token is not None}

    @serve.deployment(name="Jobs", num_replicas=1, max_ongoing_requests=64, ray_actor_options={"num_cpus": 0})
    class Jobs:
        """The add-class job queue of the run directory: one job at a time, resumed after a restart."""

        def __init__(self, run_dir: str, queue_size: int, max_name_length: int):
            from digzsl_ray.distributed.metrics import Metrics
            from digzsl_ray.live.jobs import JobRunner

            self.versions = version_store(run_dir)
            fn, stages = add_class_fn(run_dir, self.versions)
            self.max_name_length = max_name_length
            self.runner = JobRunner(run_dir, fn, stages, lambda: self.versions.active()["classes"],
                                    queue_size=queue_size, metrics=Metrics(), free_cpus=ray_free_cpus)

        def submit(self, name) -> dict:
            from digzsl_ray.live.jobs import JobError
            from digzsl_ray.live.names import name_problem

            try:
                return self.runner.submit(name, lambda n: name_problem(n, self.max_name_length))
            except JobError as e:
                return {"error": e.message, "refused": e.status}

        def get(self, job_id: str) -> dict:
            from digzsl_ray.live.jobs import JobError

            try:
                return self.runner.store.get(job_id)
            except JobError as e:
                return {"error": e.message, "refused": e.status}

        def list(self) -> list:
            return self.runner.store.all()

        def cancel(self, job_id: str) -> dict:
            from digzsl_ray.live.jobs import JobError

            try:
                return self.runner.cancel(job_id)
            except JobError as e:
                return {"error": e.message, "refused": e.status}

    @serve.deployment(name="Generator", max_ongoing_requests=max(2, sc["generate_max_batch_size"]),
                      max_queued_requests=sc["generate_max_queued"],
                      ray_actor_options={"num_cpus": sc["generate_num_cpus"], "num_gpus": sc["generate_num_gpus"]},
                      autoscaling_config={"min_replicas": sc["generate_min_replicas"],
                                          "initial_replicas": sc["generate_min_replicas"],
                                          "max_replicas": sc["generate_max_replicas"],
                                          "target_ongoing_requests": 2,
                                          "downscale_delay_s": sc["generate_downscale_delay_s"]})
    class Generator:
        """Stable Diffusion with the learned tokens: images of a known class, batched across requests."""

        def __init__(self, run_dir: str, max_batch_size: int):
            from digzsl_ray.distributed.metrics import Metrics

            cfg = run_config(Path(run_dir))
            self.generation = make_generation(cfg)
            self.generate.set_max_batch_size(max_batch_size)
            self.metrics = Metrics()

        @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
        async def generate(self, requests: list[dict]) -> list[list[bytes]]:
            self.metrics.batch_size("generate", sum(r["n"] for r in requests))
            return await asyncio.to_thread(self.generation, requests)

    cfg_json = json.loads(Path(meta["classifier_dir"], "config.json").read_text())
    threads = max(1, int(sc["num_cpus"]))
    model_args = (meta["classifier_dir"], sc["max_batch_size"], sc["batch_wait_timeout_s"], threads, meta["method"],
                  meta["task"])
    classifier = None if local else Classifier.bind(*model_args)
    limits = {k: sc[k] for k in LIMIT_KEYS}
    from digzsl_ray.live.auth import token_digest
    from digzsl_ray.methods import get_method

    run_dir = str(Path(args["run_dir"]).resolve())
    method = get_method(meta["method"])
    live = run_config(Path(run_dir)).live
    access = {"digest": token_digest(sc.get("api_token_file", "")), "protect_classify": sc["protect_classify"],
              "generate_max_n": sc["generate_max_n"], "method": meta["method"]}
    jobs = Jobs.bind(run_dir, live.queue_size, live.max_name_length) if method.add_class is not None else None
    generator = Generator.bind(run_dir, sc["generate_max_batch_size"]) if method.add_class is not None else None
    return Ingress.bind(classifier, run_dir, limits, int(cfg_json["image_size"]), access, jobs, generator,
                        model_args if local else None)


def make_generation(cfg):
    """``requests -> [[png bytes] per request]`` on one Stable Diffusion pipeline: a class with a
    learned token is drawn with it (the first token template), any other with the plain prompt.
    Image ``j`` of a request starts from the latents of seed ``seed + j``: the same request gives
    the same images, whatever else shares its batch."""
    import torch

    from digzsl_ray.images import png_bytes
    from digzsl_ray.models.presets import load_sd_pipeline, pick_device
    from digzsl_ray.models.sd import generate

    torch.set_num_threads(cfg.models.torch_threads)
    pipe = load_sd_pipeline(cfg.models.sd, pick_device(cfg.models.device), cfg.models.precision, cfg.models.attention)
    g = cfg.generate
    loaded: dict[str, str] = {}  # token file -> placeholder
    tokens_cfg = getattr(cfg, "tokens", None)
    template = tokens_cfg.templates[0] if tokens_cfg is not None else "{name}"

    def prompt_of(r: dict) -> str:
        if r.get("token"):
            if r["token"] not in loaded:
                from safetensors.torch import load_file

                placeholder = next(iter(load_file(r["token"])))
                if placeholder not in pipe.tokenizer.get_vocab():
                    pipe.load_textual_inversion(r["token"])
                loaded[r["token"]] = placeholder
            return template.format(token=loaded[r["token"]], name=r["class"])
        return g.plain_template.format(name=r["class"])

    def run(requests: list[dict]) -> list[list[bytes]]:
        prompts, seeds = [], []
        for r in requests:
            p = prompt_of(r)
            prompts += [p] * r["n"]
            seeds += [r["seed"] + j for j in range(r["n"])]
        with torch.no_grad():
            imgs = generate(pipe, prompts, seeds, g.num_inference_steps, g.guidance_scale, batch=len(prompts))
        out, i = [], 0
        for r in requests:
            out.append([png_bytes(im) for im in imgs[i : i + r["n"]]])
            i += r["n"]
        return out

    return run
