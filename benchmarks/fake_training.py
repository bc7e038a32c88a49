"""The training model of one stage, at real SD 1.5 widths, on fake tensors: no weights, no memory, no GPU.

Shared by `bench_step_ops.py` (ops and casts per step) and `bench_memory_estimate.py` (peak memory per rank).
The networks are built on the meta device with the trainer's own building blocks (`training.loop`:
`build_components`, `prepare_stage` under the trainer's `precision_policy`, then `forward_backward` for the
step), so what is measured is what training runs; then every tensor becomes a fake tensor on the CPU
(`FakeTensorMode`: shapes, dtypes and devices, no storage), on which the step runs through the real
dispatcher, autograd and autocast. The CPU's autocast lists are the CPU's; the casts of weights (the
point of these figures) do not depend on them.

Run against the code before issue 18 (a checkout of commit 7f780c8 first on PYTHONPATH), the same functions
build the model the way that loop did: every network in fp32, `select_trainable`, and its
`training.step.diffusion_loss` then backward.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from data_specs.model import ModelFlavour, model_flavour
from model.builders import DurianComponents, random_components
from model.durian import DurianModel, ReferenceInputs
from training.step import ModelInputs, StepOptions, step_generator

try:  # the trainer of issue 18
    from data_specs.training import TrainConfig
    from model.builders import random_motion_adapter
    from training.loop import build_components, forward_backward, make_optimizer, optimizer_step, prepare_stage
    from training.precision import precision_policy
    from training.state import StageParts
    from training.step import training_noise_scheduler

    TRAINER = True
except ImportError:  # the loop before it (commit 7f780c8)
    from model.builders import training_scheduler
    from training.step import diffusion_loss

    TRAINER = False

META = torch.device("meta")
CPU = torch.device("cpu")


@dataclass
class FakeTraining:
    """A stage's model, ready to step, on fake CPU tensors.

    masters: the fp32 masters the optimiser steps (the trained parameters themselves without separate
    masters, and always before issue 18).
    step: one loss and backward of a batch, as training runs it.
    optimizer_step: what follows backward: the trainer's `optimizer_step` (gradients to the masters, clipping,
    AdamW, working copies refreshed), or before issue 18 the loop's clip, AdamW step and zero_grad.
    """

    flavour: ModelFlavour
    stage: int
    components: DurianComponents
    masters: list[nn.Parameter]
    master_weights: object | None  # training.precision.MasterWeights (the trainer), else None
    step: Callable[[ModelInputs], torch.Tensor]
    optimizer: torch.optim.Optimizer
    optimizer_step: Callable[[], None]
    description: str

    @property
    def model(self) -> DurianModel:
        return self.components.model


def train_config(flavour: str, stage: int, frames: int, mixed_precision: str, checkpointing: bool) -> object:
    """The TrainConfig a run of `stage` would have (random init, the defaults otherwise).

    A real sd15 run needs pretrained weights (the config refuses random ones); the fake model holds no values,
    so it is validated as a tiny run and then given the flavour's architecture.
    """
    folder = tempfile.gettempdir()
    config = TrainConfig(output_dir=folder, flavour="tiny", data={"dataset": folder},
                         mixed_precision=mixed_precision, gradient_checkpointing=checkpointing,
                         stages=[{"stage": stage, "steps": 1, "frames": frames}])
    return config.model_copy(update={"flavour": flavour})


def to_fake(modules: tuple[nn.Module, ...], device: torch.device, *lists: list[nn.Parameter]
            ) -> list[list[nn.Parameter]]:
    """Give `modules` empty fake tensors on `device` (`nn.Module.to_empty`, which replaces each parameter by a
    new object: a fake tensor cannot take a meta one's place in it) and return `lists` of their parameters as
    lists of the new ones; a parameter of none of the modules (a separate fp32 master) becomes a new fake one.
    Call inside the FakeTensorMode."""
    names = {id(p): (index, name) for index, module in enumerate(modules) for name, p in module.named_parameters()}
    for module in modules:
        module.to_empty(device=device)
    new = [dict(module.named_parameters()) for module in modules]

    def fake(parameter: nn.Parameter) -> nn.Parameter:
        if id(parameter) in names:
            index, name = names[id(parameter)]
            return new[index][name]
        empty = torch.empty(parameter.shape, dtype=parameter.dtype, device=device)
        return nn.Parameter(empty, requires_grad=parameter.requires_grad)

    return [[fake(p) for p in parameters] for parameters in lists]


def build(fake_mode: FakeTensorMode, flavour_name: str, stage: int, frames: int, mixed_precision: str = "bf16",
          checkpointing: bool = False, device: torch.device = CPU) -> FakeTraining:
    """Build the stage's model as the trainer prepares it, on the meta device, then make it fake.

    mixed_precision: the trainer's `TrainConfig.mixed_precision` ("bf16": networks held in bf16, fp32 masters;
    "no": fp32). Before issue 18 the loop held every network in fp32 under bf16 autocast whatever this says.
    """
    flavour = model_flavour(flavour_name)
    if TRAINER:
        config = train_config(flavour_name, stage, frames, mixed_precision, checkpointing)
        policy = precision_policy(config.mixed_precision, device, config.fp32_vae)
        with torch.device(META):
            components = build_components(config, META)
            # As `Trainer.__init__` holds the frozen encoders.
            policy.apply([components.image_encoder, components.identity_encoder], components.vae, META)
            master_weights = prepare_stage(components.model, stage, policy,
                                           lambda: random_motion_adapter(flavour, seed=config.seed),
                                           config.gradient_checkpointing)
        scheduler = training_noise_scheduler(components.scheduler)
        options = StepOptions(config.noise_offset, config.min_snr_gamma, config.reference_dropout,
                              autocast=policy.autocast)
        masters = master_weights.masters
        description = (f"trainer (training.loop.prepare_stage + forward_backward), mixed_precision="
                       f"{mixed_precision}: working dtype {str(policy.working_dtype).removeprefix('torch.')}, "
                       f"autocast {policy.autocast}")

        def step(inputs: ModelInputs) -> torch.Tensor:
            return forward_backward(components.model, scheduler, inputs, options, generator(device))
    else:
        with torch.device(META):
            components = random_components(flavour, seed=0)
        masters = components.model.select_trainable(stage)
        if checkpointing:
            components.model.denoiser.enable_gradient_checkpointing()
        master_weights = None
        scheduler = training_scheduler(flavour.noise_schedule)
        options = StepOptions(autocast=True)
        description = "loop before issue 18 (7f780c8): fp32 networks, bf16 autocast, diffusion_loss + backward"

        def step(inputs: ModelInputs) -> torch.Tensor:
            loss = diffusion_loss(components.model, scheduler, inputs, options, generator(device))
            loss.backward()
            components.model.clear_references()
            return loss.detach()

    modules = (components.model, components.vae, components.image_encoder, components.identity_encoder)
    with fake_mode:
        if master_weights is None:
            (masters,) = to_fake(modules, device, masters)
        else:  # the trainer's masters and working copies, on the fake model
            master_weights.working, master_weights.masters = to_fake(modules, device, master_weights.working,
                                                                     master_weights.masters)
            masters = master_weights.masters
        if TRAINER:
            # As on each of several ranks: the working gradients are DDP's bucket views, kept and zeroed in place.
            master_weights.grads_in_buckets = True
            optimizer = make_optimizer(config.optim, config.optim.learning_rate, masters, device)
            parts = StageParts(master_weights, optimizer, schedule=SimpleNamespace(step=lambda: None), ema=None)

            def step_optimizer() -> None:
                optimizer_step(parts, config.optim.grad_clip)  # the trainer's own optimiser side
        else:
            optimizer = torch.optim.AdamW(masters, lr=1e-5, weight_decay=1e-2)

            def step_optimizer() -> None:
                torch.nn.utils.clip_grad_norm_(masters, 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
    return FakeTraining(flavour, stage, components, masters, master_weights, step, optimizer, step_optimizer,
                        description)


def generator(device: torch.device) -> torch.Generator:
    """The step's generator (its draws are fake: only shapes matter here)."""
    return step_generator(seed=0, rank=0, step=0, device=device)


def make_inputs(training: FakeTraining, batch: int, frames: int, latent: int, device: torch.device = CPU
                ) -> ModelInputs:
    """A batch as the model sees it (precomputed target latents, encoded references), fake, in fp32 like
    `training.step.model_inputs` returns it; call inside the FakeTensorMode."""
    flavour, model = training.flavour, training.model
    pixels = latent * flavour.vae.vae_scale_factor
    cross = flavour.unet.cross_attention_dim
    identity = model.identity_proj.in_features if isinstance(model.identity_proj, nn.Linear) else cross
    with torch.device(device):
        return ModelInputs(
            latents=torch.empty(batch, 4, frames, latent, latent),
            pose_frames=torch.empty(batch, 3, frames, pixels, pixels),
            references=ReferenceInputs(
                portrait=torch.empty(batch, 5, latent, latent),
                attributes=torch.empty(batch, 1, 5, latent, latent),
                identity_embeds=torch.empty(batch, 1, identity),
                attribute_embeds=torch.empty(batch, 1, cross),
            ),
        )


class HostSyncs(TorchDispatchMode):
    """Answers host reads (`.item()`, `bool(tensor)`: `aten._local_scalar_dense`, which a fake tensor cannot
    answer) and counts them: a bool with False, a number with 1. Before issue 18 the step read one: whether to
    drop the references (answered False: the references run, as in 90 % of the steps); AdamW on the CPU reads
    its step count (1: its bias corrections stay finite)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 (torch's signature)
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
            return False if args[0].dtype == torch.bool else 1
        return func(*args, **(kwargs or {}))


def parameter_bytes(tensors: list[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)

