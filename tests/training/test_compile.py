"""`TrainConfig.compile_denoiser`: each stage's denoiser is compiled in place when the stage starts (whether it
compiles and trains like eager: tests/model/test_compile.py)."""

from __future__ import annotations

from pathlib import Path

import torch

from data_specs.training import load_train_config
from tests.training.training_testing import write_pair_dataset
from training.loop import Trainer
from training.ray_train import LocalSession


def test_each_stage_compiles_its_own_denoiser_in_place(tmp_path: Path):
    dataset = write_pair_dataset(tmp_path / "data", clips=1, size=32, frames=2, pairs_per_clip=1)
    config = load_train_config({"output_dir": str(tmp_path / "runs"), "resolution": 32, "compile_denoiser": True,
                                "data": {"dataset": str(dataset), "loader_workers": 0},
                                "stages": [{"stage": 1, "steps": 1}, {"stage": 2, "steps": 1, "frames": 2}]})
    trainer = Trainer(config, LocalSession(config))
    keys = set(trainer.model.state_dict())
    trainer.start_stage(0)
    stage1_denoiser = trainer.model.denoiser
    assert stage1_denoiser._compiled_call_impl is not None  # compiled lazily: nothing runs until a step
    assert set(trainer.model.state_dict()) == keys  # checkpoints and the export keep their layout
    trainer.end_stage()
    trainer.start_stage(1)
    assert trainer.model.has_motion_modules and trainer.model.denoiser is not stage1_denoiser
    assert trainer.model.denoiser._compiled_call_impl is not None
    torch._dynamo.reset()
