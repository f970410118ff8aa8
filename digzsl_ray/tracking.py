"""Experiment tracking of ``digzsl run``: ``tracking.backend: none | mlflow | tensorboard`` (docs/tracking.md).

The driver logs, after each stage has completed (or was skipped as complete), what that stage wrote
into the run directory: :meth:`digzsl_ray.stages.contract.Stage.curves` reads its per-epoch and
per-update curves back from its own output files. Workers never talk to the tracker, so a run on a
cluster needs the tracker reachable from the driver only, a resumed run still logs every curve, and
a tracker that fails mid-run costs a warning, never an output.

One tracked run per pipeline invocation: the parent holds the resolved config (flattened to
``section.key`` parameters), the headline metrics and the artefacts (``metrics.json``,
``report.html``, ``config.yaml``); a nested run per stage holds its curves and wall time, and a
nested run per ablation variant holds that variant's final metrics. MLflow nests through the
``mlflow.parentRunId`` tag; TensorBoard through sub-folders (``<run>/stages/<stage>``,
``<run>/variants/<variant>``), which it shows as runs of their own.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterable

from digzsl_ray.errors import UserError

log = logging.getLogger("digzsl")

Series = dict[str, list[tuple[int, float]]]  # series name -> [(step, value), ...]

MAX_PARAM_CHARS = 6000  # MLflow's limit on a parameter value
_BAD_KEY = re.compile(r"[^\w\-. /:]")


# 1. Curves: what a stage's history files become --------------------------------------------------
def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def series_from_records(records: Iterable, step_key: str, prefix: str = "", where=None) -> Series:
    """Per-step records (``[{"epoch": 0, "loss": 0.7, "val_acc": 90.7}, ...]``) as one series per numeric
    key (``{prefix + "loss": [(0, 0.7)], ...}``); records without ``step_key`` (markers such as
    ``{"resumed_at_epoch": 1}``) or not matching ``where`` are left out, nested dicts become
    ``prefix + "key/subkey"``."""
    out: Series = {}
    for r in records or ():
        if not isinstance(r, dict) or _number(r.get(step_key)) is None or (where is not None and not where(r)):
            continue
        step = int(r[step_key])
        for k, v in r.items():
            if k == step_key:
                continue
            if isinstance(v, dict):
                for kk, vv in v.items():
                    if _number(vv) is not None:
                        out.setdefault(f"{prefix}{k}/{kk}", []).append((step, float(vv)))
            elif _number(v) is not None:
                out.setdefault(prefix + k, []).append((step, float(v)))
    return out


def series_from_values(values: Iterable, name: str, start: int = 0) -> Series:
    """A plain list of numbers (a loss per update) as one series, steps counted from ``start``."""
    pts = [(start + i, float(v)) for i, v in enumerate(values or ()) if _number(v) is not None]
    return {name: pts} if pts else {}


def numeric_leaves(data: Any, prefix: str = "", skip: tuple[str, ...] = ()) -> dict[str, float]:
    """Every number in a nested dict as ``{"a/b/c": value}`` (lists and text left out)."""
    out: dict[str, float] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            if k in skip:
                continue
            key = f"{prefix}{k}"
            if isinstance(v, dict):
                out.update(numeric_leaves(v, key + "/"))
            elif _number(v) is not None:
                out[key] = float(v)
    return out


def flatten_params(data: Any, prefix: str = "") -> dict[str, str]:
    """The resolved config as ``{"evaluate.lambda_max": "1.0", ...}``: sections flattened, lists as JSON."""
    out: dict[str, str] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten_params(v, key + "."))
        else:
            text = v if isinstance(v, str) else json.dumps(v)
            out[key] = text if len(text) <= MAX_PARAM_CHARS else text[:MAX_PARAM_CHARS - 3] + "..."
    return out


def _cut(e: BaseException, limit: int = 200) -> str:
    """An exception's first line, cut to ``limit`` characters (one-line warnings)."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text[:limit]}" if text else type(e).__name__


def metric_key(name: str) -> str:
    """A series name MLflow accepts (letters, digits, ``_ - . / : `` and space; no empty path parts)."""
    parts = [p.strip() for p in _BAD_KEY.sub("_", name).split("/")]
    key = "/".join("_" if p in (".", "..") else p for p in parts if p)
    return key[:250] or "value"


# 2. Backends -----------------------------------------------------------------------------------------
class MlflowBackend:
    """MLflow through its own client (:class:`mlflow.tracking.MlflowClient`), no global active run."""

    def __init__(self, uri: str, experiment: str, artifact_location: str | None = None):
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # offline: MLflow 3 reports usage by default
        from mlflow.tracking import MlflowClient

        self.uri, self.client = uri, MlflowClient(tracking_uri=uri)
        exp = self.client.get_experiment_by_name(experiment)
        self.experiment_id = exp.experiment_id if exp is not None else self.client.create_experiment(
            experiment, artifact_location=artifact_location)
        self.run_id = ""

    def where(self) -> str:
        return f"MLflow {self.uri}, experiment {self.experiment_id}, run {self.run_id}"

    def _log(self, run_id: str, series: Series, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(metric_key(k), v, now, 0) for k, v in values.items()]
        metrics += [Metric(metric_key(name), v, now, step) for name, pts in series.items() for step, v in pts]
        for i in range(0, len(metrics), 1000):  # MLflow's batch limit
            self.client.log_batch(run_id, metrics=metrics[i:i + 1000])

    def start(self, name: str, params: dict[str, str], tags: dict[str, str]) -> None:
        from mlflow.entities import Param

        self.run_id = self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id
        items = [Param(k[:250], v) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def child(self, name: str, tags: dict[str, str], series: Series, values: dict[str, float]) -> None:
        tags = {**tags, "mlflow.parentRunId": self.run_id}
        run_id = self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id
        try:
            self._log(run_id, series, values)
        finally:
            self.client.set_terminated(run_id, "FINISHED")

    def values(self, values: dict[str, float]) -> None:
        self._log(self.run_id, {}, values)

    def artifacts(self, paths: list[Path]) -> None:
        for p in paths:
            self.client.log_artifact(self.run_id, str(p))

    def end(self, status: str) -> None:
        if self.run_id:  # (a run that failed before it began has nothing to end)
            self.client.set_terminated(self.run_id, status)


class TensorBoardBackend:
    """Event files through tensorboardX's ``SummaryWriter`` (installed with Ray Train): one folder per
    pipeline run, nested runs as sub-folders."""

    def __init__(self, log_dir: Path, run_name: str):
        from digzsl_ray.slug import slugify

        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        self.root = Path(log_dir) / f"{stamp}-{slugify(run_name) or 'run'}"
        k = 1
        while self.root.exists():  # two invocations within one second
            k += 1
            self.root = Path(log_dir) / f"{stamp}-{slugify(run_name) or 'run'}-{k}"
        self.writer = None

    def where(self) -> str:
        return f"TensorBoard {self.root}"

    @staticmethod
    def _writer(path: Path):
        from tensorboardX import SummaryWriter

        return SummaryWriter(logdir=str(path))

    def start(self, name: str, params: dict[str, str], tags: dict[str, str]) -> None:
        self.writer = self._writer(self.root)
        rows = "\n".join(f"| {k} | {v.replace('|', '/')} |" for k, v in {**tags, **params}.items())
        self.writer.add_text("config", "| key | value |\n|---|---|\n" + rows, 0)

    def child(self, name: str, tags: dict[str, str], series: Series, values: dict[str, float]) -> None:
        w = self._writer(self.root / name)
        try:
            for k, v in values.items():
                w.add_scalar(k, v, 0)
            for k, pts in series.items():
                for step, v in pts:
                    w.add_scalar(k, v, step)
            if tags:
                w.add_text("tags", "\n".join(f"{k}: {v}" for k, v in tags.items()), 0)
        finally:
            w.close()

    def values(self, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, 0)

    def artifacts(self, paths: list[Path]) -> None:
        self.writer.add_text("artifacts", "\n".join(str(p) for p in paths), 0)  # the files stay in the run dir

    def end(self, status: str) -> None:
        if self.writer is not None:
            self.writer.add_text("status", status, 0)
            self.writer.close()


# 3. The driver's side -------------------------------------------------------------------------------
class Tracking:
    """What :func:`digzsl_ray.stages.runner.run_pipeline` calls. Every call is guarded: a tracker that
    fails mid-run is reported once, in one line, and dropped; the pipeline and its outputs go on."""

    def __init__(self, backend=None):
        self.backend = backend

    @property
    def active(self) -> bool:
        return self.backend is not None

    def _guard(self, what: str, fn, *args) -> None:
        if self.backend is None:
            return
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 (a tracker must never fail the run)
            log.warning("tracking: %s failed (%s); the run goes on without tracking", what, _cut(e))
            self.backend = None

    def begin(self, ctx) -> None:
        cfg = ctx.cfg
        tags = {"digzsl.method": ctx.method.name, "digzsl.run_dir": str(ctx.rd.root), "digzsl.dataset": ctx.split.name}
        self._guard("starting the run", self.backend and self.backend.start, cfg.name,
                    flatten_params(cfg.model_dump(mode="json")), tags)
        if self.backend is not None:
            log.info("tracking: %s", self.backend.where())

    def stage(self, stage, ctx) -> None:
        """Log one stage's curves (read back from its outputs) and wall time as a nested run."""
        if self.backend is None:
            return
        try:
            series = stage.curves(ctx) or {}
        except Exception as e:  # noqa: BLE001 (a curve that cannot be read is not worth the run)
            log.warning("tracking: curves of %s unreadable (%s)", stage.name, _cut(e))
            series = {}
        timing = json.loads(ctx.rd.timing.read_text()) if ctx.rd.timing.is_file() else {}
        values = {"wall_s": float(timing[stage.name])} if _number(timing.get(stage.name)) is not None else {}
        skipped = stage.name in ctx.state.get("skipped_stages", ())
        tags = {"digzsl.kind": "stage", "digzsl.stage": stage.name,
                "digzsl.status": "complete, skipped" if skipped else "ran"}
        self._guard(f"logging stage {stage.name}", self.backend.child, f"stages/{stage.name}", tags, series, values)

    def finish(self, ctx, metrics: dict) -> None:
        """The final metrics per variant (nested runs), the headline on the parent, the artefacts; the end."""
        if self.backend is None:
            return
        ablation = metrics.get("ablation") or {}
        known = ctx.method.variants
        order = [v for v in known if v in ablation] + [v for v in ablation if v not in known]
        for v in order:
            tags = {"digzsl.kind": "variant", "digzsl.variant": v, "digzsl.main": str(v == ctx.method.main_variant)}
            self._guard(f"logging variant {v}", self.backend.child, f"variants/{v}", tags, {},
                        numeric_leaves(ablation[v]))
        self._guard("logging the headline", self.backend.values, numeric_leaves(metrics, skip=("ablation",)))
        if ctx.cfg.tracking.artifacts:
            paths = [p for p in (ctx.rd.metrics, ctx.rd.report, ctx.rd.config) if p.is_file()]
            self._guard("logging the artefacts", self.backend.artifacts, paths)
        self.end("FINISHED")

    def end(self, status: str) -> None:
        """End the tracked run (``FINISHED``, ``FAILED`` or ``KILLED``)."""
        self._guard("ending the run", self.backend and self.backend.end, status)
        self.backend = None


def _probe(uri: str, timeout: float = 5.0) -> None:
    """A UserError unless an HTTP tracking server answers at ``uri`` (any HTTP answer counts)."""
    url = uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1"
    try:
        urllib.request.urlopen(url, timeout=timeout).close()  # noqa: S310 (the configured tracker)
    except urllib.error.HTTPError:
        return  # it answered (401, 404, ...): the client says what is wrong when it logs
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise UserError(f"tracking.uri {uri}: no MLflow server answers ({reason}); start it, fix tracking.uri, "
                        f"or set tracking.backend=none") from None


def open_tracking(cfg, out: str | Path) -> Tracking:
    """The run's tracker, checked before any work: a missing library or an unreachable server is a
    :class:`UserError` now, not a lost hour later."""
    t = cfg.tracking
    if t.backend == "none":
        return Tracking()
    out = Path(out).resolve()
    if t.backend == "tensorboard":
        try:
            import tensorboardX  # noqa: F401
        except ImportError:
            raise UserError("tracking.backend tensorboard needs tensorboardX: pip install -e .[tracking]") from None
        log_dir = Path(t.log_dir).expanduser() if t.log_dir else out / "tensorboard"
        return Tracking(TensorBoardBackend(log_dir, cfg.name))
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise UserError("tracking.backend mlflow needs MLflow: pip install -e .[tracking]") from None
    uri, artifacts = t.uri, None
    if not uri:
        out.mkdir(parents=True, exist_ok=True)
        uri, artifacts = f"sqlite:///{out / 'mlflow.db'}", (out / "mlartifacts").as_uri()
    elif uri.startswith(("http://", "https://")):
        _probe(uri)
    try:
        return Tracking(MlflowBackend(uri, t.experiment or cfg.name, artifacts))
    except Exception as e:  # noqa: BLE001 (any client error here is a setting to fix)
        raise UserError(f"tracking.uri {uri}: MLflow refused it ({_cut(e, 300)})") from None
