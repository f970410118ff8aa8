"""``digzsl serve --run OUT``: the application on a local (or ``RAY_ADDRESS``) cluster until Ctrl-C or
SIGTERM."""

import logging
from pathlib import Path

from digzsl_ray.serve.app import build_app
from digzsl_ray.serve.rundir import load_run_meta, run_config
from digzsl_ray.serve.settings import OVERRIDABLE

log = logging.getLogger("digzsl")


def serve_blocking(args) -> int:
    """``digzsl serve --run OUT``: a local (or RAY_ADDRESS) cluster, the app on host:port, until Ctrl-C
    or SIGTERM; either shuts down Serve (proxy and replicas) and the cluster it started, exit code 0."""
    import os
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
    if cfg.serve.direct_ingress:
        import ray

        if os.environ.get("RAY_ADDRESS") and os.environ.get("RAY_SERVE_ENABLE_DIRECT_INGRESS") != "1":
            log.warning("serve.direct_ingress: joining the cluster at RAY_ADDRESS; it serves directly only if every "
                        "node was started with RAY_SERVE_ENABLE_DIRECT_INGRESS=1")
        if not ray.is_initialized():
            os.environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"] = "1"  # read by the Serve processes the cluster starts
    init_ray()
    serve.start(http_options={"host": host, "port": port, "request_timeout_s": cfg.serve.request_timeout_s})

    def on_sigterm(signum, frame):  # `kill`, systemd, Kubernetes: stop like Ctrl-C, replicas included
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)  # after ray.init, which installs a handler of its own
    app_args = {"run_dir": str(Path(args.run).resolve())} | {k: v for k, v in cfg.serve.model_dump().items()
                                                             if k in OVERRIDABLE}
    try:  # a signal may come while the replicas still start: shut down all the same
        serve.run(build_app(app_args), name="digzsl", route_prefix="/")
        print(f"serving {args.run} on http://{host}:{port}  (POST /v1/classify, GET /v1/classes, GET /healthz; "
              f"POST /v1/classes, /v1/generate, GET /v1/jobs/<id>, /v1/models: docs/live.md); Ctrl-C to stop",
              flush=True)
        if cfg.serve.direct_ingress:
            print("direct ingress: the ingress replicas listen on their own ports from "
                  f"{os.environ.get('RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT', '30000')} (docs/live.md)", flush=True)
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
