"""The train state: one typed record of where a run is, and the manager that saves and restores it.

Every fact a resume needs lives here once: `TrainState` (stage, steps, data position, seed, whether the model
has its motion modules) goes to a checkpoint's state.json; the weights (fp32 masters of the trained ones), the
optimiser, the LR schedule and the EMA go to the checkpoint's files (`training.checkpoints`), through
`CheckpointManager` only. The pattern is torchtitan's `Trainer.state_dict` and `CheckpointManager`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers.training_utils import EMAModel
from torch import nn
from torch.distributed.optim import ZeroRedundancyOptimizer

from training.checkpoints import latest_checkpoint, load_checkpoint, save_checkpoint
from training.precision import MasterWeights

__all__ = ["CheckpointManager", "StageParts", "TrainState"]


@dataclass
class TrainState:
    """Where a run is.

    stage_index: the stage being trained (index into `TrainConfig.stages`; len(stages) when all are done).
    stage_step: optimiser steps done in that stage.
    global_step: optimiser steps done over all stages (the logs' x axis, the checkpoints' names).
    batches: batches this rank took from the stage's loader (the loader resumes there).
    seed: the run's base seed: step s on rank r draws from a generator seeded by (seed, r, s).
    motion_modules: whether the model holds its motion modules (inserted when stage 2 starts).
    """

    stage_index: int = 0
    stage_step: int = 0
    global_step: int = 0
    batches: int = 0
    seed: int = 0
    motion_modules: bool = False

    def advance(self, batches: int) -> None:
        """One optimiser step done, after taking `batches` batches from the loader."""
        self.stage_step += 1
        self.global_step += 1
        self.batches += batches

    def next_stage(self) -> None:
        self.stage_index += 1
        self.stage_step = 0
        self.batches = 0

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainState:
        names = {f.name for f in dataclasses.fields(cls)}
        missing = names - set(data)
        if missing:
            raise ValueError(f"state.json lacks {', '.join(sorted(missing))}: not a checkpoint of this trainer")
        return cls(**{name: data[name] for name in names})


@dataclass
class StageParts:
    """What a stage trains with: the checkpointed objects besides the model and the train state."""

    masters: MasterWeights
    optimizer: torch.optim.Optimizer
    schedule: Any  # a torch LR scheduler
    ema: EMAModel | None


class CheckpointManager:
    """Saves (rank 0) and restores (every rank) the train state with the model and the stage's parts.

    Args:
        root: the run's `checkpoints/` folder.
        keep: newest checkpoints kept.
        enabled: whether this process writes (rank 0).
    """

    def __init__(self, root: Path, keep: int, enabled: bool) -> None:
        self.root, self.keep, self.enabled = Path(root), keep, enabled

    def latest(self) -> Path | None:
        return latest_checkpoint(self.root)

    @staticmethod
    def read_state(path: Path) -> TrainState:
        import json

        return TrainState.from_json(json.loads((Path(path) / "state.json").read_text()))

    @staticmethod
    def _master_tensors(model: nn.Module, masters: MasterWeights) -> dict[str, torch.Tensor]:
        """The fp32 masters by the model's parameter names ({} when the masters are the parameters)."""
        if not masters.separate:
            return {}
        names = {id(p): name for name, p in model.named_parameters()}
        return {names[id(p)]: master for p, master in zip(masters.working, masters.masters)}

    def save(self, state: TrainState, model: nn.Module, parts: StageParts) -> Path | None:
        """Write a checkpoint of `state` (named by its global step); None on ranks that do not write.
        Call on every rank: a sharded optimiser's state is first gathered on rank 0 (a collective)."""
        if isinstance(parts.optimizer, ZeroRedundancyOptimizer):
            parts.optimizer.consolidate_state_dict(to=0)
        if not self.enabled:
            return None
        return save_checkpoint(self.root, state.global_step, model, parts.optimizer, parts.schedule,
                               ema=parts.ema, keep=self.keep, extra=state.to_json(),
                               model_overrides={name: master.detach() for name, master in
                                                self._master_tensors(model, parts.masters).items()})

    def load(self, path: Path, model: nn.Module, parts: StageParts) -> TrainState:
        """Restore the model, masters, optimiser, schedule and EMA from `path`; returns its train state. A sharded
        optimiser reads the whole state and keeps its rank's share."""
        extra = load_checkpoint(path, model, parts.optimizer, parts.schedule, ema=parts.ema,
                                model_overrides={name: master.data for name, master in
                                                 self._master_tensors(model, parts.masters).items()})
        state = TrainState.from_json(extra)
        if extra["step"] != state.global_step:
            raise ValueError(f"checkpoint {path}: its step {extra['step']} is not its global step "
                             f"{state.global_step}")
        parts.masters.to_working()
        return state
