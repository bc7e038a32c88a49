"""The trainer, readable in one place: stages in order, steps, checkpoints, logs.

`Trainer` (torchtitan's pattern) holds one `TrainState` (`training.state`) and calls separate pieces: a
`Session` (which rank this is, how to reach the others, where checkpoints come from; Ray Train's or a local
one), the loader (`training.data`), the loss (`training.step`), the precision policy and fp32 masters
(`training.precision`), the checkpoints (`CheckpointManager`), the log (`training.monitoring`) and the
validation pass on held-out videos (`training.validation`, with the EMA weights when `ema_decay` keeps them).

Stages: stage 1 trains a 2D denoiser (no motion modules), the reference nets, the pose guider and the identity
projection; stage 2 inserts the motion modules (`pretrained.motion_adapter`, or random ones) when it starts,
also when a stage-2-only run starts from a stage-1 pipeline (`init_from`), and trains only them. A checkpoint's
train state says whether the model had them, so a resume inserts them before loading.

Gradients: with several ranks the model is wrapped in DistributedDataParallel with a static graph (the model
runs the same layers every step: dropped references are masked, not skipped), so gradients are reduced in
buckets while backward still runs; reference-net parameters that reach nothing are frozen by
`select_trainable`, so no `find_unused_parameters` is needed. The trained parameters' fp32 masters are
broadcast from rank 0 when a stage starts, so every rank starts from the same weights whatever its RNG did.
Memory per rank: the bf16 gradients are views of DDP's buckets (`gradient_as_bucket_view`), and each rank
keeps and steps only its share of the optimiser state (`optim.shard_state`, ZeRO-1); the masters' fp32
gradients exist during the optimiser step only.

Host: the step never waits for the device; losses and gradient norms stay device tensors until a log or
checkpoint step reads them (one transfer, one all-reduce over ranks); on a GPU the loader pins its batches and
the step copies them with `non_blocking`.

Building blocks the benchmarks call too: `build_components`, `prepare_stage` (the model for stage S under a
precision policy), `forward_backward` (one loss and backward), `make_optimizer` and `optimizer_step` (the
optimiser side of a step).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from diffusers import DDPMScheduler, MotionAdapter
from diffusers.optimization import get_scheduler
from torch import nn

from data_specs.model import model_flavour
from data_specs.perception import PoseRenderSpec
from data_specs.training import OptimConfig, StageRun, TrainConfig
from model.builders import DurianComponents, random_components
from model.durian import DurianModel
from training.precision import MasterWeights, PrecisionPolicy, hold_in, precision_policy
from training.state import CheckpointManager, StageParts, TrainState
from training.step import (
    Encoders,
    ModelInputs,
    StepOptions,
    diffusion_loss,
    model_inputs,
    step_generator,
    training_noise_scheduler,
)
from weight_files.tensors import weights_fingerprint

__all__ = ["Progress", "Session", "Trainer", "build_components", "distribute", "forward_backward", "prepare_stage",
           "train"]

log = logging.getLogger(__name__)

_BROADCAST_BUCKET_BYTES = 250 * 2**20  # DDP's own bucket size for its initial broadcast


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
    """What a finished `train` returns: the final train state and every step's loss (mean over ranks) that
    this process trained."""

    state: TrainState
    losses: list[float] = field(default_factory=list)


# ---------------------------------------------------------------- building blocks


def build_components(config: TrainConfig, device: torch.device) -> DurianComponents:
    """The networks to train from, in fp32 on `device`: a saved pipeline (`init_from`), the pretrained parts
    (sd15) or random (tiny). The frozen ones are set to eval mode without gradients; `PrecisionPolicy.apply`
    then holds them in their training dtype, and `prepare_stage` the model."""
    flavour = model_flavour(config.flavour)
    if config.init_from:
        from model.pipeline import DurianPipeline

        pipeline = DurianPipeline.from_pretrained(config.init_from)
        components = DurianComponents(pipeline.model, pipeline.vae, pipeline.image_encoder,
                                      pipeline.identity_encoder, pipeline.scheduler)
    elif config.pretrained is not None:
        from model.builders import pretrained_components

        components = pretrained_components(flavour, config.pretrained, device=device)
    else:
        components = random_components(flavour, seed=config.seed)
    for module in (components.model, components.vae, components.image_encoder, components.identity_encoder):
        hold_in(module, torch.float32, device)
    for module in (components.vae, components.image_encoder, components.identity_encoder):
        module.requires_grad_(False).eval()
    return components


def prepare_stage(model: DurianModel, stage: int, policy: PrecisionPolicy,
                  motion_adapter: Callable[[], MotionAdapter] | None = None,
                  gradient_checkpointing: bool = False) -> MasterWeights:
    """The model ready to train `stage` under `policy`; returns the fp32 masters of its trained parameters.

    Stage 2 inserts the motion modules from `motion_adapter()` unless the model has them. The masters are
    taken before the model is cast to the working dtype, so they keep every bit of fp32 weights (pretrained,
    or an adapter's); the frozen parts are then held in the working dtype.
    """
    inserted: dict[str, torch.Tensor] = {}  # the adapter's own (fp32) tensors, by the model's names
    if stage == 2 and not model.has_motion_modules:
        if motion_adapter is None:
            raise ValueError("stage 2 needs motion modules: the model has none and no motion adapter was given")
        adapter = motion_adapter()
        # Kept before the insertion casts them to the denoiser's dtype (bf16 after a bf16 stage 1).
        inserted = {f"denoiser.{name}": tensor for name, tensor in adapter.state_dict().items()}
        model.add_motion_modules(adapter)
    if gradient_checkpointing:
        model.enable_gradient_checkpointing()
    masters = MasterWeights(model.select_trainable(stage), policy.working_dtype)
    if masters.separate and inserted:
        names = {id(p): name for name, p in model.named_parameters()}
        with torch.no_grad():
            for working, master in zip(masters.working, masters.masters):
                if (source := inserted.get(names[id(working)])) is not None:
                    master.copy_(source)
    hold_in(model, policy.working_dtype)
    masters.to_working()
    model.train()
    return masters


def forward_backward(model: nn.Module, scheduler: DDPMScheduler, inputs: ModelInputs, options: StepOptions,
                     generator: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    """One loss and its backward (scaled by `scale`, e.g. 1 / accumulation); returns the loss, detached, on the
    device. `model`: the DurianModel or its DistributedDataParallel wrapper."""
    loss = diffusion_loss(model, scheduler, inputs, options, generator)
    (loss * scale).backward()
    _unwrap(model).clear_references()
    return loss.detach()


def make_optimizer(optim: OptimConfig, learning_rate: float, parameters: list[nn.Parameter], device: torch.device,
                   shard: bool = False) -> torch.optim.Optimizer:
    """AdamW (or 8-bit AdamW) over `parameters`; `shard`: each rank of the process group keeps and updates its
    share of them (ZeRO-1: `ZeroRedundancyOptimizer`), then the updated parameters are broadcast from their
    owners. Its checkpoint is gathered on rank 0 (`CheckpointManager.save`, on every rank)."""
    kwargs = {"lr": learning_rate, "weight_decay": optim.weight_decay, "betas": optim.betas}
    if optim.eight_bit:
        if device.type != "cuda":
            raise ValueError("optim.eight_bit needs a GPU (bitsandbytes)")
        try:
            import bitsandbytes as bnb
        except ImportError as err:
            raise ValueError("optim.eight_bit needs bitsandbytes: `pip install bitsandbytes`") from err
        optimizer_class = bnb.optim.AdamW8bit
    else:
        optimizer_class, kwargs = torch.optim.AdamW, {**kwargs, "fused": device.type == "cuda"}
    if shard:
        from torch.distributed.optim import ZeroRedundancyOptimizer

        return ZeroRedundancyOptimizer(parameters, optimizer_class=optimizer_class, **kwargs)
    return optimizer_class(parameters, **kwargs)


def optimizer_step(parts: StageParts, grad_clip: float) -> torch.Tensor:
    """Gradients to the fp32 masters, clip, step the optimiser, schedule and EMA, drop the gradients, refresh
    the working copies; returns the gradient norm before clipping (a device tensor)."""
    masters = parts.masters
    masters.grads_to_masters()
    grad_norm = torch.nn.utils.clip_grad_norm_(masters.masters, grad_clip)
    parts.optimizer.step()
    parts.schedule.step()
    masters.zero_grad()
    if parts.ema is not None:
        parts.ema.step(masters.masters)
    masters.to_working()
    return grad_norm.detach()


def distribute(model: DurianModel, masters: MasterWeights) -> nn.parallel.DistributedDataParallel:
    """Rank 0's masters on every rank, then the model in DDP over its trained parameters (a static graph;
    bf16 gradients averaged in fp32). Call on every rank of the initialised process group, after
    `prepare_stage`.

    The frozen weights agree by construction (the same files, the same seed, or the same checkpoint), so
    DDP's own broadcast of the whole model is skipped.
    """
    from torch.distributed import group
    from torch.distributed.utils import _sync_params_and_buffers

    _sync_params_and_buffers(group.WORLD, [m.data for m in masters.masters], _BROADCAST_BUCKET_BYTES, 0)
    masters.to_working()
    # The working gradients are views of DDP's buckets: not a second copy of them.
    wrapped = nn.parallel.DistributedDataParallel(model, static_graph=True, init_sync=False,
                                                  forward_sync_buffers=False, gradient_as_bucket_view=True)
    masters.grads_in_buckets = True
    if masters.separate:
        wrapped.register_comm_hook(None, _allreduce_in_fp32)
    return wrapped


def _unwrap(model: nn.Module) -> DurianModel:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# ---------------------------------------------------------------- the trainer


class Trainer:
    """Trains every configured stage; resumes from `session.restored_checkpoint()` when there is one."""

    def __init__(self, config: TrainConfig, session: Session) -> None:
        from training.data import DatasetIndex
        from training.monitoring import TrainingLog

        self.config, self.session, self.device = config, session, session.device
        self.index = DatasetIndex.open(Path(config.data.dataset))
        for run in config.stages:
            self.index.check_fits(run, config.model_resolution())
        self.policy = precision_policy(config.mixed_precision, self.device, config.fp32_vae)
        self.checkpoints = CheckpointManager(config.run_dir / "checkpoints", config.keep_checkpoints,
                                             enabled=session.rank == 0)
        self.restored = session.restored_checkpoint()
        self.state = (CheckpointManager.read_state(self.restored) if self.restored is not None
                      else TrainState(seed=config.seed))
        if self.state.seed != config.seed:
            log.warning("resuming with the checkpoint's seed %d (the config says %d): a resumed run draws what "
                        "the interrupted one would have", self.state.seed, config.seed)
        self.components = build_components(config, self.device)
        self.model = self.components.model
        frozen = self._frozen_networks()
        # The VAE's identity, taken in fp32: precomputed latents must come from this very VAE.
        self.vae_weights = weights_fingerprint(self.components.vae)
        # The export restores the frozen networks exactly (rank 0 keeps their fp32 weights on the host).
        self._frozen_fp32 = ({name: {key: value.detach().to("cpu", copy=True) for key, value in
                                     network.state_dict().items()}
                              for name, network in frozen.items()}
                             if session.rank == 0 and self.policy.working_dtype != torch.float32 else {})
        self.policy.apply([frozen["image_encoder"], frozen["identity_encoder"]], frozen["vae"], self.device)
        self.stored_latents = False  # whether this stage reads the shards' latents (`check_latents`)
        self.encoders = Encoders(self.components.vae, self.components.image_encoder,
                                 self.components.identity_encoder)
        self.noise_scheduler = training_noise_scheduler(self.components.scheduler)
        self.options = StepOptions(config.noise_offset, config.min_snr_gamma, config.reference_dropout,
                                   autocast=self.policy.autocast)
        self.parts: StageParts | None = None
        self.wrapped: nn.Module = self.model
        self.losses: list[float] = []
        # A resumed run's log drops what the interrupted attempt logged after its last checkpoint.
        self.log = TrainingLog(config.run_dir, enabled=session.rank == 0,
                               purge_step=self.state.global_step + 1 if self.restored is not None else None)

    def _frozen_networks(self) -> dict[str, nn.Module]:
        components = self.components
        return {"vae": components.vae, "image_encoder": components.image_encoder,
                "identity_encoder": components.identity_encoder}

    def check_latents(self, stage: int) -> bool:
        """Whether the stage's precomputed target latents can be used: they must come from this run's VAE
        (raises TrainConfigError naming both otherwise); latents of an unrecorded VAE are not used."""
        from data_specs.training import TrainConfigError

        sample = self.index.first_sample(stage)
        if not sample.latents:
            return False
        made_by = sample.meta.latents_vae_weights
        if made_by is None:
            log.warning("the dataset's latents do not record which VAE made them (%s): the targets are encoded "
                        "with this run's VAE instead", sample.meta.latents_vae)
            return False
        if made_by != self.vae_weights:
            raise TrainConfigError(
                f"the dataset's latents were made by another VAE ({sample.meta.latents_vae}, weights sha256 "
                f"{made_by[:12]}) than this run's (weights sha256 {self.vae_weights[:12]}): rebuild the latents "
                "with training_samples.latents.vae set to this model's VAE, or train without them")
        return True

    # ------------------------------------------------------------ stages

    def motion_adapter(self) -> MotionAdapter:
        """The motion modules stage 2 inserts: `pretrained.motion_adapter`, else random (seeded: the same on
        every rank), in fp32 on the device."""
        from model.builders import load_motion_adapter, random_motion_adapter

        flavour = model_flavour(self.config.flavour)
        paths = self.config.pretrained
        if paths is not None and paths.motion_adapter:
            return load_motion_adapter(paths.motion_adapter, flavour, torch.float32, self.device)
        return random_motion_adapter(flavour, seed=self.state.seed).to(self.device)

    def start_stage(self, stage_index: int) -> StageParts:
        """Model, masters, optimiser, schedule and EMA of a stage; restored when the run resumes in it."""
        run = self.config.stages[stage_index]
        self.stored_latents = self.check_latents(run.stage)
        masters = prepare_stage(self.model, run.stage, self.policy, self.motion_adapter,
                                self.config.gradient_checkpointing)
        if self.config.compile_denoiser:  # in place (state-dict keys unchanged), on the stage's own denoiser
            self.model.denoiser.compile()
        if self.restored is None:
            self.state.motion_modules = self.model.has_motion_modules
        if self.session.world_size > 1:
            self.wrapped = distribute(self.model, masters)
        optimizer = make_optimizer(self.config.optim, run.learning_rate or self.config.optim.learning_rate,
                                   masters.masters, self.device,
                                   shard=self.config.optim.shard_state and self.session.world_size > 1)
        schedule = get_scheduler(self.config.optim.schedule, optimizer,
                                 num_warmup_steps=self.config.optim.warmup_steps, num_training_steps=run.steps)
        ema = None
        if self.config.ema_decay:
            from training.checkpoints import make_ema

            ema = make_ema(masters.masters, self.config.ema_decay)
        self.parts = StageParts(masters, optimizer, schedule, ema)
        if self.restored is not None and self.state.stage_index == stage_index:
            if self.state.motion_modules != self.model.has_motion_modules:
                saved, built = ("with" if has else "without" for has in (self.state.motion_modules,
                                                                         self.model.has_motion_modules))
                raise ValueError(f"checkpoint {self.restored} was saved {saved} motion modules, but stage "
                                 f"{run.stage} of this config builds the model {built} them: were `stages` or "
                                 "`init_from` changed since?")
            self.state = self.checkpoints.load(self.restored, self.model, self.parts)
            self.restored = None  # loaded once: later stages start from where this one ends
        return self.parts

    def end_stage(self) -> None:
        """A stage ends with its averaged weights: the next stage and the export start there."""
        parts = self.parts
        if parts.ema is not None:
            parts.ema.copy_to(parts.masters.masters)
            parts.masters.to_working()
        self.wrapped = self.model
        self.state.next_stage()

    # ------------------------------------------------------------ steps

    def train_step(self, loader: Iterator, parts: StageParts) -> tuple[torch.Tensor, torch.Tensor, int]:
        """One optimiser step over `gradient_accumulation` batches; returns (loss, gradient norm) as device
        tensors and the corrupt shards skipped meanwhile."""
        config, state = self.config, self.state
        generator = step_generator(state.seed, self.session.rank, state.global_step, self.device)
        accumulation = config.gradient_accumulation
        loss = torch.zeros((), device=self.device)
        skipped = 0
        for micro in range(accumulation):
            batch = next(loader)
            skipped += batch.skipped_shards
            inputs = model_inputs(self.encoders, batch, self.device, self.stored_latents)
            last = micro == accumulation - 1
            no_sync = (self.wrapped.no_sync() if isinstance(self.wrapped, nn.parallel.DistributedDataParallel)
                       and not last else contextlib.nullcontext())
            with no_sync:
                loss += forward_backward(self.wrapped, self.noise_scheduler, inputs, self.options, generator,
                                         scale=1 / accumulation) / accumulation
        grad_norm = self.optimizer_step(parts)
        state.advance(accumulation)
        return loss, grad_norm, skipped

    def optimizer_step(self, parts: StageParts) -> torch.Tensor:
        """Gradients to the fp32 masters, clip, step the optimiser, schedule and EMA, refresh the working
        copies; returns the gradient norm before clipping (a device tensor)."""
        return optimizer_step(parts, self.config.optim.grad_clip)

    # ------------------------------------------------------------ the run

    def train(self) -> Progress:
        for stage_index, run in enumerate(self.config.stages):
            if stage_index < self.state.stage_index:
                continue
            self.train_stage(run, self.start_stage(stage_index))
            self.end_stage()
        self.log.close()
        if self.session.rank == 0:
            self.export(self.config.run_dir / "pipeline")
        return Progress(self.state, self.losses)

    def train_stage(self, run: StageRun, parts: StageParts) -> None:
        from training.data import make_loader, pins_batches
        from training.validation import Validator

        config, state, session = self.config, self.state, self.session
        validator = Validator(config, self.index, run) if session.rank == 0 else None
        loader = iter(make_loader(self.index, config.data, run, session.rank, session.world_size, state.seed,
                                  start_batch=state.batches, pin_memory=pins_batches(self.device)))
        started, first_step, skipped_shards = time.perf_counter(), state.stage_step, 0
        pending: list[tuple[torch.Tensor, torch.Tensor]] = []  # (loss, grad norm) of steps not yet read
        while state.stage_step < run.steps:
            loss, grad_norm, skipped = self.train_step(loader, parts)
            skipped_shards += skipped
            pending.append((loss, grad_norm))
            step = state.stage_step
            log_due = step % config.log_every == 0 or step == run.steps
            checkpoint_due = step % config.checkpoint_every == 0 or step == run.steps
            validation_due = validator is not None and validator.due(step)
            # The same on every rank (reading the losses is a collective); validation runs on rank 0 only.
            validation_step = step % config.validate_every == 0 or step == run.steps
            if not (log_due or checkpoint_due or validation_step):
                continue
            losses, grad_norms = self._read(pending)
            pending.clear()
            self.losses += losses
            samples = (step - first_step) * config.data.batch_size * config.gradient_accumulation * session.world_size
            metrics = {"loss": losses[-1], "lr": parts.schedule.get_last_lr()[0], "grad_norm": grad_norms[-1],
                       "samples_per_s": samples / (time.perf_counter() - started),
                       # corrupt shards this rank skipped so far in the stage (each also logged as a warning)
                       "skipped_shards": skipped_shards}
            if log_due:
                self.log.log_step(state.global_step, run.stage, **metrics)
            if validation_due:
                with self.evaluation_weights(parts):
                    validator.run(self.components.pipeline(), state.global_step, self.log)
            # Every rank reports at checkpoints only: on Ray Train a report waits for the controller's next
            # poll (every 2 s), so a report per step would hold each step to 2 s; metrics are logged above.
            if checkpoint_due:
                checkpoint = self.checkpoints.save(state, self.model, parts)
                session.report({"stage": run.stage, "step": step, **metrics}, checkpoint)

    def _read(self, pending: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[list[float], list[float]]:
        """The pending steps' losses (mean over ranks) and this rank's gradient norms, in one transfer."""
        values = torch.stack([torch.stack(pair) for pair in pending]).float()  # (steps, 2)
        if self.session.world_size > 1:
            import torch.distributed as dist

            losses = values[:, 0].contiguous()
            dist.all_reduce(losses)
            values[:, 0] = losses / self.session.world_size
        values = values.cpu()
        return values[:, 0].tolist(), values[:, 1].tolist()

    @contextmanager
    def evaluation_weights(self, parts: StageParts) -> Iterator[None]:
        """The model in eval mode with the EMA weights (when kept) swapped in; training weights and mode after."""
        masters, ema = parts.masters, parts.ema
        if ema is not None:
            ema.store(masters.masters)
            ema.copy_to(masters.masters)
            masters.to_working()
        self.model.eval()
        try:
            yield
        finally:
            self.model.train()
            if ema is not None:
                ema.restore(masters.masters)
                masters.to_working()

    def export(self, folder: Path) -> Path:
        """The trained pipeline in fp32, with the guidance it was trained on: the trained weights from their
        masters, the frozen networks as loaded; model weights an earlier stage trained and a later one froze
        are saved as that stage held them (bf16 under mixed precision)."""
        from training.checkpoints import export_pipeline

        components = self.components
        for network in (components.model, components.vae, components.image_encoder, components.identity_encoder):
            hold_in(network, torch.float32)
        for name, network in self._frozen_networks().items():
            if name in self._frozen_fp32:
                network.load_state_dict(self._frozen_fp32[name])
        if self.parts is not None:
            with torch.no_grad():
                torch._foreach_copy_([p.data for p in self.parts.masters.working],
                                     [m.data for m in self.parts.masters.masters])
        pipeline = components.pipeline()
        stages = self.config.stages
        # The guidance the dataset drew travels with the model (a dataset from before it was recorded: the default).
        meta = self.index.first_sample(stages[-1].stage).meta
        pipeline.set_training_facts(meta.keypoint_layout, meta.pose_render or PoseRenderSpec(),
                                    clip_length=max(run.frames for run in stages))
        return export_pipeline(pipeline, folder)


def train(config: TrainConfig, session: Session) -> Progress:
    """Train every configured stage (`Trainer(config, session).train()`)."""
    return Trainer(config, session).train()


# ---------------------------------------------------------------- helpers


def _allreduce_in_fp32(process_group, bucket):  # noqa: ANN001, ANN202 (DDP checks the annotations it finds)
    """DDP communication hook: average a bucket (a `dist.GradBucket`) of bf16 gradients in fp32 (one rounding,
    not one per rank); returns the future of the averaged bucket."""
    import torch.distributed as dist

    group = process_group if process_group is not None else dist.group.WORLD
    buffer = bucket.buffer()
    total = buffer.float().div_(dist.get_world_size(group))
    future = dist.all_reduce(total, group=group, async_op=True).get_future()

    def copy_back(done: torch.futures.Future) -> torch.Tensor:
        buffer.copy_(done.value()[0])
        return buffer

    return future.then(copy_back)
