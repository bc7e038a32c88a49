"""DurianPipeline: animate a portrait with transferred attributes, driven by keypoints."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from diffusers.video_processor import VideoProcessor
from transformers import CLIPVisionModelWithProjection

from data_specs.images import images_to_tensor
from data_specs.perception import KEYPOINT_LAYOUTS, KeypointLayout, PoseRenderSpec, arcface_points
from data_specs.pose_frames import layout_with_points, render_pose_frames
from model.durian import DurianModel
from model.encoders import IResNet, prepare_references
from model.geometry import fit_similarity, retarget_keypoints, warp_affine
from model.reference_attention import UNCONDITIONAL, ReadMode

ImageLike = PIL.Image.Image | np.ndarray | torch.Tensor


@dataclass
class DurianPipelineOutput(BaseOutput):
    """frames: (F, H, W, 3) float in [0, 1] ("np"), (F, 3, H, W) tensor ("pt") or PIL images ("pil").
    portrait_mask: (H, W) float, the inference mask that was regenerated."""

    frames: np.ndarray | torch.Tensor | list[PIL.Image.Image]
    portrait_mask: np.ndarray


def _image_size(image: ImageLike) -> tuple[int, int]:
    """(H, W) of a PIL image, an (H, W[, C]) array or a ([C,] H, W) tensor."""
    if isinstance(image, PIL.Image.Image):
        return image.height, image.width
    return tuple(image.shape[:2]) if isinstance(image, np.ndarray) else tuple(image.shape[-2:])


def _processor_input(image: ImageLike) -> PIL.Image.Image | np.ndarray | torch.Tensor:
    """uint8 and bool arrays (decoded frames, masks) in the forms diffusers' processors read:
    a PIL image, or a float array in [0, 1]."""
    if isinstance(image, np.ndarray):
        return PIL.Image.fromarray(image) if image.dtype == np.uint8 else image.astype(np.float32)
    return image


DEFAULT_WINDOW = 16  # frames per denoiser call of a pipeline that records no trained clip length (AnimateDiff's)


def render_driving_pose(keypoints: np.ndarray, size: tuple[int, int], layout: KeypointLayout | None = None,
                        spec: PoseRenderSpec | None = None) -> torch.Tensor:
    """(F, K, 2) pixel keypoints, or (F, K, 3) with a confidence, -> (F, 3, H, W) pose frames in [0, 1], drawn by
    the renderer that drew the training samples' pose frames (`data_specs.pose_frames`) in `layout` (default: the
    known layout with K points) and `spec`; NaN points are not drawn."""
    points = np.asarray(keypoints, np.float32)
    xy = points[..., :2]
    finite = np.isfinite(xy).all(axis=-1, keepdims=True)
    confidence = points[..., 2:3] if points.shape[-1] == 3 else np.ones_like(xy[..., :1])
    confidence = np.where(finite, confidence, 0).astype(np.float32)
    frames = render_pose_frames(np.concatenate([np.nan_to_num(xy), confidence], axis=-1),
                                layout or layout_with_points(points.shape[1]), size, spec)
    return images_to_tensor(frames)


def retarget_driving(driving: np.ndarray, portrait: np.ndarray, layout: KeypointLayout) -> np.ndarray:
    """Driving keypoints (F, K, 2 or 3) of `layout` moved onto the portrait: (F, K, 3) with the driving
    confidence (1 where none is given).

    portrait: the portrait's own (K, 2 or 3) keypoints of the layout (its face shape is kept, the driving motion
    is added, `retarget_keypoints`), or only its (5, 2) ArcFace points (the driving face is placed on the portrait
    by the similarity that aligns its first frame's ArcFace points to them).
    """
    driving = np.asarray(driving, np.float64)
    xy = driving[..., :2]
    confidence = driving[..., 2] if driving.shape[-1] == 3 else np.ones(driving.shape[:2])
    portrait_xy = np.asarray(portrait, np.float64)[..., :2]
    if driving.shape[1] != layout.num_points:
        raise ValueError(f"driving keypoints have {driving.shape[1]} points; the model was trained on layout "
                         f"{layout.name!r} ({layout.num_points} points): extract them with the keypoint backend of "
                         "its dataset (`durian sample --driving VIDEO --perception-config BUILD.yaml`)")
    if len(portrait_xy) == layout.num_points:
        moved = retarget_keypoints(xy, portrait_xy)
    elif portrait_xy.shape == (5, 2):
        matrix = fit_similarity(arcface_points(xy[0], layout), portrait_xy)
        moved = xy @ matrix[:, :2].T + matrix[:, 2]
    else:
        raise ValueError(f"portrait keypoints must be its {layout.num_points} points of layout {layout.name!r} or "
                         f"its 5 ArcFace points, got {portrait_xy.shape}")
    return np.concatenate([moved, confidence[..., None]], axis=-1).astype(np.float32)


def _scale_keypoints(keypoints: np.ndarray, source: tuple[int, int], target: tuple[int, int]) -> np.ndarray:
    """Keypoints (..., 2), or (..., 3) with a confidence, of a (H, W) = source image -> the same points in a
    target-sized image."""
    points = np.array(keypoints, np.float64)
    points[..., :2] *= np.array([target[1] / source[1], target[0] / source[0]])
    return points


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

    Components: the `DurianModel` (a 2D denoiser after stage 1, which animates frame by frame, or one with motion
    modules), the VAE, the CLIP image encoder (attribute embeddings), the ArcFace `identity_encoder` (portrait
    identity) and a DDIM scheduler (the noise schedule of training, `NoiseScheduleSpec`).

    The config also records what guidance the model was trained with (`set_training_facts`): the keypoint layout
    and `PoseRenderSpec` of its dataset's pose frames, so driving keypoints are drawn as training drew them, and
    the clip length it was trained on, the default window. A pipeline without them (untrained) draws in the
    layout with the driving input's point count and the default `PoseRenderSpec`, over windows of 16 frames.
    """

    model_cpu_offload_seq = "image_encoder->identity_encoder->model->vae"

    def __init__(self, model: DurianModel, vae: AutoencoderKL, image_encoder: CLIPVisionModelWithProjection,
                 identity_encoder: IResNet, scheduler: DDIMScheduler, keypoint_layout: str | None = None,
                 pose_render: dict | None = None, clip_length: int | None = None) -> None:
        super().__init__()
        self.register_modules(model=model, vae=vae, image_encoder=image_encoder, identity_encoder=identity_encoder,
                              scheduler=scheduler)
        self.register_to_config(keypoint_layout=keypoint_layout, pose_render=pose_render, clip_length=clip_length)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        # Images in [0, 1] (the encoders normalise for themselves), binary masks, and decoded video.
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor, do_normalize=False,
                                                 do_convert_rgb=True)
        self.mask_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor, do_normalize=False,
                                                do_binarize=True, do_convert_grayscale=True)
        self.video_processor = VideoProcessor(vae_scale_factor=self.vae_scale_factor)

    def set_training_facts(self, keypoint_layout: str, pose_render: PoseRenderSpec, clip_length: int) -> None:
        """Record the guidance the model was trained with (saved by `save_pretrained`): the dataset's keypoint
        layout (`KeypointLayout.name`) and `PoseRenderSpec`, and the clip length of its last stage."""
        if keypoint_layout not in KEYPOINT_LAYOUTS:
            raise ValueError(f"unknown keypoint layout {keypoint_layout!r}; known: {sorted(KEYPOINT_LAYOUTS)}")
        if clip_length < 1:
            raise ValueError(f"clip_length must be positive, got {clip_length}")
        self.register_to_config(keypoint_layout=keypoint_layout, pose_render=pose_render.model_dump(mode="json"),
                                clip_length=int(clip_length))

    @property
    def trained_layout(self) -> KeypointLayout | None:
        """The keypoint layout of the training pose frames, if recorded."""
        name = self.config.get("keypoint_layout")
        return None if name is None else KEYPOINT_LAYOUTS[name]

    @property
    def trained_pose_render(self) -> PoseRenderSpec:
        """How the training pose frames were drawn (the default spec if not recorded)."""
        spec = self.config.get("pose_render")
        return PoseRenderSpec() if spec is None else PoseRenderSpec.model_validate(spec)

    @property
    def default_window(self) -> int:
        """Frames per denoiser call by default: the trained clip length, if recorded."""
        return self.config.get("clip_length") or DEFAULT_WINDOW

    def driving_pose_frames(self, driving_keypoints: np.ndarray, portrait_keypoints: np.ndarray,
                            size: tuple[int, int]) -> torch.Tensor:
        """The pose guider's input for a driving motion on this portrait: (F, 3, H, W) in [0, 1].

        The driving keypoints (F, K, 2 or 3) and the portrait's (K or 5 points) are in pixels of the (H, W) =
        size frame; they are retargeted (`retarget_driving`) and drawn in the trained layout and render spec.
        """
        layout = self.trained_layout or layout_with_points(np.shape(driving_keypoints)[1])
        keypoints = retarget_driving(driving_keypoints, portrait_keypoints, layout)
        return render_driving_pose(keypoints, size, layout, self.trained_pose_render)

    def _arcface_points(self, keypoints: np.ndarray) -> np.ndarray:
        """(5, 2) ArcFace points of an image: given as such, or taken from its points of the trained layout."""
        keypoints = np.asarray(keypoints, np.float64)
        if keypoints.shape == (5, 2):
            return keypoints
        layout = self.trained_layout or layout_with_points(len(keypoints))
        if keypoints.ndim != 2 or len(keypoints) != layout.num_points:
            raise ValueError(f"keypoints must be 5 ArcFace points or the {layout.num_points} points of layout "
                             f"{layout.name!r}, got {keypoints.shape}")
        return arcface_points(keypoints, layout).astype(np.float64)

    @property
    def size_multiple(self) -> int:
        """Frame sizes must be multiples of this: the VAE's and the UNet's downsampling."""
        return self.vae_scale_factor * 2 ** (len(self.model.denoiser.config.block_out_channels) - 1)

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

    def decode_latents(self, latents: torch.Tensor, chunk: int = 8) -> torch.Tensor:
        """Latents (B, c, F, h, w) -> video (B, 3, F, H, W) in the VAE's [-1, 1], `chunk` frames at a time."""
        frames = latents.transpose(1, 2).flatten(0, 1) / self.vae.config.scaling_factor
        video = torch.cat([self.vae.decode(part.to(self.vae.dtype)).sample for part in frames.split(chunk)])
        return video.unflatten(0, latents.shape[:1] + latents.shape[2:3]).transpose(1, 2)

    def _predict_noise(self, latents: torch.Tensor, t: torch.Tensor, pose_frames: torch.Tensor,
                       attribute_embeds: torch.Tensor, read_mode: ReadMode, guidance_scale: float) -> torch.Tensor:
        """Classifier-free guided noise for one window: latents (1, c, f, h, w)."""
        conditional = self.model.denoise(latents, t, pose_frames, attribute_embeds, read_mode)
        if guidance_scale == 1.0:
            return conditional
        unconditional = self.model.denoise(latents, t, pose_frames, attribute_embeds, UNCONDITIONAL)
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
        driving_keypoints: np.ndarray | None = None,
        alpha: float | None = None,
        attribute_weights: tuple[float, ...] | None = None,
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 25,
        guidance_scale: float = 3.5,
        window: int | None = None,
        overlap: int = 4,
        generator: torch.Generator | None = None,
        output_type: Literal["np", "pt", "pil"] = "np",
        pose_frames: torch.Tensor | None = None,
    ) -> DurianPipelineOutput:
        """Generate a clip of the portrait, wearing the attributes, following the driving keypoints.

        Args:
            portrait, portrait_mask: the portrait and the mask of its own attribute region. Images are PIL
                images, uint8 arrays, or float arrays/tensors in [0, 1] (diffusers' convention); masks the
                same, or bool arrays, white (1) on the attribute.
            portrait_keypoints: pixel keypoints of the portrait: its (K, 2 or 3) points of the trained keypoint
                layout, or only its (5, 2) ArcFace points (eyes, nose tip, mouth corners). Their ArcFace points
                align the face for the identity embedding and the attribute masks.
            attributes, attribute_masks, attribute_keypoints: one entry per attribute
                image (keypoints as the portrait's); several are composed, two with `alpha` are interpolated. The
                region regenerated is the union of all their aligned masks, whatever `alpha` or the weights.
            driving_keypoints: (F_drive, K, 2 or 3) keypoints of the driving video (any size) in the trained
                layout (see `set_training_facts`), retargeted onto the portrait's face and drawn as training
                drew its pose frames (`driving_pose_frames`).
            pose_frames: instead of `driving_keypoints`, guidance frames already rendered for this portrait,
                (F_drive, 3, H, W) in [0, 1] (e.g. a training sample's, to reconstruct it exactly).
            alpha: interpolation between exactly two attributes (0: the first, 1: the second).
            attribute_weights: per-attribute weights when composing (0 removes an attribute).
            num_frames: frames to generate (default: all driving frames).
            height, width: output size (default: the portrait's, rounded down to `size_multiple`).
            guidance_scale: classifier-free guidance scale (1 disables the unconditional branch).
            window, overlap: frames per denoiser call and their overlap, for long clips (window default: the
                trained clip length, `default_window`).
        """
        # 1. Check and size the inputs.
        if not (len(attributes) == len(attribute_masks) == len(attribute_keypoints) >= 1):
            raise ValueError("give one mask and one keypoint set per attribute image, and at least one attribute")
        if alpha is not None and len(attributes) != 2:
            raise ValueError("alpha interpolates between exactly two attributes")
        read_mode = ReadMode(alpha=alpha, attribute_weights=None if attribute_weights is None
                             else tuple(attribute_weights))
        if (driving_keypoints is None) == (pose_frames is None):
            raise ValueError("give either driving_keypoints or pose_frames")
        driving = driving_keypoints if pose_frames is None else pose_frames
        num_frames = num_frames or len(driving)
        if num_frames > len(driving):
            raise ValueError(f"{num_frames} frames asked, the driving input has {len(driving)}")
        device, dtype = self._execution_device, self.model.dtype
        source_size = _image_size(portrait)
        multiple = self.size_multiple
        size = (height or source_size[0] // multiple * multiple, width or source_size[1] // multiple * multiple)
        if size[0] % multiple or size[1] % multiple or min(size) == 0:
            raise ValueError(f"height and width must be positive multiples of {multiple}, got {size}")

        # 2. Bring everything to the output size, keypoints included: (1, 3, H, W) images, (1, 1, H, W) masks.
        def image(x: ImageLike) -> torch.Tensor:
            return self.image_processor.preprocess(_processor_input(x), *size)

        def mask(x: ImageLike) -> torch.Tensor:
            return self.mask_processor.preprocess(_processor_input(x), *size)

        portrait_points = _scale_keypoints(portrait_keypoints, source_size, size)
        portrait_kps = self._arcface_points(portrait_points)
        attribute_kps = [self._arcface_points(_scale_keypoints(k, _image_size(a), size))
                         for a, k in zip(attributes, attribute_keypoints)]
        attribute_masks_t = [mask(m)[0] for m in attribute_masks]

        # 3. Inference mask: the portrait's attribute U the aligned attribute masks.
        region = self.inference_mask(mask(portrait_mask)[0], portrait_kps, attribute_masks_t, attribute_kps)

        # 4. Retarget the driving motion onto the portrait and render the pose frames: (1, 3, F, H, W).
        if pose_frames is None:
            pose_frames = self.driving_pose_frames(np.asarray(driving_keypoints[:num_frames]), portrait_points, size)
        else:
            pose_frames = pose_frames[:num_frames].float()
            if tuple(pose_frames.shape[-2:]) != size:
                pose_frames = torch.nn.functional.interpolate(pose_frames, size=size, mode="bilinear",
                                                              antialias=True)
        pose_frames = pose_frames.transpose(0, 1)[None].to(device, dtype)

        # 5. Encode the references once for the whole clip.
        references = prepare_references(
            self.vae, self.image_encoder, self.identity_encoder,
            portrait=image(portrait).to(device), portrait_mask=region[None].to(device),
            portrait_keypoints=portrait_kps[None],
            attributes=torch.cat([image(a) for a in attributes])[None].to(device),
            attribute_masks=torch.stack(attribute_masks_t)[None].to(device),
        )
        self.model.encode_references(references)

        # 6. Initial noise and timesteps.
        shape = (1, self.vae.config.latent_channels, num_frames, size[0] // self.vae_scale_factor,
                 size[1] // self.vae_scale_factor)
        latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        latents = latents * self.scheduler.init_noise_sigma
        self.scheduler.set_timesteps(num_inference_steps, device=device)

        # 7. Denoising loop: overlapping windows, blended per step.
        window = window or self.default_window
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
                        model_input[:, :, frames], t, pose_frames[:, :, frames], references.attribute_embeds,
                        read_mode, guidance_scale).float()
                    total[frames] += weights
                noise = (noise / total[:, None, None]).to(dtype)
                latents = self.scheduler.step(noise, t, latents).prev_sample
        finally:
            self.model.clear_references()

        # 8. Decode every frame and convert to `output_type`.
        video = self.video_processor.postprocess_video(self.decode_latents(latents), output_type=output_type)
        self.maybe_free_model_hooks()
        return DurianPipelineOutput(frames=video[0], portrait_mask=region[0].cpu().numpy())
