"""The training configuration: what `train-durian` takes, validated before any worker starts.

A run trains the stages listed in `stages`, in order, from one dataset (a `build-dataset` output
with `training_samples`): stage 1 on single target frames (reference nets, a 2D denoiser, pose
guider), stage 2 on clips (the motion modules only, inserted when it starts), each stage starting
from the weights the previous one ended with. Defaults follow the paper where it speaks and its
relatives where it is silent (AdamW at 1e-5, weight decay 1e-2, clip 1.0, noise offset 0.05,
min-SNR gamma 5, 10% reference dropout).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from data_specs.model import FlavourName, PretrainedPaths, model_flavour
from data_specs.spec import ConfigError, RayConfig, Spec, absolute_path, load_spec
from data_specs.training_samples import TrainingStage

__all__ = ["DataConfig", "MixedPrecision", "OptimConfig", "ScalingConfig", "StageRun", "TrainConfig",
           "TrainConfigError", "load_train_config"]

MixedPrecision = Literal["auto", "no", "bf16"]


class DataConfig(Spec):
    """Where the samples come from and how they are streamed."""

    dataset: str = Field(description="Output folder of a `build-dataset` run with `training_samples`.")
    batch_size: int = Field(1, ge=1, le=4096, description="Samples per worker per step.")
    shuffle_buffer: int = Field(64, ge=1, le=1_000_000, description="Samples held for shuffling.")
    loader_workers: int = Field(1, ge=0, le=64, description="DataLoader processes per training worker.")
    verify_shards: bool = Field(False, description="Check every shard's sha256 against the manifest first.")
    rebalance: bool = Field(False, description="Draw samples with per-attribute weights so every attribute is "
                            "seen equally often (the manifests' `attribute` column).")

    @field_validator("dataset")
    @classmethod
    def _absolute(cls, value: str) -> str:
        return absolute_path(value)


class OptimConfig(Spec):
    """Optimiser and schedule."""

    learning_rate: float = Field(1e-5, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(1e-2, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eight_bit: bool = Field(False, description="bitsandbytes 8-bit AdamW (GPU only).")
    shard_state: bool = Field(True, description="With several ranks, each keeps only its share of the optimiser "
                              "state (ZeRO-1: torch's ZeroRedundancyOptimizer over the fp32 masters); off: every "
                              "rank holds all of it.")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up from 0.")
    schedule: Literal["constant", "cosine", "linear"] = Field("constant", description="After the warm-up.")
    grad_clip: float = Field(1.0, gt=0, description="Largest global gradient norm.")


class StageRun(Spec):
    """One training stage of a run."""

    stage: TrainingStage
    steps: int = Field(ge=1, description="Optimiser steps of this stage.")
    frames: int = Field(1, ge=1, le=256, description="Target frames per sample: 1 in stage 1; in stage 2 at most "
                        "the dataset's `training_samples.pairs.frames`.")
    learning_rate: float | None = Field(None, gt=0, description="Overrides `optim.learning_rate` for this stage.")

    @model_validator(mode="after")
    def _frames(self) -> StageRun:
        if self.stage == 1 and self.frames != 1:
            raise ValueError("stage 1 trains on single frames: frames must be 1")
        return self


class ScalingConfig(Spec):
    """Ray Train workers."""

    workers: int = Field(2, ge=1, le=4096, description="Training workers (one process each; DDP).")
    use_gpu: bool = Field(False, description="One GPU per worker, NCCL; else CPU and gloo.")
    cpus_per_worker: float = Field(1.0, gt=0)
    max_failures: int = Field(1, ge=-1, description="Worker-group restarts from the last checkpoint (-1: "
                              "unlimited).")


class TrainConfig(Spec):
    """A whole training run."""

    name: str = Field("durian", pattern=r"^[\w-]+$", description="Run name: the folder under `output_dir`.")
    output_dir: str = Field(description="Folder for checkpoints, the trained pipeline, logs and sample videos.")
    flavour: FlavourName = Field("tiny", description="Model sizes (`data_specs.model`).")
    pretrained: PretrainedPaths | None = Field(
        None, description="Required for sd15 (unless `init_from` names a trained pipeline): local paths or hub ids "
        "of the pretrained parts (`sd15`, `image_encoder`, `arcface`; optional `motion_adapter` for stage 2 and "
        "`vae`). None with the tiny flavour: random initialisation.")
    init_from: str | None = Field(None, description="A saved DurianPipeline folder to start from (e.g. a stage-1 "
                                  "run's `pipeline/`).")
    resolution: int | None = Field(None, ge=16, description="Training size; None: the flavour's. Must equal the "
                                   "dataset's crop size.")
    data: DataConfig
    stages: tuple[StageRun, ...] = Field(min_length=1, description="Stages to train, in order.")
    optim: OptimConfig = Field(default_factory=OptimConfig)
    scaling: ScalingConfig = Field(default_factory=ScalingConfig)
    execution: RayConfig = Field(default_factory=RayConfig, description="Which Ray runs the workers: the same "
                                 "fields as build-dataset's and evaluate's `execution`.")
    noise_offset: float = Field(0.05, ge=0, le=1)
    min_snr_gamma: float | None = Field(5.0, gt=0, description="Min-SNR loss weighting (None: plain MSE).")
    reference_dropout: float = Field(0.1, ge=0, lt=1, description="Share of samples trained without references "
                                     "and image embeddings (for classifier-free guidance).")
    mixed_precision: MixedPrecision = Field(
        "auto", description="'auto': bf16 on GPU. Under bf16 every network is held in bf16 and the trained "
        "weights keep fp32 masters (`training.precision`).")
    fp32_vae: bool = Field(False, description="Hold the VAE in fp32 under bf16 (as diffusers' SD 1.5 examples "
                           "do for decoding): the validation videos decode with it.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward (denoiser and "
                                         "both reference nets): less memory, about a third more compute.")
    compile_denoiser: bool = Field(False, description="Compile the denoiser with torch.compile (inductor) when "
                                   "each stage starts: fewer, fused kernel launches on a GPU; the first steps "
                                   "wait for the compilation.")
    gradient_accumulation: int = Field(1, ge=1, le=1024)
    ema_decay: float | None = Field(None, gt=0, lt=1, description="Keep an EMA of the trained weights.")
    seed: int = Field(0, ge=0, description="Base seed; each rank adds its rank.")
    checkpoint_every: int = Field(50, ge=1, description="Steps between checkpoints (one is also written at the end).")
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(1, ge=1, description="Steps between records in metrics.jsonl and TensorBoard.")
    progress_log_every: int = Field(10, ge=1, description="Steps between progress lines (stage, step of total, "
                                    "loss, learning rate, samples/s, time left) in the train-durian run's log.")
    validate_every: int = Field(100, ge=1, description="Steps between validation passes.")
    validation_samples: int = Field(4, ge=1, description="Held-out samples per validation pass.")
    sample_steps: int = Field(10, ge=1, description="DDIM steps of the validation sample video.")
    validation_guidance_scale: float = Field(3.5, ge=1.0, description="Classifier-free guidance scale of the "
                                             "validation reconstructions (1: none); as the evaluation's "
                                             "`guidance_scale`, so the two report the same thing.")

    @field_validator("output_dir", "init_from")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        return None if value is None else absolute_path(value)

    @model_validator(mode="after")
    def _pretrained_fits_the_flavour(self) -> TrainConfig:
        # sd15 with no weights would silently train SD 1.5's architecture from random weights.
        if self.flavour == "sd15" and self.pretrained is None and self.init_from is None:
            raise ValueError("flavour 'sd15' needs `pretrained` (sd15, image_encoder and arcface paths) or "
                             "`init_from` a trained pipeline")
        return self

    @model_validator(mode="after")
    def _frames_fit_the_motion_modules(self) -> TrainConfig:
        longest = model_flavour(self.flavour).motion.motion_max_seq_length
        for run in self.stages:
            if run.frames > longest:
                raise ValueError(f"stage {run.stage}: frames={run.frames} is more than the motion modules' "
                                 f"positional encoding holds ({longest} frames, flavour {self.flavour!r})")
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def model_resolution(self) -> int:
        return self.resolution or model_flavour(self.flavour).resolution


class TrainConfigError(ConfigError):
    """A training config that is invalid or does not fit its dataset; the message names the values."""


def load_train_config(data: dict | str | Path) -> TrainConfig:
    """A `TrainConfig` from a dict or a YAML file, with one readable line per problem (`data_specs.spec.load_spec`)."""
    try:
        return load_spec(TrainConfig, data, origin=None if isinstance(data, (str, Path)) else "training config")
    except ConfigError as err:
        raise TrainConfigError(str(err)) from err.__cause__
