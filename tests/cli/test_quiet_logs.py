"""Quiet logs by default (digzsl_ray.logs): the filters themselves, and the lines `digzsl run`
prints on a tiny config, quiet and with --verbose (two real CLI runs, stdout + stderr)."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from digzsl_ray import logs

# Lines a default run must not print: open_clip's INFO lines, Ray Train's controller / worker-group
# lines, the known-harmless warnings, Ray core's actor-constructor line from Ray Train's controller.
CHATTER = [
    r"Parsing model identifier", r"Instantiating model architecture", r"Loaded model config",
    r"worker group", r"Requesting resources", r"Setting up process group", r"TrainController",
    r"RayDeprecationWarning", r"exclude_resources", r"Token authentication is enabled",
    r"Progress bars disabled", r"new embeddings will be initialized",
    r"PreemptionWatcher",
]
# The quiet run's lines: about a dozen of the project's own (stage summaries, the results table,
# timings, paths) plus one line per progress bar: 26 measured (40 before the filters).
MAX_QUIET_LINES = 30


@pytest.fixture()
def fresh_logging(monkeypatch):
    """The root logger and the filtered loggers as they were, and no verbose switch."""
    monkeypatch.delenv(logs.VERBOSE_ENV, raising=False)
    names = ["", *logs.CHATTY, *(n for n, _ in logs.HARMLESS)]
    saved = {n: (logging.getLogger(n).level, list(logging.getLogger(n).filters)) for n in names}
    yield
    for n, (level, filters) in saved.items():
        lg = logging.getLogger(n)
        lg.setLevel(level)
        lg.filters[:] = filters


def _record(name: str, level: int, msg: str, path: str = "/x/y.py") -> logging.LogRecord:
    return logging.LogRecord(name, level, path, 1, msg, None, None)


def test_filters_drop_open_clip_info_and_named_warnings_only(fresh_logging):
    logs.quiet_logging()
    logs.quiet_logging()  # idempotent
    root = logging.getLogger()
    assert sum(isinstance(f, logs._DropOpenClipInfo) for f in root.filters) == 1
    clip = "/venv/site-packages/open_clip/factory.py"
    assert not root.filter(_record("root", logging.INFO, "Parsing model identifier", clip))
    assert root.filter(_record("root", logging.WARNING, "No pretrained weights loaded", clip))
    assert root.filter(_record("root", logging.INFO, "our own line"))
    name, _ = logs.HARMLESS[1]
    lg = logging.getLogger(name)
    assert not lg.filter(_record(name, logging.WARNING, "Progress bars disabled. To enable, set ..."))
    assert lg.filter(_record(name, logging.WARNING, "some other warning"))
    assert logging.getLogger("ray.train").getEffectiveLevel() == logging.WARNING


def test_verbose_filters_nothing_and_reaches_the_workers(fresh_logging, monkeypatch):
    monkeypatch.setenv(logs.VERBOSE_ENV, "1")
    root = logging.getLogger()
    before = list(root.filters)
    logs.quiet_logging()
    assert root.filters == before
    env = logs.worker_runtime_env({"A": "1"})
    assert env == {"env_vars": {"A": "1", logs.VERBOSE_ENV: "1"}}
    assert logs.train_log_level() == "INFO"
    monkeypatch.delenv(logs.VERBOSE_ENV)
    env = logs.worker_runtime_env({"A": "1"})
    assert env["worker_process_setup_hook"] == "digzsl_ray.logs.setup_worker_logging"
    assert env["env_vars"]["TQDM_DISABLE"] == "1" and logs.train_log_level() == "WARNING"


def test_bars_follow_tqdm_disable(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert logs.bars(True) and not logs.bars(False)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert not logs.bars(True)


def _run(base: Path, out: str, *extra: str, command: str = "run") -> tuple[int, list[str]]:
    from tiny import tiny_overrides

    sets = [a for o in tiny_overrides(base / "models" / "sd", base / "models" / "clip", base / "data")
            for a in ("--set", o)]
    env = {k: v for k, v in os.environ.items()
           if k not in ("TQDM_DISABLE", logs.VERBOSE_ENV, "RAY_DEDUP_LOGS_SKIP_REGEX", "RAY_ADDRESS")}
    env["HF_HUB_OFFLINE"] = "1"
    r = subprocess.run([sys.executable, "-m", "digzsl_ray.cli", command, *sets, "--out", str(base / out), *extra],
                       capture_output=True, env=env, timeout=900)
    return r.returncode, _terminal_lines(r.stdout) + _terminal_lines(r.stderr)


def _terminal_lines(raw: bytes) -> list[str]:
    """Lines as a terminal (or `wc -l`) counts them: a progress bar redraws its own line with
    carriage returns, which text-mode pipes would turn into newlines."""
    text = raw.decode("utf-8", "replace")
    return text.rstrip("\n").split("\n") if text.strip() else []


@pytest.mark.ray
@pytest.mark.slow
def test_digzsl_run_prints_few_lines_and_verbose_prints_everything(tmp_path):
    from tiny import make_tiny_dataset, make_tiny_models

    make_tiny_models(tmp_path / "models")
    make_tiny_dataset(tmp_path / "data")
    rc, quiet = _run(tmp_path, "quiet")
    text = "\n".join(quiet)
    assert rc == 0, text[-3000:]
    found = [p for p in CHATTER if re.search(p, text)]
    assert not found, f"chatter in a default run: {found}\n{text}"
    assert len(quiet) <= MAX_QUIET_LINES, f"{len(quiet)} lines:\n{text}"
    assert any(ln.startswith("variant ") for ln in quiet) and any("metrics:" in ln for ln in quiet)

    # --verbose on one stage that loads CLIP and starts a Ray Train worker group (the CDM, redone on
    # a copy of the finished run): a second whole pipeline would cost two minutes of CI
    shutil.copytree(tmp_path / "quiet", tmp_path / "verbose")
    shutil.rmtree(tmp_path / "verbose" / "cdm")
    rc, loud = _run(tmp_path, "verbose", "--verbose", command="train-cdm")
    text = "\n".join(loud)
    assert rc == 0, text[-3000:]
    assert len(loud) > 10, f"{len(loud)} lines with --verbose"
    for pattern in (r"Parsing model identifier", r"worker group"):
        assert re.search(pattern, text), f"--verbose hides {pattern!r}"
