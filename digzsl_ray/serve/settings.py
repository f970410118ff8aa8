"""The serving settings of one application: the run's ``serve`` config with the overrides that
``build_app`` args may carry (``serve run`` / ``serve deploy`` / ``digzsl serve``), validated like the
config. Ray-free."""

from __future__ import annotations

# serve.* keys that build_app args may override (generate_*: methods that draw images on request)
OVERRIDABLE = ("max_batch_size", "batch_wait_timeout_s", "max_body_bytes", "max_pixels", "default_k", "min_replicas",
               "max_replicas", "num_cpus", "num_gpus", "body_timeout_s", "max_header_bytes", "max_jpeg_scans",
               "max_body_reads_per_client", "graceful_shutdown_s", "docs", "api_token_file", "protect_classify", "model_in_ingress",
               "generate_max_n", "generate_max_queued", "generate_max_batch_size", "generate_min_replicas",
               "generate_max_replicas", "generate_num_gpus", "generate_num_cpus", "generate_downscale_delay_s")
# what the HTTP front enforces on every request (docs/live.md says what each protects)
LIMIT_KEYS = ("max_body_bytes", "max_pixels", "default_k", "body_timeout_s", "max_header_bytes", "max_jpeg_scans",
              "max_body_reads_per_client")


def app_settings(args: dict) -> tuple[dict, dict]:
    """``(run meta, serve settings)`` for ``build_app(args)``. Overrides arrive as strings from
    ``serve run``: "false" is false, and an out-of-range value is an error naming the key. The
    settings are the run method's ``serve`` section (DIG-ZSL's adds its Generator's ``generate_*``)."""
    from digzsl_ray.config import validate_config
    from digzsl_ray.methods import get_method
    from digzsl_ray.serve.rundir import load_run_meta

    if "run_dir" not in args:
        raise ValueError("build_app args: missing 'run_dir' (the finished run directory to serve)")
    meta = load_run_meta(args["run_dir"])
    serve_config = get_method(meta["method"]).config.model_fields["serve"].annotation
    overrides = {k: args[k] for k in OVERRIDABLE if k in args}
    sc = validate_config({**meta["serve"], **overrides}, serve_config, "build_app args").model_dump()
    sc["max_replicas"] = max(sc["max_replicas"], sc["min_replicas"])
    return meta, sc


def shutdown_options(sc: dict) -> dict:
    """How long a stopping replica of any deployment waits for its requests in flight."""
    return {"graceful_shutdown_timeout_s": sc["graceful_shutdown_s"],
            "graceful_shutdown_wait_loop_s": min(1.0, sc["graceful_shutdown_s"])}
