"""One Durian training step, the only place it lives (the loop and `benchmarks/bench_model.py` call it).

Self-reconstruction: the targets are noised at a random timestep and the model predicts the noise
from the masked references, the targets' guidance frames and the timestep. Loss: MSE on the noise,
weighted by min-SNR; a noise offset; on `reference_dropout` of the steps the references and image
embeddings are dropped together, exactly as the unconditional branch of classifier-free guidance
at inference. Every random draw comes from the step's generator, seeded by (seed, rank, step), so a
resumed run draws what an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler
from diffusers.training_utils import compute_snr
from transformers import CLIPVisionModelWithProjection

from model.durian import DurianModel, ReferenceInputs
from model.encoders import IResNet, encode_latents, prepare_references


@dataclass(frozen=True)
class StepOptions:
    noise_offset: float = 0.05
    min_snr_gamma: float | None = 5.0
    reference_dropout: float = 0.1
    autocast: bool = False  # bf16 autocast (GPU)


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


def step_generator(seed: int, rank: int, step: int, device: torch.device) -> torch.Generator:
    """The generator of one step on one rank: ranks draw different noise, and a resumed run the same noise."""
    generator = torch.Generator(device=device)
    generator.manual_seed(hash((seed, rank, step)) & 0x7FFF_FFFF_FFFF_FFFF)
    return generator


@torch.no_grad()
def model_inputs(encoders: Encoders, batch: object, device: torch.device) -> ModelInputs:
    """Latents of the targets (precomputed when the shards hold them) and the encoded references.

    batch: a `training.data.TrainingBatch` (targets (B, F, 3, H, W) in [-1, 1], references in [0, 1]).
    """
    targets = batch.targets.to(device)
    b, f = targets.shape[:2]
    if batch.latents and "target" in batch.latents:
        latents = batch.latents["target"].to(device, torch.float32)  # (B, F, c, h, w)
    else:
        latents = encode_latents(encoders.vae, (targets.flatten(0, 1) + 1) / 2).unflatten(0, (b, f))
    references = prepare_references(
        encoders.vae, encoders.image_encoder, encoders.identity_encoder,
        portrait=batch.portrait_image.to(device), portrait_mask=batch.portrait_mask.to(device),
        portrait_keypoints=batch.portrait_keypoints,
        attributes=batch.attribute_ref.to(device)[:, None], attribute_masks=batch.attribute_mask.to(device)[:, None])
    return ModelInputs(latents=latents.transpose(1, 2).float(), pose_frames=batch.pose_frames.to(device),
                       references=references)


def diffusion_loss(model: DurianModel, scheduler: DDPMScheduler, inputs: ModelInputs, options: StepOptions,
                   generator: torch.Generator) -> torch.Tensor:
    """The weighted noise-prediction loss of one batch (backward is the caller's)."""
    latents = inputs.latents
    device = latents.device
    b, c = latents.shape[:2]
    noise = torch.randn(latents.shape, generator=generator, device=device)
    if options.noise_offset:
        # One offset per clip and channel, shared by its frames (the clip's mean brightness).
        noise = noise + options.noise_offset * torch.randn((b, c, 1, 1, 1), generator=generator, device=device)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (b,), generator=generator, device=device)
    drop = bool(torch.rand((), generator=generator, device=device) < options.reference_dropout)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=options.autocast):
        prediction = model(noisy, timesteps, inputs.pose_frames, inputs.references, drop_references=drop)
    target = noise if scheduler.config.prediction_type == "epsilon" else scheduler.get_velocity(latents, noise,
                                                                                                 timesteps)
    per_sample = F.mse_loss(prediction.float(), target, reduction="none").mean(dim=(1, 2, 3, 4))
    if options.min_snr_gamma is not None:
        snr = compute_snr(scheduler, timesteps)
        weight = torch.clamp(snr, max=options.min_snr_gamma) / snr
        if scheduler.config.prediction_type == "v_prediction":
            weight = weight * snr / (snr + 1)
        per_sample = per_sample * weight
    return per_sample.mean()
