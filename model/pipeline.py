"""DurianPipeline: animate a portrait with transferred attributes, driven by keypoints."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from torch.nn import functional as F
from transformers import CLIPVisionModelWithProjection

from model.durian import DurianModel
from model.encoders import IResNet, decode_latents, prepare_references
from model.geometry import fit_similarity, retarget_keypoints, warp_affine
from model.guidance import render_keypoints
from model.reference_attention import ReadMode

ImageLike = PIL.Image.Image | np.ndarray | torch.Tensor


@dataclass
class DurianPipelineOutput(BaseOutput):
    """frames: (F, H, W, 3) float in [0, 1] ("np"), (F, 3, H, W) tensor ("pt") or PIL images ("pil").
    portrait_mask: (H, W) float, the inference mask that was regenerated."""

    frames: np.ndarray | torch.Tensor | list[PIL.Image.Image]
    portrait_mask: np.ndarray


def _image_tensor(image: ImageLike) -> torch.Tensor:
    """PIL / (H, W, 3) uint8 or float array / (3, H, W) tensor -> (3, H, W) float in [0, 1]."""
    if isinstance(image, torch.Tensor):
        return image.float()
    array = np.asarray(image.convert("RGB") if isinstance(image, PIL.Image.Image) else image)
    tensor = torch.from_numpy(np.array(array)).permute(2, 0, 1)
    return tensor.float() / 255 if array.dtype == np.uint8 else tensor.float()


def _mask_tensor(mask: ImageLike) -> torch.Tensor:
    """PIL / (H, W) bool, uint8 or float / tensor -> (1, H, W) float in [0, 1]."""
    if isinstance(mask, torch.Tensor):
        return mask.float().reshape(1, *mask.shape[-2:])
    array = np.asarray(mask.convert("L") if isinstance(mask, PIL.Image.Image) else mask)
    if array.ndim == 3:
        array = array[..., 0]
    tensor = torch.from_numpy(np.array(array))[None]
    return tensor.float() / 255 if array.dtype == np.uint8 else tensor.float()


def _resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(C, H, W) -> (C, h, w), antialiased bilinear."""
    if tuple(image.shape[-2:]) == size:
        return image
    return F.interpolate(image[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]


def _scale_keypoints(keypoints: np.ndarray, source: tuple[int, int], target: tuple[int, int]) -> np.ndarray:
    """Keypoints (..., 2) of a (H, W) = source image -> the same points in a target-sized image."""
    scale = np.array([target[1] / source[1], target[0] / source[0]])
    return np.asarray(keypoints, np.float64) * scale


def window_starts(num_frames: int, window: int, overlap: int) -> list[int]:
    """First frame of each window; windows of `window` frames overlap by at least `overlap`
    and the last one ends on the last frame."""
    if window >= num_frames:
        return [0]
    if not 0 <= overlap < window:
        raise ValueError(f"overlap must be in [0, window), got {overlap} for window {window}")
    starts = list(range(0, num_frames - window, window - overlap))
    return starts + [num_frames - window]


def window_weights(window: int, device: torch.device) -> torch.Tensor:
    """Blending weights over a window's frames, (window,): a ramp up and down, so a
    frame covered by two windows fades from one to the other."""
    index = torch.arange(window, device=device, dtype=torch.float32)
    return torch.minimum(index + 1, window - index)


class DurianPipeline(DiffusionPipeline):
    """Portrait animation with attribute transfer.

    Components: the `DurianModel`, the VAE, the CLIP image encoder, a DDIM scheduler
    (same betas as training) and an optional ArcFace `identity_encoder` (without it,
    the portrait's identity embedding is its CLIP embedding).
    """

    model_cpu_offload_seq = "image_encoder->model->vae"
    _optional_components = ["identity_encoder"]

    def __init__(self, model: DurianModel, vae: AutoencoderKL, image_encoder: CLIPVisionModelWithProjection,
                 scheduler: DDIMScheduler, identity_encoder: IResNet | None = None) -> None:
        super().__init__()
        self.register_modules(model=model, vae=vae, image_encoder=image_encoder, scheduler=scheduler,
                              identity_encoder=identity_encoder)

    @property
    def vae_factor(self) -> int:
        """Pixels per latent along each side."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def size_multiple(self) -> int:
        """Frame sizes must be multiples of this: the VAE's and the UNet's downsampling."""
        return self.vae_factor * 2 ** (len(self.model.denoiser.config.block_out_channels) - 1)

    def inference_mask(self, portrait_mask: torch.Tensor, portrait_keypoints: np.ndarray,
                       attribute_masks: list[torch.Tensor], attribute_keypoints: list[np.ndarray]) -> torch.Tensor:
        """M = the portrait's mask U each attribute mask aligned to the portrait.

        Each attribute mask is warped by the similarity fitted from the attribute's
        face keypoints to the portrait's, so a bigger attribute (long hair, a hat)
        clears room for itself. All masks (1, H, W); returns (1, H, W).
        """
        mask = portrait_mask
        for attribute_mask, keypoints in zip(attribute_masks, attribute_keypoints):
            matrix = fit_similarity(keypoints, portrait_keypoints)
            warped = warp_affine(attribute_mask[None], matrix, tuple(portrait_mask.shape[-2:]))[0]
            mask = torch.maximum(mask, warped)
        return mask

    def _predict_noise(self, latents: torch.Tensor, t: torch.Tensor, guidance: torch.Tensor,
                       attribute_embeds: torch.Tensor, guidance_scale: float) -> torch.Tensor:
        """Classifier-free guided noise for one window: latents (1, c, f, h, w)."""
        conditional = self.model.denoise(latents, t, guidance, attribute_embeds)
        if guidance_scale == 1.0:
            return conditional
        unconditional = self.model.denoise(latents, t, guidance, torch.zeros_like(attribute_embeds),
                                           use_references=False)
        return unconditional + guidance_scale * (conditional - unconditional)

    @torch.no_grad()
    def __call__(
        self,
        portrait: ImageLike,
        portrait_mask: ImageLike,
        portrait_keypoints: np.ndarray,
        attributes: list[ImageLike],
        attribute_masks: list[ImageLike],
        attribute_keypoints: list[np.ndarray],
        driving_keypoints: np.ndarray,
        alpha: float | None = None,
        attribute_weights: tuple[float, ...] | None = None,
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 25,
        guidance_scale: float = 3.5,
        window: int = 16,
        overlap: int = 4,
        generator: torch.Generator | None = None,
        output_type: Literal["np", "pt", "pil"] = "np",
    ) -> DurianPipelineOutput:
        """Generate a clip of the portrait, wearing the attributes, following the driving keypoints.

        Args:
            portrait, portrait_mask: the portrait and the mask of its own attribute region.
            portrait_keypoints: (K, 2) pixel keypoints of the portrait.
            attributes, attribute_masks, attribute_keypoints: one entry per attribute
                image; several are composed, two with `alpha` are interpolated.
            driving_keypoints: (F_drive, K, 2) keypoints of the driving video (any size).
            alpha: interpolation between exactly two attributes (0: the first, 1: the second).
            attribute_weights: per-attribute weights when composing.
            num_frames: frames to generate (default: all driving frames).
            height, width: output size (default: the portrait's, rounded down to `size_multiple`).
            window, overlap: frames per denoiser call and their overlap, for long clips.
        """
        # 1. Check and size the inputs.
        if not (len(attributes) == len(attribute_masks) == len(attribute_keypoints) >= 1):
            raise ValueError("give one mask and one keypoint set per attribute image, and at least one attribute")
        if alpha is not None and len(attributes) != 2:
            raise ValueError("alpha interpolates between exactly two attributes")
        driving_keypoints = np.asarray(driving_keypoints, np.float64)
        num_frames = num_frames or len(driving_keypoints)
        if num_frames > len(driving_keypoints):
            raise ValueError(f"{num_frames} frames asked, the driving keypoints have {len(driving_keypoints)}")
        device, dtype = self._execution_device, self.model.dtype
        portrait_t = _image_tensor(portrait)
        source_size = tuple(portrait_t.shape[-2:])
        multiple = self.size_multiple
        size = (height or source_size[0] // multiple * multiple, width or source_size[1] // multiple * multiple)
        if size[0] % multiple or size[1] % multiple or min(size) == 0:
            raise ValueError(f"height and width must be positive multiples of {multiple}, got {size}")

        # 2. Bring everything to the output size, keypoints included.
        portrait_t = _resize(portrait_t, size)
        portrait_kps = _scale_keypoints(portrait_keypoints, source_size, size)
        portrait_mask_t = _resize(_mask_tensor(portrait_mask), size)
        attribute_images, attribute_mask_ts, attribute_kps = [], [], []
        for image, mask, keypoints in zip(attributes, attribute_masks, attribute_keypoints):
            image_t = _image_tensor(image)
            attribute_kps.append(_scale_keypoints(keypoints, tuple(image_t.shape[-2:]), size))
            attribute_images.append(_resize(image_t, size))
            attribute_mask_ts.append(_resize(_mask_tensor(mask), size))

        # 3. Inference mask: the portrait's attribute U the aligned attribute masks.
        mask = self.inference_mask(portrait_mask_t, portrait_kps, attribute_mask_ts, attribute_kps)

        # 4. Retarget the driving motion onto the portrait and render the guidance.
        keypoints = retarget_keypoints(driving_keypoints[:num_frames], portrait_kps)
        guidance = render_keypoints(keypoints, size).transpose(0, 1)[None].to(device, dtype)  # (1, 3, F, H, W)

        # 5. Encode the references once for the whole clip.
        references = prepare_references(
            self.vae, self.image_encoder, self.identity_encoder,
            portrait=portrait_t[None].to(device), portrait_mask=mask[None].to(device),
            attributes=torch.stack(attribute_images)[None].to(device),
            attribute_masks=torch.stack(attribute_mask_ts)[None].to(device),
            portrait_keypoints=portrait_kps[None] if self.identity_encoder is not None else None,
        )
        mode = ReadMode(alpha=alpha, attribute_weights=tuple(attribute_weights) if attribute_weights else None)
        self.model.encode_references(references, mode)

        # 6. Initial noise and timesteps.
        shape = (1, self.vae.config.latent_channels, num_frames, size[0] // self.vae_factor,
                 size[1] // self.vae_factor)
        latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        latents = latents * self.scheduler.init_noise_sigma
        self.scheduler.set_timesteps(num_inference_steps, device=device)

        # 7. Denoising loop: overlapping windows, blended per step.
        starts = window_starts(num_frames, window, overlap)
        span = min(window, num_frames)
        weights = window_weights(span, device)
        try:
            for t in self.progress_bar(self.scheduler.timesteps):
                model_input = self.scheduler.scale_model_input(latents, t)
                noise = torch.zeros_like(latents, dtype=torch.float32)
                total = torch.zeros(num_frames, device=device)
                for start in starts:
                    frames = slice(start, start + span)
                    noise[:, :, frames] += weights[:, None, None] * self._predict_noise(
                        model_input[:, :, frames], t, guidance[:, :, frames], references.attribute_embeds,
                        guidance_scale).float()
                    total[frames] += weights
                noise = (noise / total[:, None, None]).to(dtype)
                latents = self.scheduler.step(noise, t, latents).prev_sample
        finally:
            self.model.clear_references()

        # 8. Decode every frame.
        video = decode_latents(self.vae, latents[0].transpose(0, 1))  # (F, 3, H, W)
        self.maybe_free_model_hooks()
        if output_type == "pt":
            frames = video.cpu()
        else:
            frames = video.permute(0, 2, 3, 1).float().cpu().numpy()
            if output_type == "pil":
                frames = [PIL.Image.fromarray((frame * 255).round().astype(np.uint8)) for frame in frames]
        return DurianPipelineOutput(frames=frames, portrait_mask=mask[0].cpu().numpy())
