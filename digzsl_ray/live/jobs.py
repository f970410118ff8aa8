"""Add-class jobs: their state in the run directory, a queue that runs one at a time, resume.

```
OUT/jobs/<id>/state.json   id, name, status, stage, progress, eta_s, stages (per stage: status,
                           seconds, progress), parent, version, metrics, error, created/started/ended
OUT/jobs/<id>/...          what the job's stages wrote (each stage skips itself when its output is there)
```
``eta_s`` is the current stage's remaining time from its progress plus the median time of each
later stage in this run directory's finished jobs (``eta_basis``: ``full``, or ``partial`` when a
later stage has no finished job to go by, so ``eta_s`` is a lower bound).
``status``: ``queued`` -> ``running`` -> ``succeeded`` (a new version, activated unless
``live.activate`` is off) | ``rejected`` (the gate refused it; its figures in ``metrics``) |
``failed`` (``error`` says why) | ``cancelled`` (``DELETE /v1/jobs/{id}``: a queued job never
starts; a running one stops at its next progress report; either way its partial outputs are
removed, only state.json stays). A service that starts finds the queued and running jobs of its run
directory and runs them again; the finished stages are skipped, so a job resumes where it was.

A running job whose progress has not moved for ``stall_s`` seconds while the cluster has no free CPU
gets ``waiting`` in its state (``GET /v1/jobs/{id}``): what it waits for and since when (its Ray
tasks are pending; an idle serving replica may hold the CPUs until Serve scales it down). The
next progress report removes it.
"""

from __future__ import annotations

import logging
import queue
import secrets
import threading
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

from digzsl_ray.errors import UserError
from digzsl_ray.io import read_json, write_json
from digzsl_ray.slug import slugify

log = logging.getLogger("digzsl")

JOBS = "jobs"
STATE = "state.json"
TERMINAL = ("succeeded", "rejected", "failed", "cancelled")


class JobCancelled(Exception):
    """Raised inside a running job at its next progress report after ``DELETE /v1/jobs/{id}``."""


class JobError(UserError):
    """An add-class request that cannot be queued: ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class JobStore:
    """The jobs of one run directory (``OUT/jobs``)."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.root = self.run_dir / JOBS
        self._lock = threading.Lock()

    def dir(self, job_id: str) -> Path:
        return self.root / job_id

    def create(self, name: str, stages: tuple[str, ...]) -> dict:
        job_id = f"job-{time.strftime('%Y%m%d-%H%M%S')}-{slugify(name)[:24]}-{secrets.token_hex(3)}"
        state = {"id": job_id, "name": name, "status": "queued", "stage": None, "progress": 0.0, "eta_s": None,
                 "stages": {s: {"status": "pending", "seconds": None, "progress": 0.0} for s in stages},
                 "parent": None, "version": None, "metrics": {}, "error": None,
                 "created": time.time(), "started": None, "ended": None}
        self.dir(job_id).mkdir(parents=True, exist_ok=True)
        self.save(state)
        return state

    def save(self, state: dict) -> None:
        with self._lock:
            write_json(self.dir(state["id"]) / STATE, state)

    def get(self, job_id: str) -> dict:
        from digzsl_ray.errors import short
        from digzsl_ray.live.names import valid_id

        if not valid_id(job_id):
            raise JobError(404, f"no job {short(job_id, 80)}")
        p = self.dir(job_id) / STATE
        if not p.is_file():
            raise JobError(404, f"no job {short(job_id, 80)}")
        return read_json(p)

    def all(self) -> list[dict]:
        out = []
        if self.root.is_dir():
            for d in self.root.iterdir():
                try:
                    out.append(read_json(d / STATE))
                except (OSError, ValueError):
                    continue
        return sorted(out, key=lambda s: s.get("created") or 0)

    def unfinished(self) -> list[dict]:
        return [s for s in self.all() if s.get("status") not in TERMINAL]

    def typical_seconds(self) -> dict[str, float]:
        """Per stage, the median wall time of finished jobs (for ETAs)."""
        import statistics

        seen: dict[str, list[float]] = {}
        for s in self.all():
            if s.get("status") in ("succeeded", "rejected"):
                for name, st in s.get("stages", {}).items():
                    if st.get("seconds") is not None:
                        seen.setdefault(name, []).append(float(st["seconds"]))
        return {k: statistics.median(v) for k, v in seen.items()}


class Reporter:
    """What a job's stages call: ``with rep.stage("train"): ... rep.progress(0.4)``. Keeps
    state.json current (stage, progress, ETA) and the stage timings."""

    def __init__(self, store: JobStore, state: dict, metrics=None, on_change=None, cancelled=None):
        self.store, self.state, self.metrics, self.on_change = store, state, metrics, on_change
        self.cancelled = cancelled or (lambda: False)
        self._typical = store.typical_seconds()
        self._t_stage = time.time()
        self._last_write = 0.0

    def done(self, stage: str) -> bool:
        return self.state["stages"].get(stage, {}).get("status") == "done"

    def check(self) -> None:
        """Raise :class:`JobCancelled` when the job was cancelled (every stage and progress call checks)."""
        if self.cancelled():
            raise JobCancelled(self.state["id"])

    @contextmanager
    def stage(self, name: str):
        self.check()
        st = self.state["stages"].setdefault(name, {"status": "pending", "seconds": None, "progress": 0.0})
        self.state["stage"] = name
        st["status"], st["progress"] = "running", 0.0
        self._t_stage = time.time()
        self._write(force=True)
        yield self
        st["status"], st["progress"] = "done", 1.0
        st["seconds"] = round(time.time() - self._t_stage, 3)
        if self.metrics is not None:
            self.metrics.stage_seconds(name, st["seconds"])
        self._write(force=True)

    def progress(self, fraction: float, note: str | None = None) -> None:
        self.check()
        st = self.state["stages"][self.state["stage"]]
        st["progress"] = round(min(max(float(fraction), 0.0), 1.0), 4)
        if note is not None:
            st["note"] = str(note)[:200]
        self._write()

    def _eta(self) -> tuple[float | None, str]:
        """Seconds left and their basis: ``full`` (every remaining stage estimated: the current one
        from its progress, later ones from the median of finished jobs), ``partial`` (a lower bound:
        some later stage has no finished job to go by yet) or ``none``."""
        stages, cur = self.state["stages"], self.state["stage"]
        names = list(stages)
        if cur not in names:
            return None, "none"
        st = stages[cur]
        elapsed = time.time() - self._t_stage
        if st["progress"] > 0.02:
            left = elapsed * (1 - st["progress"]) / st["progress"]
        elif cur in self._typical:
            left = max(self._typical[cur] - elapsed, 0.0)
        else:
            return None, "none"
        basis = "full"
        for later in names[names.index(cur) + 1:]:
            if stages[later]["status"] == "done":
                continue
            if later not in self._typical:
                basis = "partial"
                continue
            left += self._typical[later]
        return round(left, 1), basis

    def _write(self, force: bool = False) -> None:
        now = time.time()
        if not force and now - self._last_write < 0.5:
            return
        self._last_write = now
        self.state.pop("waiting", None)  # moving again
        stages = self.state["stages"]
        self.state["progress"] = round(sum(s.get("progress", 0.0) for s in stages.values()) / max(len(stages), 1), 4)
        self.state["eta_s"], self.state["eta_basis"] = self._eta()
        self.store.save(self.state)
        if self.on_change is not None:
            self.on_change(self.state)


def remove_outputs(store: JobStore, job_id: str) -> None:
    """Everything a job wrote except its state.json (a cancelled job leaves no partial outputs)."""
    import shutil

    d = store.dir(job_id)
    if d.is_dir():
        for p in d.iterdir():
            if p.name != STATE:
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def run_job(store: JobStore, state: dict, add_class, metrics=None, cancelled=None) -> dict:
    """Run (or resume) one job to its end; returns its final state. Never raises for the job's own
    failure: that becomes ``status: failed`` with the error (``cancelled`` when ``cancelled()`` said so)."""
    state.update(status="running", started=state.get("started") or time.time(), error=None)
    rep = Reporter(store, state, metrics, cancelled=cancelled)
    store.save(state)
    try:
        rep.check()
        result = add_class(store.run_dir, store.dir(state["id"]), state["name"], rep)
        state.update(status=result["status"], version=result.get("version"), metrics=result.get("metrics", {}),
                     parent=result.get("parent"), reason=result.get("reason"))
    except JobCancelled:
        state.update(status="cancelled", error=None)
        remove_outputs(store, state["id"])
        log.info("add-class job %s (%s): cancelled", state["id"], state["name"])
    except Exception as e:  # noqa: BLE001 - a job's failure is its state, not the service's
        state.update(status="failed", error=f"{type(e).__name__}: {str(e)[:500]}")
        log.error("add-class job %s failed: %s\n%s", state["id"], state["error"], traceback.format_exc()[-2000:])
    state.update(ended=time.time(), eta_s=0.0 if state["status"] == "succeeded" else None, stage=None)
    store.save(state)
    if metrics is not None:
        metrics.job_ended(state["status"])
    return state


class JobRunner:
    """One worker thread running the queued jobs of a run directory in order (one at a time: two
    add requests at once are queued, never run side by side over the same version chain)."""

    def __init__(self, run_dir: str | Path, add_class, stages: tuple[str, ...], known_names, queue_size: int = 8,
                 metrics=None, stall_s: float = 30.0, free_cpus=None):
        self.store = JobStore(run_dir)
        self.stall_s = stall_s
        self.free_cpus = free_cpus or (lambda: None)  # () -> (free, total) CPUs, or None when unknown
        self.add_class, self.stages, self.known_names = add_class, stages, known_names
        self.metrics, self.queue_size = metrics, queue_size
        self._q: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._pending: dict[str, str] = {}  # job id -> class name (queued or running)
        self._cancel: set[str] = set()  # ids asked to stop
        self._running: str | None = None
        for s in self.store.unfinished():  # resume after a restart, oldest first
            log.info("add-class job %s (%s): resuming from its %s stage", s["id"], s["name"], s.get("stage") or "first")
            s["status"] = "queued"
            self.store.save(s)
            self._pending[s["id"]] = s["name"]
            self._q.put(s["id"])
        self._thread = threading.Thread(target=self._loop, name="digzsl-add-class", daemon=True)
        self._thread.start()
        self._watch = threading.Thread(target=self._watchdog, name="digzsl-add-class-watch", daemon=True)
        self._watch.start()

    def check_stalled(self) -> dict | None:
        """Mark the running job ``waiting`` when its state has not changed for ``stall_s`` and no CPU is
        free; the state written, or None."""
        with self._lock:
            job_id = self._running
        if job_id is None:
            return None
        p = self.store.dir(job_id) / STATE
        try:
            mtime = p.stat().st_mtime
            state = read_json(p)
        except (OSError, ValueError):
            return None
        idle = time.time() - mtime
        if state.get("status") != "running" or idle < self.stall_s or "waiting" in state:
            return None
        cpus = self.free_cpus()
        if cpus is None or cpus[0] >= 1:
            return None
        state["waiting"] = {"for": "a free CPU", "since": round(mtime, 3),
                            "detail": f"no progress for {idle:.0f} s and 0 of the cluster's {cpus[1]:g} CPUs free: "
                                      "the job's Ray tasks are pending until one frees (an idle serving replica holds "
                                      "its CPU until Serve scales it down, serve.generate_downscale_delay_s)"}
        if p.stat().st_mtime != mtime:  # the job moved meanwhile: its own write wins
            return None
        self.store.save(state)
        log.warning("add-class job %s: %s", job_id, state["waiting"]["detail"])
        return state

    def _watchdog(self) -> None:
        while True:
            time.sleep(max(1.0, self.stall_s / 3))
            try:
                self.check_stalled()
            except Exception:  # noqa: BLE001 - a probe must never stop the runner
                log.debug("add-class watchdog", exc_info=True)

    def submit(self, name: str, name_problem) -> dict:
        """Queue a job for ``name``: 400 for a bad name, 409 for a known or pending one, 429 when full."""
        from digzsl_ray.live.names import same_class

        problem = name_problem(name)
        if problem:
            raise JobError(400, problem)
        from digzsl_ray.live.versions import VersionError

        try:
            known = self.known_names()
        except VersionError as e:  # active.json names an unknown version, or is damaged
            raise JobError(409, f"cannot add a class while the served version is unreadable: {e}") from None
        with self._lock:
            if any(same_class(name, n) for n in known):
                raise JobError(409, f"class {name!r} is already known to the served model")
            for jid, n in self._pending.items():
                if same_class(name, n):
                    raise JobError(409, f"class {name!r} is already being added by job {jid}")
            if len(self._pending) >= self.queue_size:
                raise JobError(429, f"{len(self._pending)} add-class jobs are queued; retry later")
            state = self.store.create(name, self.stages)
            self._pending[state["id"]] = name
        self._q.put(state["id"])
        return state

    def cancel(self, job_id: str) -> dict:
        """Cancel a queued job (it never starts) or a running one (it stops at its next progress
        report); its partial outputs are removed. 404 for an unknown job, 409 for a finished one."""
        state = self.store.get(job_id)
        with self._lock:
            if state.get("status") in TERMINAL or job_id not in self._pending:
                raise JobError(409, f"job {job_id} is {state.get('status')}; only queued or running jobs can be "
                                    f"cancelled")
            self._cancel.add(job_id)
            if self._running != job_id:  # queued: finished here, the worker thread skips it
                self._pending.pop(job_id, None)
                state.update(status="cancelled", ended=time.time(), eta_s=None, stage=None)
                self.store.save(state)
                remove_outputs(self.store, job_id)
                return state
        state["status"] = "cancelling"
        return state

    def _loop(self) -> None:
        while True:
            job_id = self._q.get()
            try:
                with self._lock:
                    if job_id in self._cancel and job_id not in self._pending:
                        continue  # cancelled while queued
                    self._running = job_id
                run_job(self.store, self.store.get(job_id), self.add_class, self.metrics,
                        cancelled=lambda j=job_id: j in self._cancel)
            except Exception:  # noqa: BLE001 - the loop must survive anything
                log.exception("add-class job %s: runner error", job_id)
            finally:
                with self._lock:
                    self._pending.pop(job_id, None)
                    self._cancel.discard(job_id)
                    self._running = None

    def idle(self) -> bool:
        with self._lock:
            return not self._pending
