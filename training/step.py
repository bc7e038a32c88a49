"""One Durian training step, the only place it lives (the trainer and `benchmarks/bench_model.py` call it).

Self-reconstruction: the targets are noised at a random timestep and the model predicts, from the masked
references, the targets' guidance frames and the timestep, what the model's noise schedule says it predicts
(v with the default zero-terminal-SNR schedule, else the noise). Loss: MSE weighted by min-SNR (in the form
that fits the prediction type); a noise offset; each sample drops its references and image embeddings with
probability `reference_dropout`, exactly as the unconditional branch of classifier-free guidance at inference.
Every random draw comes from the step's generator, seeded by (seed, rank, step), so ranks draw different noise
and a resumed run draws what an uninterrupted one would. Nothing here waits for the device: the loss stays a
device tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, SchedulerMixin
from diffusers.training_utils import compute_snr
from transformers import CLIPVisionModelWithProjection

from model.durian import DurianModel, ReferenceInputs
from model.encoders import IResNet, encode_latents, prepare_references


@dataclass(frozen=True)
class StepOptions:
    noise_offset: float = 0.05
    min_snr_gamma: float | None = 5.0
    reference_dropout: float = 0.1
    autocast: bool = False  # bf16 autocast (mixed precision: `training.precision`)


@dataclass
class Encoders:
    """The frozen networks that turn a batch's images into the model's inputs."""

    vae: AutoencoderKL
    image_encoder: CLIPVisionModelWithProjection
    identity_encoder: IResNet


@dataclass
class ModelInputs:
    """A batch as the denoiser sees it."""

    latents: torch.Tensor  # (B, c, F, h, w)
    pose_frames: torch.Tensor  # (B, 3, F, H, W) in [0, 1]
    references: ReferenceInputs


def training_noise_scheduler(inference: SchedulerMixin) -> DDPMScheduler:
    """The DDPM scheduler that noises training targets on the model's own schedule: the one its pipeline
    samples with (`inference`, saved with the pipeline), so training and sampling never disagree."""
    return DDPMScheduler.from_config(inference.config)


def step_generator(seed: int, rank: int, step: int, device: torch.device) -> torch.Generator:
    """The generator of one step on one rank: ranks draw different noise, and a resumed run the same noise."""
    generator = torch.Generator(device=device)
    generator.manual_seed(hash((seed, rank, step)) & 0x7FFF_FFFF_FFFF_FFFF)
    return generator


@torch.no_grad()
def model_inputs(encoders: Encoders, batch: object, device: torch.device, stored_latents: bool = True) -> ModelInputs:
    """Latents of the targets (precomputed when the shards hold them) and the encoded references.

    The target latents are the VAE posterior's mode (its mean), like the precomputed ones: a function of the
    image alone; SD's VAE posterior is so narrow that sampling it would add noise far below the diffusion's.

    batch: a `training.data.TrainingBatch` (targets (B, F, 3, H, W) in [-1, 1], references in [0, 1]).
    stored_latents: use the batch's latents when it has them (False: they are not this VAE's).
    """
    # Asynchronous copies: the loader pins its batches when the device is a GPU (`training.data.pins_batches`).
    targets = batch.targets.to(device, non_blocking=True)
    b, f = targets.shape[:2]
    if stored_latents and batch.latents and "target" in batch.latents:
        # (B, F, c, h, w), posterior modes, stored as float16: copied, then widened on the device.
        latents = batch.latents["target"].to(device, non_blocking=True).float()
    else:
        latents = encode_latents(encoders.vae, (targets.flatten(0, 1) + 1) / 2).unflatten(0, (b, f))
    references = prepare_references(
        encoders.vae, encoders.image_encoder, encoders.identity_encoder,
        portrait=batch.portrait_image.to(device, non_blocking=True),
        portrait_mask=batch.portrait_mask.to(device, non_blocking=True),
        portrait_keypoints=batch.portrait_keypoints,
        attributes=batch.attribute_ref.to(device, non_blocking=True)[:, None],
        attribute_masks=batch.attribute_mask.to(device, non_blocking=True)[:, None])
    pose_frames = batch.pose_frames.to(device, non_blocking=True)
    return ModelInputs(latents=latents.transpose(1, 2).float(), pose_frames=pose_frames, references=references)


def min_snr_weights(scheduler: DDPMScheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023) of `timesteps` (B,), for the scheduler's prediction type.

    For the noise (epsilon): min(SNR, gamma) / SNR, whose limit at zero SNR is 1; for v: min(SNR, gamma) /
    (SNR + 1), 0 at zero SNR. Finite at every timestep, zero-terminal-SNR schedules included.
    """
    snr = compute_snr(scheduler, timesteps)
    clamped = torch.clamp(snr, max=gamma)
    if scheduler.config.prediction_type == "v_prediction":
        return clamped / (snr + 1)
    return torch.where(snr > 0, clamped / snr.clamp(min=torch.finfo(snr.dtype).tiny), torch.ones_like(snr))


def diffusion_loss(model: DurianModel, scheduler: DDPMScheduler, inputs: ModelInputs, options: StepOptions,
                   generator: torch.Generator) -> torch.Tensor:
    """The weighted loss of one batch, a 0-d device tensor (backward is the caller's).

    model: the `DurianModel`, or a wrapper that calls it (DistributedDataParallel).
    """
    latents = inputs.latents
    device = latents.device
    b, c = latents.shape[:2]
    noise = torch.randn(latents.shape, generator=generator, device=device)
    if options.noise_offset:
        # One offset per clip and channel, shared by its frames (the clip's mean brightness).
        noise = noise + options.noise_offset * torch.randn((b, c, 1, 1, 1), generator=generator, device=device)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (b,), generator=generator, device=device)
    drop = torch.rand((b,), generator=generator, device=device) < options.reference_dropout
    noisy = scheduler.add_noise(latents, noise, timesteps)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=options.autocast):
        prediction = model(noisy, timesteps, inputs.pose_frames, inputs.references, drop_references=drop)
    target = noise if scheduler.config.prediction_type == "epsilon" else scheduler.get_velocity(latents, noise,
                                                                                                 timesteps)
    per_sample = F.mse_loss(prediction.float(), target, reduction="none").mean(dim=(1, 2, 3, 4))
    if options.min_snr_gamma is not None:
        per_sample = per_sample * min_snr_weights(scheduler, timesteps, options.min_snr_gamma)
    return per_sample.mean()
