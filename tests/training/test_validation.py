"""The validation pass reconstructs its held-out samples with the configured guidance scale, as the evaluation does,
and logs those figures with the reliance gaps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from data_specs.model import model_flavour
from data_specs.training import load_train_config
from model.builders import random_components
from tests.training.training_testing import write_pair_dataset
from training.data import DatasetIndex
from training.monitoring import TrainingLog, read_metrics
from training.reconstruction import reconstruct
from training.validation import Validator


@pytest.mark.parametrize("scale", [1.0, 3.5])
def test_validation_reconstructs_with_the_configured_guidance_scale(tmp_path: Path, scale: float) -> None:
    dataset = write_pair_dataset(tmp_path / "data", clips=3, size=32, frames=2, pairs_per_clip=1, stages=(1,),
                                 eval_clips=(1, 2))
    config = load_train_config({
        "output_dir": str(tmp_path / "runs"), "resolution": 32, "stages": [{"stage": 1, "steps": 1}],
        "data": {"dataset": str(dataset), "loader_workers": 0}, "validation_samples": 1, "sample_steps": 2,
        "validation_guidance_scale": scale})
    validator = Validator(config, DatasetIndex.open(dataset, stages=(1,)), config.stages[0])
    pipeline = random_components(model_flavour("tiny"), seed=0).pipeline()
    log = TrainingLog(config.run_dir, enabled=True)
    means = validator.run(pipeline, global_step=1, training_log=log)
    log.close()

    expected = reconstruct(pipeline, validator.samples[0], frames=1, steps=2, guidance_scale=scale,
                           seed=config.seed).mean()
    other = reconstruct(pipeline, validator.samples[0], frames=1, steps=2, guidance_scale=4.5 - scale,
                        seed=config.seed).mean()
    assert means["l1"] == pytest.approx(expected["l1"]) and not np.isclose(means["l1"], other["l1"])
    logged = [record for record in read_metrics(config.run_dir) if record["kind"] == "validation"]
    assert logged and logged[0]["psnr"] == pytest.approx(expected["psnr"])
    assert any(name.startswith("reliance/") for name in logged[0])
