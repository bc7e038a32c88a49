"""The validation pass of a training run: held-out pairs reconstructed, scored, and one shown as a video.

Held out = the dataset's evaluation split (`data_specs.split`), never trained on. Every `validate_every` steps
(and at the end of each stage) rank 0 reconstructs `validation_samples` of the stage's evaluation pairs with
the current weights (`training.reconstruction`, the evaluation's own code path), logs the mean L1, PSNR and
SSIM as `validation/*`, and writes `RUN/samples/stage{S}-step{N}.mp4`: portrait, attribute, guidance, result
and the real frames side by side. It also measures the reference-reliance gaps on the same samples
(`training.reliance`: the denoising loss with a reference swapped or dropped minus the loss with both) and logs them
as `validation/reliance/<attribute>/gap_<condition>_<inside|outside>`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from data_specs.training import StageRun, TrainConfig
from model.pipeline import DurianPipeline
from training.data import DatasetIndex, read_pairs, validation_samples
from training.monitoring import TrainingLog, side_by_side_video
from training.reconstruction import comparison_columns, reconstruct
from training.reliance import across_videos, reference_reliance
from training.step import Encoders, training_noise_scheduler

__all__ = ["SAMPLES_DIR", "Validator", "sample_videos"]

log = logging.getLogger(__name__)

SAMPLES_DIR = "samples"


class Validator:
    """Validation of one stage: its held-out samples are decoded once, when the stage starts."""

    def __init__(self, config: TrainConfig, index: DatasetIndex, stage_run: StageRun) -> None:
        self.config, self.stage_run = config, stage_run
        self.samples = validation_samples(index, stage_run.stage, config.validation_samples)
        # The reliance swaps need samples of several videos: the same count, taken from the videos in turn.
        self.reliance_samples = read_pairs(index, across_videos(index.validation_pairs(stage_run.stage),
                                                                config.validation_samples))
        if not self.samples:
            log.warning("no stage-%d samples in the dataset's evaluation split: validation is skipped (build with "
                        "split.eval_fraction > 0 and enough videos)", stage_run.stage)

    def due(self, step: int) -> bool:
        return bool(self.samples) and (step % self.config.validate_every == 0 or step == self.stage_run.steps)

    def run(self, pipeline: DurianPipeline, global_step: int, training_log: TrainingLog) -> dict[str, float]:
        """Reconstruct, log `validation/*` at `global_step` and write the sample video; returns the means."""
        pipeline.set_progress_bar_config(disable=True)
        frames = self.stage_run.frames
        results = [reconstruct(pipeline, sample, frames=frames, steps=self.config.sample_steps,
                               guidance_scale=self.config.validation_guidance_scale, seed=self.config.seed) for sample in self.samples]
        means = {name: float(np.mean([v for r in results for v in r.metrics[name]])) for name in results[0].metrics}
        reliance = reference_reliance(
            pipeline.model, training_noise_scheduler(pipeline.scheduler),
            Encoders(pipeline.vae, pipeline.image_encoder, pipeline.identity_encoder), self.reliance_samples,
            frames=frames, seed=self.config.seed, device=pipeline.device)
        means.update(reliance.scalars(gaps_only=True))
        video = self.config.run_dir / SAMPLES_DIR / f"stage{self.stage_run.stage}-step{global_step:08d}.mp4"
        side_by_side_video(*comparison_columns(results[0].sample, results[0].generated), path=video, fps=results[0].sample.meta.fps or 8.0)
        training_log.log_step(global_step, self.stage_run.stage, kind="validation", video=str(video), **means)
        return means


def sample_videos(run_dir: Path) -> list[Path]:
    """The validation videos of a run, oldest first."""
    return sorted((Path(run_dir) / SAMPLES_DIR).glob("stage*-step*.mp4"), key=lambda p: p.name.split("-step")[1])
