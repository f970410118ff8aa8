"""Shared test setup: offline hub, quiet progress bars, one torch thread per test process."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    if not torch.cuda.is_available():
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip_gpu)


# The exit status of the session, kept for the hard exit below.
_SESSION: dict = {}


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    _SESSION["exitstatus"] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """End the process with pytest's exit status once everything is reported, skipping the
    interpreter's teardown. CI once saw ``432 passed`` followed by a segmentation fault of the
    finished process (exit 139 -> make exit 2): native extension threads (Ray's core worker, gRPC,
    Arrow, torch's pools) torn down in an arbitrary order at interpreter exit. No test result can
    change after this point; Ray is shut down first so no cluster outlives the run.
    ``DIGZSL_TEST_SOFT_EXIT=1`` keeps the normal teardown (to debug such a crash)."""
    import sys

    if "exitstatus" not in _SESSION or os.environ.get("DIGZSL_TEST_SOFT_EXIT") == "1":
        return
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except Exception:  # noqa: BLE001 - the exit status must survive any shutdown trouble
        pass
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_SESSION["exitstatus"])
