"""Training on Ray Train: `TorchTrainer` workers run `training.loop.train`, one process per worker.

gloo on CPUs, NCCL on GPUs. Rank 0 writes a checkpoint every `checkpoint_every` steps under
`RUN/checkpoints/` (atomically) and reports it to Ray Train, which keeps `keep_checkpoints` of them
under `RUN/ray/`. When a worker dies, Ray Train restarts the group (`scaling.max_failures` times)
and every worker resumes from the last reported checkpoint; a re-launched run resumes from the
newest checkpoint in `RUN/checkpoints/`. On a cluster, `output_dir` must be storage every node
sees (NFS, a mounted bucket).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import ray.train
import torch
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from data_specs.training import TrainConfig
from training.loop import Progress, train


class LocalSession:
    """One process, no Ray: tests, a quick run on a laptop."""

    def __init__(self, config: TrainConfig, device: str = "cpu") -> None:
        self.rank, self.world_size, self.device = 0, 1, torch.device(device)
        self.run_dir = config.run_dir

    def restored_checkpoint(self) -> Path | None:
        from training.checkpoints import latest_checkpoint

        return latest_checkpoint(self.run_dir / "checkpoints")

    def report(self, metrics: dict, checkpoint: Path | None) -> None:
        pass


class RayTrainSession:
    """A Ray Train worker."""

    def __init__(self, config: TrainConfig) -> None:
        context = ray.train.get_context()
        self.rank, self.world_size = context.get_world_rank(), context.get_world_size()
        self.device = ray.train.torch.get_device()
        self.run_dir = config.run_dir
        self._download = tempfile.TemporaryDirectory(prefix="durian-restore-")

    def restored_checkpoint(self) -> Path | None:
        from training.checkpoints import latest_checkpoint

        reported = ray.train.get_checkpoint()  # set when Ray Train restarted the worker group
        if reported is not None:
            return Path(reported.to_directory(self._download.name))
        return latest_checkpoint(self.run_dir / "checkpoints")

    def report(self, metrics: dict, checkpoint: Path | None) -> None:
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(str(checkpoint)) if checkpoint else None)


def _worker(config: dict) -> None:
    train_config = TrainConfig.model_validate(config)
    train(train_config, RayTrainSession(train_config))


def check_before_launch(config: TrainConfig) -> None:
    """Refuse, before any worker starts, a missing or empty dataset and a config that does not fit it."""
    from training.data import DatasetIndex

    index = DatasetIndex.open(Path(config.data.dataset))
    for run in config.stages:
        index.check_fits(run, config.model_resolution())


def launch(config: TrainConfig) -> ray.train.Result:
    """Train on the Ray cluster this process is connected to (`ray.init` first); returns Ray Train's result."""
    check_before_launch(config)
    scaling = config.scaling
    trainer = TorchTrainer(
        _worker,
        train_loop_config=config.model_dump(mode="json"),
        torch_config=TorchConfig(backend="nccl" if scaling.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=scaling.workers, use_gpu=scaling.use_gpu,
                                     resources_per_worker={"CPU": scaling.cpus_per_worker}),
        run_config=RunConfig(
            name=config.name,
            storage_path=str((config.run_dir / "ray").resolve()),
            checkpoint_config=CheckpointConfig(num_to_keep=config.keep_checkpoints),
            failure_config=FailureConfig(max_failures=scaling.max_failures),
        ),
    )
    return trainer.fit()


def train_locally(config: TrainConfig, device: str = "cpu") -> Progress:
    """The same loop in this process, without Ray."""
    check_before_launch(config)
    return train(config, LocalSession(config, device))
