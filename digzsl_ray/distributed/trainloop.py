"""What every Ray Train job (MiniWorld pretraining, the methods' trainers) shares: building
the ``TorchTrainer`` with checkpointing and retries, and saving / restoring the worker's state
through Ray Train checkpoints (one ``state.pt`` of tensors and plain values, loaded with
``weights_only=True``: nothing is unpickled beyond tensors and builtins).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable


def make_trainer(loop: Callable[[dict], None], config: dict, *, name: str, storage: Path | str, num_workers: int,
                 use_gpu: bool, cpus_per_worker: float, max_failures: int, keep: int = 2, **kwargs: Any):
    """A ``TorchTrainer`` whose run ``name`` under ``storage`` keeps the last ``keep`` checkpoints
    and restarts failed workers up to ``max_failures`` times from the latest one."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from digzsl_ray.logs import train_log_level

    trainer = TorchTrainer(
        loop, train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cpus_per_worker}),
        run_config=RunConfig(name=name, storage_path=str(storage),
                             checkpoint_config=CheckpointConfig(num_to_keep=keep),
                             failure_config=FailureConfig(max_failures=max_failures),
                             # the controller's and worker group's INFO lines only with --verbose
                             logging_config=LoggingConfig(log_level=train_log_level())),
        **kwargs,
    )
    trainer._digzsl_run_path = Path(storage) / name  # what fit() removes once the run has succeeded
    return trainer


def fit(trainer, keep_checkpoints: bool = False):
    """``trainer.fit()``; then, unless ``keep_checkpoints`` (``ray.keep_checkpoints``), the run's
    checkpoints are removed: resume needs them only while the stage runs, and a finished stage's
    outputs are in the run directory (a failed fit raises first and keeps them for the rerun)."""
    import shutil

    result = trainer.fit()
    path = getattr(trainer, "_digzsl_run_path", None)
    if not keep_checkpoints and path is not None:
        shutil.rmtree(path, ignore_errors=True)
    return result


def restore_state() -> dict | None:
    """Inside a worker: the state saved with the latest checkpoint of this run, or None."""
    import ray.train
    import torch

    ckpt = ray.train.get_checkpoint()
    if not ckpt:
        return None
    with ckpt.as_directory() as d:
        return torch.load(Path(d) / "state.pt", map_location="cpu", weights_only=True)


def report_state(metrics: dict, state: dict, rank: int) -> None:
    """Inside a worker: report ``metrics``; rank 0 also checkpoints ``state`` (every rank must call)."""
    import ray.train
    import torch

    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as d:
        torch.save(state, Path(d) / "state.pt")
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
