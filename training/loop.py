"""The training loop, readable in one place: stages in order, steps, checkpoints, logs.

Parallelism, checkpoint files, logging and data are separate pieces it calls: a `Session` (which
rank this is, how to reach the others, where checkpoints go; Ray Train's or a local one), the
loader (`training.data`), the step (`training.step`), the checkpoints (`training.checkpoints`), the
log (`training.monitoring`) and the validation pass on held-out videos (`training.validation`, with
the EMA weights when `ema_decay` keeps them). Gradients are averaged over ranks explicitly after
backward, in flat buckets: a step that drops the references (classifier-free guidance) leaves the
reference nets without gradients on that rank, which DDP's bucketed reducer cannot take without
`find_unused_parameters`; here a missing gradient simply counts as zero.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel

from data_specs.model import model_flavour
from data_specs.training import StageRun, TrainConfig
from model.builders import DurianComponents, random_components, training_scheduler
from training.step import Encoders, StepOptions, diffusion_loss, model_inputs, step_generator


class Session(Protocol):
    """Where a training process runs: its rank among the workers, and what it reports."""

    rank: int
    world_size: int
    device: torch.device

    def restored_checkpoint(self) -> Path | None:
        """The checkpoint to resume from (a worker restart or a re-launched run), or None."""

    def report(self, metrics: dict, checkpoint: Path | None) -> None:
        """At each checkpoint step, every rank reports its metrics and rank 0 the checkpoint folder to keep."""


@dataclass
class Progress:
    """Where the run is: stage, step within it, and steps done overall."""

    stage_index: int = 0
    step: int = 0
    losses: list[float] = field(default_factory=list)


def build_components(config: TrainConfig, device: torch.device) -> DurianComponents:
    """The model to train: a saved pipeline (`init_from`), the pretrained parts (sd15) or random (tiny)."""
    flavour = model_flavour(config.flavour)
    if config.init_from:
        from model.pipeline import DurianPipeline

        pipeline = DurianPipeline.from_pretrained(config.init_from)
        components = DurianComponents(pipeline.model, pipeline.vae, pipeline.image_encoder,
                                      pipeline.identity_encoder, pipeline.scheduler)
    elif config.pretrained:
        from model.builders import pretrained_components

        parts = config.pretrained
        components = pretrained_components(flavour, parts["sd15"], parts.get("motion_adapter"),
                                           parts["image_encoder"], parts["arcface"])
    else:
        components = random_components(flavour, seed=config.seed)
    for module in (components.model, components.vae, components.image_encoder, components.identity_encoder):
        module.to(device)
    for module in (components.vae, components.image_encoder, components.identity_encoder):
        module.requires_grad_(False).eval()
    return components


def average_gradients(parameters: list[torch.nn.Parameter], world_size: int) -> None:
    """All-reduce the mean gradient of `parameters` in one flat buffer (a missing gradient is zero)."""
    if world_size == 1:
        return
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for parameter, grad in zip(parameters, grads):
        parameter.grad = flat[offset:offset + grad.numel()].view_as(grad)
        offset += grad.numel()


def train(config: TrainConfig, session: Session) -> Progress:
    """Train every configured stage; resumes from `session.restored_checkpoint()` when there is one."""
    from training.checkpoints import load_checkpoint, make_ema, save_checkpoint
    from training.data import DatasetIndex, make_loader
    from training.monitoring import TrainingLog
    from training.validation import Validator

    device = session.device
    index = DatasetIndex.open(Path(config.data.dataset))
    for run in config.stages:
        index.check_fits(run, config.model_resolution())
    components = build_components(config, device)
    model = components.model
    encoders = Encoders(components.vae, components.image_encoder, components.identity_encoder)
    noise_scheduler = training_scheduler(model_flavour(config.flavour).noise_schedule)
    options = StepOptions(config.noise_offset, config.min_snr_gamma, config.reference_dropout,
                          autocast=_autocast(config, device))
    if config.gradient_checkpointing:
        model.denoiser.enable_gradient_checkpointing()
    progress = Progress()
    restored = session.restored_checkpoint()
    state: dict = {}
    if restored is not None:  # weights, optimiser and schedule are loaded with the stage they belong to
        state = json.loads((restored / "state.json").read_text())
        progress.stage_index, progress.step = state["stage_index"], state["stage_step"]
    # A resumed run's log drops what the interrupted attempt logged after its last checkpoint.
    log = TrainingLog(config.run_dir, enabled=session.rank == 0,
                      purge_step=_global_step(config, progress.stage_index, progress.step) + 1 if restored else None)

    for stage_index, run in enumerate(config.stages):
        if stage_index < progress.stage_index:
            continue
        trainable = model.select_trainable(run.stage)
        model.train()
        optimizer = _optimizer(config, run, trainable, device)
        schedule = get_scheduler(config.optim.schedule, optimizer, num_warmup_steps=config.optim.warmup_steps,
                                 num_training_steps=run.steps)
        ema = make_ema(trainable, config.ema_decay) if config.ema_decay else None
        if restored is not None and state["stage_index"] == stage_index:
            load_checkpoint(restored, model, optimizer, schedule, ema=ema)
        else:
            progress.step = 0
        validator = Validator(config, index, run) if session.rank == 0 else None
        loader = iter(make_loader(index, config.data, run, session.rank, session.world_size, config.seed,
                                  start_batch=progress.step * config.gradient_accumulation))
        started, skipped_shards = time.perf_counter(), 0
        while progress.step < run.steps:
            generator = step_generator(config.seed, session.rank, _global_step(config, stage_index,
                                                                                progress.step), device)
            loss_sum = 0.0
            for _ in range(config.gradient_accumulation):
                batch = next(loader)
                skipped_shards += batch.skipped_shards
                loss = diffusion_loss(model, noise_scheduler, model_inputs(encoders, batch, device), options,
                                      generator)
                (loss / config.gradient_accumulation).backward()
                model.clear_references()
                loss_sum += loss.item() / config.gradient_accumulation
            average_gradients(trainable, session.world_size)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, config.optim.grad_clip))
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.step(trainable)
            progress.step += 1
            progress.losses.append(_mean_over_ranks(loss_sum, session.world_size, device))

            samples = progress.step * config.data.batch_size * config.gradient_accumulation * session.world_size
            metrics = {"loss": progress.losses[-1], "lr": schedule.get_last_lr()[0], "grad_norm": grad_norm,
                       "samples_per_s": samples / (time.perf_counter() - started),
                       # corrupt shards this rank skipped so far in the stage (each also logged as a warning)
                       "skipped_shards": skipped_shards}
            global_step = _global_step(config, stage_index, progress.step)
            if progress.step % config.log_every == 0 or progress.step == run.steps:
                log.log_step(global_step, run.stage, **metrics)
            if validator is not None and validator.due(progress.step):
                with _evaluation_weights(model, trainable, ema):
                    validator.run(components.pipeline(), global_step, log)
            # Every rank reports at checkpoints only: on Ray Train a report waits for the controller's next
            # poll (every 2 s), so a report per step would hold each step to 2 s; metrics are logged above.
            if progress.step % config.checkpoint_every == 0 or progress.step == run.steps:
                checkpoint = None
                if session.rank == 0:
                    checkpoint = save_checkpoint(
                        config.run_dir / "checkpoints", global_step, model, optimizer, schedule, ema=ema,
                        keep=config.keep_checkpoints,
                        extra={"stage_index": stage_index, "stage_step": progress.step, "seed": config.seed})
                session.report({"stage": run.stage, "step": progress.step, **metrics}, checkpoint)
        if ema is not None:  # a stage ends with its averaged weights: the next stage and the export start there
            ema.copy_to(trainable)
        restored = None
        progress.stage_index = stage_index + 1
    log.close()
    if session.rank == 0:
        from training.checkpoints import export_pipeline

        export_pipeline(components.pipeline(), config.run_dir / "pipeline")
    return progress


@contextmanager
def _evaluation_weights(model: torch.nn.Module, trainable: list[torch.nn.Parameter],
                        ema: EMAModel | None) -> Iterator[None]:
    """The model in eval mode with the EMA weights (when kept) swapped in; training weights and mode after."""
    if ema is not None:
        ema.store(trainable)
        ema.copy_to(trainable)
    model.eval()
    try:
        yield
    finally:
        model.train()
        if ema is not None:
            ema.restore(trainable)


def _global_step(config: TrainConfig, stage_index: int, step: int) -> int:
    """Steps over all stages so far: the x axis of the logs and the checkpoints' names."""
    return sum(run.steps for run in config.stages[:stage_index]) + step


def _mean_over_ranks(value: float, world_size: int, device: torch.device) -> float:
    if world_size == 1:
        return value
    import torch.distributed as dist

    tensor = torch.tensor([value], device=device)
    dist.all_reduce(tensor)
    return float(tensor) / world_size


def _autocast(config: TrainConfig, device: torch.device) -> bool:
    if config.mixed_precision == "auto":
        return device.type == "cuda"
    return config.mixed_precision == "bf16"


def _optimizer(config: TrainConfig, run: StageRun, parameters: list[torch.nn.Parameter],
               device: torch.device) -> torch.optim.Optimizer:
    lr = run.learning_rate or config.optim.learning_rate
    kwargs = {"lr": lr, "weight_decay": config.optim.weight_decay, "betas": config.optim.betas}
    if config.optim.eight_bit:
        if device.type != "cuda":
            raise ValueError("optim.eight_bit needs a GPU (bitsandbytes)")
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(parameters, **kwargs)
    return torch.optim.AdamW(parameters, fused=device.type == "cuda", **kwargs)

