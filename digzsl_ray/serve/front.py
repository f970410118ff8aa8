"""The HTTP front (``Ingress``): every route of the service (README "The endpoint", docs/live.md).

One guard runs first on every route (:meth:`Ingress.guard`): oversized headers are 431 before the
token is read, then a protected route answers 401/403 without the bearer token. Bodies are read
within ``body_timeout_s`` and ``max_body_bytes``, at most ``max_body_reads_per_client`` at once per
client address. Parsing and answers are :mod:`.requests` (Ray-free); the model is the
``Classifier`` deployment, or a :class:`~.classifier.ModelHost` the front holds itself under
``serve.model_in_ingress``; add-class jobs and generation are the ``Jobs`` and ``Generator``
deployments. No /docs, /redoc or /openapi.json unless ``serve.docs`` (they describe the service to
anyone who asks); no slash redirects (/v1/classify/ is a JSON 404, not an empty 307).
"""

# No `from __future__ import annotations`: FastAPI reads the routes' real annotations (Request) in the replica.
import asyncio
import base64
import logging

import numpy as np
from fastapi import FastAPI
from fastapi import Request
from fastapi.responses import JSONResponse, Response
from ray import serve

from digzsl_ray.serve.replicas import BACKPRESSURE, UNAVAILABLE, request_metrics
from digzsl_ray.serve.requests import (
    RequestError,
    _echo,
    base64_image,
    decode_image,
    generate_request,
    json_object,
    media_type,
    multi_label_answer,
    multipart_mixed,
    parse_k,
    parse_threshold,
    top_k,
    unsupported,
)

log = logging.getLogger("digzsl")

app = FastAPI(title="digzsl-ray classifier", version="1", docs_url=None, redoc_url=None, openapi_url=None,
              redirect_slashes=False)


def error(e: RequestError, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": e.message}, status_code=e.status, headers=headers)


def refused(out: dict) -> JSONResponse | None:
    """A deployment's ``{"error", "refused": status}`` answer as HTTP, else None."""
    if "refused" not in out:
        return None
    headers = {"Retry-After": "60"} if out["refused"] == 429 else None
    return JSONResponse({"error": out["error"]}, status_code=out["refused"], headers=headers)


def unavailable(what: str, e: Exception) -> JSONResponse:
    log.warning("%s unavailable: %s", what, type(e).__name__)
    return JSONResponse({"error": f"the {what} replica was unavailable; retry the request"}, status_code=503,
                        headers={"Retry-After": "1"})


class CountRequests:
    """Counts every answer by route and status (docs/live.md, metrics). A plain ASGI middleware:
    Starlette's ``BaseHTTPMiddleware`` (``@app.middleware``) reads the body in a task group of its
    own, whose exception is never retrieved when a client goes away mid-body."""

    def __init__(self, asgi):
        self.asgi = asgi

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.asgi(scope, receive, send)
        status = {"code": 499}  # no answer started: the client went away

        async def counted(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.asgi(scope, receive, counted)
        except Exception:
            status["code"] = 500
            raise
        finally:
            request_metrics().request(getattr(scope.get("route"), "path", "unrouted"), status["code"])


# Middleware and handlers are registered before @serve.ingress(app), which takes the app as it is then.
app.add_middleware(CountRequests)


def no_route(request) -> JSONResponse:
    return JSONResponse({"error": f"no route {request.method[:20]} {_echo(request.url.path)}; see "
                                  f"/v1/classify, /v1/classes, /healthz"}, status_code=404)


@app.exception_handler(404)
async def not_found(request, exc):
    return no_route(request)


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


@serve.deployment(name="Ingress")
@serve.ingress(app)
class Ingress:
    def __init__(self, classifier, run_dir: str, limits: dict, image_size: int, access: dict, jobs=None,
                 generator=None, model_args=None):
        from digzsl_ray.distributed.metrics import Metrics
        from digzsl_ray.serve.classifier import ModelHost
        from digzsl_ray.serve.rundir import ActiveVersion, version_store

        # serve.model_in_ingress: this replica holds the model (one hop per request fewer)
        self.host = ModelHost(*model_args) if model_args is not None else None
        self.classifier, self.limits, self.size = classifier, limits, image_size
        self.versions = version_store(run_dir)
        self.active = ActiveVersion(self.versions)
        self.access, self.jobs, self.generator = access, jobs, generator
        self.metrics = Metrics()
        self._served = None
        self._reading: dict[str, int] = {}  # client address -> request bodies it is sending now

    @property
    def meta(self) -> dict:
        """The served version's metadata (classes, calibration, tokens), followed within 0.2 s of an activation."""
        m = self.active.current()
        if m["model_version"] != self._served:
            self.metrics.version(m["model_version"], self._served)
            if self._served is not None:
                log.info("serving model version %s (was %s)", m["model_version"], self._served)
                self._call_model("preload", m["classifier_dir"])  # warm the new head before most requests need it
            self._served = m["model_version"]
        return m

    def _call_model(self, name: str, *args):
        """A ModelHost method on the model this front uses: its own, or the Classifier deployment's."""
        if self.host is not None:
            return getattr(self.host, name)(*args)
        return getattr(self.classifier, name).remote(*args)

    # the guard and the body ---------------------------------------------------------------------
    def guard(self, request: Request, protected: bool = True) -> JSONResponse | None:
        """The one check in front of every route: headers over ``max_header_bytes`` are 431 (before
        the token is even read), then a protected route answers 401/403 without the bearer token.
        Returns the answer that refuses the request, or None."""
        from digzsl_ray.live.auth import check

        size = sum(len(k) + len(v) + 4 for k, v in request.headers.raw)
        if size > self.limits["max_header_bytes"]:
            return error(RequestError(431, f"request headers too large: {size} bytes, the limit is "
                                           f"{self.limits['max_header_bytes']}"))
        if not protected:
            return None
        denied = check(request.headers.get("authorization"), self.access.get("digest"))
        if denied is None:
            return None
        status, message = denied
        return JSONResponse({"error": message}, status_code=status,
                            headers={"WWW-Authenticate": "Bearer"} if status == 401 else None)

    def reader_guard(self, request: Request) -> JSONResponse | None:
        """The guard of the read-only routes: protected with ``serve.protect_classify``."""
        return self.guard(request, self.access.get("protect_classify", False))

    async def _body(self, request: Request) -> bytes:
        """The whole body within ``body_timeout_s`` and ``max_body_bytes``: a client that sends
        slowly, or promises more than it sends, is cut off (408) instead of holding a slot."""
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
        try:
            body = await self._read(request, limit)
        finally:
            left = self._reading.pop(client, 1) - 1
            if left > 0:
                self._reading[client] = left
        request._body = body  # starlette's body cache: lets request.form() parse what was read
        return body

    async def _read(self, request: Request, limit: int) -> bytes:
        """The body chunks within ``body_timeout_s``, read in this task (``asyncio.timeout``, not a
        task of its own that a timeout would leave with an exception nobody retrieves)."""
        from starlette.requests import ClientDisconnect

        chunks, total = [], 0
        try:
            async with asyncio.timeout(self.limits["body_timeout_s"]):
                async for chunk in request.stream():
                    total += len(chunk)
                    if total > limit:
                        raise RequestError(413, f"request body too large: over {limit} bytes")
                    chunks.append(chunk)
        except RequestError:
            raise
        except TimeoutError:
            raise RequestError(408, f"request body not received within {self.limits['body_timeout_s']} s "
                                    f"({total} bytes arrived)") from None
        except (ClientDisconnect, Exception):  # the client went away mid-body (Serve cancels its receive)
            raise RequestError(499, "client disconnected") from None
        return b"".join(chunks)

    async def _json_body(self, request: Request) -> dict:
        ctype = media_type(request.headers.get("content-type"))
        if ctype != "application/json":
            raise unsupported(ctype, "application/json")
        return json_object(await self._body(request))

    async def _image_and_k(self, request: Request) -> tuple[bytes, object, object]:
        """The image bytes and the raw ``k`` and ``threshold`` (body fields win over the query)."""
        ctype = media_type(request.headers.get("content-type"))
        k, threshold = request.query_params.get("k"), request.query_params.get("threshold")
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
            obj = json_object(await self._body(request))
            return base64_image(obj), obj.get("k", k), obj.get("threshold", threshold)
        raise unsupported(ctype, "multipart/form-data with a field 'image', or application/json with 'image_base64'")

    # classification ----------------------------------------------------------------------------
    @app.post("/v1/classify")
    async def classify(self, request: Request):
        if (denied := self.reader_guard(request)) is not None:
            return denied
        meta = self.meta  # one version for the whole request, whatever activations happen meanwhile
        multi = meta.get("task") == "multi_label"
        try:
            data, raw_k, raw_threshold = await self._image_and_k(request)
            k = parse_k(raw_k, self.limits["default_k"], len(meta["classes"]))
            threshold = parse_threshold(raw_threshold, meta.get("threshold", 0.5)) if multi else None
            # decoding is CPU work: off the event loop, so one big image does not stall the replica
            img = await asyncio.to_thread(decode_image, data, self.size, self.limits["max_pixels"],
                                          self.limits["max_jpeg_scans"])
        except RequestError as e:
            return error(e)
        try:
            probs = np.asarray(await self._call_model("predict", img, meta["classifier_dir"]))
        except UNAVAILABLE as e:  # a replica lost mid-request (node failure, restart): retryable
            return unavailable("model", e)
        seen = set(meta["seen"])
        if multi:
            return {"task": "multi_label", **multi_label_answer(probs, meta["classes"], seen, threshold, k),
                    "model_version": meta["model_version"]}
        return {"predictions": top_k(probs, meta["classes"], seen, meta["lambda"], k),
                "model_version": meta["model_version"]}

    @app.get("/v1/classes")
    async def classes(self, request: Request):
        if (denied := self.reader_guard(request)) is not None:
            return denied
        meta = self.meta
        seen = set(meta["seen"])
        return {"classes": [{"name": n, "seen": i in seen} for i, n in enumerate(meta["classes"])],
                "model_version": meta["model_version"]}

    @app.get("/v1/stats")
    async def stats(self, request: Request):
        if (denied := self.guard(request, protected=False)) is not None:
            return denied
        return self.host.batch_stats() if self.host is not None else await self.classifier.batch_stats.remote()

    @app.get("/readyz")
    async def readyz(self, request: Request):
        """Readiness: 200 once the served version's model has answered a forward pass on a replica
        that classify requests reach; 503 while it loads (a liveness probe uses /healthz)."""
        if (denied := self.guard(request, protected=False)) is not None:
            return denied
        meta = self.meta
        try:
            if self.host is not None:
                await asyncio.to_thread(self.host.ready, meta["classifier_dir"], self.size)
            else:
                await asyncio.wait_for(self.classifier.ready.remote(meta["classifier_dir"], self.size), timeout=5.0)
        except (asyncio.TimeoutError, *UNAVAILABLE):
            return JSONResponse({"status": "loading", "model_version": meta["model_version"]}, status_code=503,
                                headers={"Retry-After": "1"})
        return {"status": "ready", "model_version": meta["model_version"]}

    @app.get("/healthz")
    async def healthz(self, request: Request):
        if (denied := self.guard(request, protected=False)) is not None:
            return denied
        return {"status": "ok", "model_version": self.meta["model_version"]}

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(self, request: Request):
        if (denied := self.guard(request, protected=False)) is not None:
            return denied
        return app.openapi() if self.access.get("docs") else no_route(request)

    @app.get("/docs", include_in_schema=False)
    async def docs(self, request: Request):
        from fastapi.openapi.docs import get_swagger_ui_html

        if (denied := self.guard(request, protected=False)) is not None:
            return denied
        return get_swagger_ui_html(openapi_url="/openapi.json", title=app.title) if self.access.get("docs") \
            else no_route(request)

    @app.get("/redoc", include_in_schema=False)
    async def redoc(self, request: Request):
        from fastapi.openapi.docs import get_redoc_html

        if (denied := self.guard(request, protected=False)) is not None:
            return denied
        return get_redoc_html(openapi_url="/openapi.json", title=app.title) if self.access.get("docs") \
            else no_route(request)

    # the live service: classes added from their names, versions, generation ----------------------
    def _no_jobs(self) -> JSONResponse:
        return JSONResponse({"error": f"the {self.access.get('method', '')!r} method cannot add classes to its "
                                      f"runs"}, status_code=501)

    @app.post("/v1/classes")
    async def add_class(self, request: Request):
        if (denied := self.guard(request)) is not None:
            return denied
        if self.jobs is None:
            return self._no_jobs()
        try:
            obj = await self._json_body(request)
            if "name" not in obj:
                raise RequestError(400, "missing field 'name' (the class name to add)")
        except RequestError as e:
            return error(e)
        out = await self.jobs.submit.remote(obj["name"])
        return refused(out) or JSONResponse(out, status_code=202, headers={"Location": f"/v1/jobs/{out['id']}"})

    @app.get("/v1/jobs")
    async def list_jobs(self, request: Request):
        if (denied := self.reader_guard(request)) is not None:
            return denied
        return self._no_jobs() if self.jobs is None else {"jobs": await self.jobs.list.remote()}

    @app.get("/v1/jobs/{job_id}")
    async def get_job(self, job_id: str, request: Request):
        if (denied := self.reader_guard(request)) is not None:
            return denied
        if self.jobs is None:
            return self._no_jobs()
        out = await self.jobs.get.remote(job_id)
        return refused(out) or out

    @app.delete("/v1/jobs/{job_id}")
    async def cancel_job(self, job_id: str, request: Request):
        if (denied := self.guard(request)) is not None:
            return denied
        if self.jobs is None:
            return self._no_jobs()
        out = await self.jobs.cancel.remote(job_id)
        return refused(out) or JSONResponse(out, status_code=200 if out["status"] == "cancelled" else 202)

    @app.get("/v1/models")
    async def models(self, request: Request):
        from digzsl_ray.live.versions import public

        if (denied := self.reader_guard(request)) is not None:
            return denied
        versions = await asyncio.to_thread(self.versions.list)
        return {"models": [public(v) for v in versions], "active": self.meta["model_version"]}

    @app.post("/v1/models/{version}/activate")
    async def activate(self, version: str, request: Request):
        from digzsl_ray.live.versions import VersionError, public

        if (denied := self.guard(request)) is not None:
            return denied
        try:
            v = await asyncio.to_thread(self.versions.activate, version)
        except VersionError as e:
            return JSONResponse({"error": str(e)}, status_code=404)
        self.active.refresh_now()  # this replica follows at once; the others within 0.2 s
        log.info("model version %s activated", v["id"])
        return {"active": v["id"], "model": public(v)}

    @app.post("/v1/generate")
    async def generate(self, request: Request):
        if (denied := self.guard(request)) is not None:
            return denied
        if self.generator is None:
            return JSONResponse({"error": "generation is not available for this run's method"}, status_code=501)
        meta = self.meta
        try:
            name, n, seed = generate_request(await self._json_body(request), meta["classes"],
                                             self.access["generate_max_n"])
        except RequestError as e:
            return error(e)
        token = meta["tokens"].get(name)  # the served version's token files, read with its metadata
        try:
            pngs = await self.generator.generate.remote({"class": name, "n": n, "seed": seed, "token": token})
        except BACKPRESSURE:
            return error(RequestError(429, "the generation queue is full; retry later"), {"Retry-After": "5"})
        except UNAVAILABLE as e:
            return unavailable("generation", e)
        if "multipart/mixed" in request.headers.get("accept", ""):
            body, mtype = multipart_mixed(pngs)
            return Response(body, media_type=mtype,
                            headers={"X-Model-Version": meta["model_version"], "X-Seed": str(seed)})
        return {"images": [base64.b64encode(b).decode() for b in pngs], "class": name, "seed": seed,
                "model_version": meta["model_version"], "token": token is not None}


def ingress_options(sc: dict) -> dict:
    """The front's replicas and resources: with ``serve.model_in_ingress`` it holds the model, so it
    takes the model's resources and autoscales on its load; else half a CPU, scaled on requests."""
    if sc.get("model_in_ingress", False):
        return {"max_ongoing_requests": 256, "ray_actor_options": {"num_cpus": sc["num_cpus"], "num_gpus": sc["num_gpus"]},
                "autoscaling_config": {"min_replicas": max(1, sc["min_replicas"]), "max_replicas": sc["max_replicas"],
                                       "target_ongoing_requests": sc["target_ongoing_requests"]}}
    return {"max_ongoing_requests": 256, "ray_actor_options": {"num_cpus": 0.5},
            "autoscaling_config": {"min_replicas": 1, "max_replicas": sc["max_replicas"],
                                   "target_ongoing_requests": 64}}
