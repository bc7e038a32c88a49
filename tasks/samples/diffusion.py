"""The diffusion models of the training-sample processor: mask-expansion generation, inpainting, VAE latents.

- `MaskGenerator`: the paper's mask expansion draws an image conditioned on the frame's keypoints (an OpenPose
  ControlNet on SD 1.5 or SDXL, given the keypoints in its own training format: `GenerateConfig.condition`),
  prompted for a larger attribute; its attribute mask widens M_port_train.
- `Inpainter`: paints the area an augmentation's affine warp exposed; every other pixel stays as it was.
- `LatentEncoder`: the VAE latents the trainer would otherwise compute every step.

Each is a model component in the style of `tasks.perception`: a cheap `__init__(config)` that pickles
into a Ray actor, `setup()` loading the weights once per worker, batched numpy uint8 calls, a
`provenance` string and the `resources` it asks for. Weights come from a local diffusers folder or a
hub id (from the local Hugging Face cache unless `allow_download`). Flavour 'tiny' builds the same
pipeline classes with small random weights under a fixed seed, so tests and the demo run the
production code on a CPU in seconds (their images are noise).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    StableDiffusionControlNetPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionXLControlNetPipeline,
    StableDiffusionXLInpaintPipeline,
    UNet2DConditionModel,
)
from tokenizers import pre_tokenizers
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from data_specs.images import images_to_tensor
from data_specs.model import SD15_NOISE_SCHEDULE, model_flavour
from data_specs.training_samples import (
    DEFAULT_CONTROLNET_WEIGHTS,
    DEFAULT_INPAINT_WEIGHTS,
    GenerateConfig,
    InpaintConfig,
    LatentConfig,
)
from model.builders import inference_scheduler, random_components
from model.encoders import encode_latents
from tasks.perception.runtime import ModelComponent, batches, check_images, resolve_device
from weight_files.tensors import weights_fingerprint

SIZE_MULTIPLE = 8  # SD pipelines take sides divisible by the VAE's downsampling
TINY_MAX_TOKENS = 77  # CLIP's prompt length, so prompts truncate as they do with the real tokenizer
# A tiny VAE with SD's four levels: the same 8x downsampling, so sizes round as in production.
_TINY_VAE = {"block_out_channels": (8, 16, 16, 16), "down_block_types": ("DownEncoderBlock2D",) * 4,
             "up_block_types": ("UpDecoderBlock2D",) * 4, "layers_per_block": 1, "norm_num_groups": 8,
             "latent_channels": 4, "sample_size": 64}
_TINY_CONDITIONING_CHANNELS = (8, 16, 16, 32)  # three stride-2 convolutions: the condition meets 8x latents

T = TypeVar("T")


# ---------------------------------------------------------------- tiny random pipelines


def tiny_clip_tokenizer() -> CLIPTokenizer:
    """A CLIP tokenizer built offline: CLIP's byte-level BPE over a vocabulary of the 256 byte symbols (each
    also with the end-of-word suffix `</w>`) and no merges, so every character is a token."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = [*alphabet, *(symbol + "</w>" for symbol in alphabet), "<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={token: i for i, token in enumerate(tokens)}, merges=[],
                         model_max_length=TINY_MAX_TOKENS)


def _tiny_parts(unet_in_channels: int) -> dict:
    """UNet (the tiny Durian flavour's), VAE, text encoder, tokenizer and DDIM scheduler, in the current RNG."""
    flavour = model_flavour("tiny")
    tokenizer = tiny_clip_tokenizer()
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=flavour.unet.cross_attention_dim, intermediate_size=37,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=TINY_MAX_TOKENS,
        projection_dim=flavour.unet.cross_attention_dim, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    unet = UNet2DConditionModel(**flavour.unet.diffusers_config(unet_in_channels),
                                sample_size=_TINY_VAE["sample_size"] // SIZE_MULTIPLE)
    return {"vae": AutoencoderKL(**_TINY_VAE).eval(), "text_encoder": text_encoder.eval(), "tokenizer": tokenizer,
            "unet": unet.eval(), "scheduler": inference_scheduler(SD15_NOISE_SCHEDULE)}


def tiny_controlnet_pipeline(seed: int = 0) -> StableDiffusionControlNetPipeline:
    """The SD 1.5 ControlNet pipeline with small random weights drawn under `seed` (float32, CPU).

    A fresh ControlNet's output convolutions are zero (it starts as a no-op); here they are random too,
    so that the condition changes the image as a trained ControlNet's does.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        parts = _tiny_parts(unet_in_channels=4)
        controlnet = ControlNetModel.from_unet(parts["unet"], load_weights_from_unet=False,
                                               conditioning_embedding_out_channels=_TINY_CONDITIONING_CHANNELS)
        for conv in (*controlnet.controlnet_cond_embedding.modules(), *controlnet.controlnet_down_blocks,
                     controlnet.controlnet_mid_block):
            if isinstance(conv, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(conv.weight)
                torch.nn.init.zeros_(conv.bias)
    return StableDiffusionControlNetPipeline(**parts, controlnet=controlnet.eval(), safety_checker=None,
                                             feature_extractor=None, requires_safety_checker=False)


def tiny_inpaint_pipeline(seed: int = 0) -> StableDiffusionInpaintPipeline:
    """The SD 1.5 inpainting pipeline with small random weights drawn under `seed` (float32, CPU); its UNet
    reads 9 channels: noisy latents, the mask and the masked image's latents."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        parts = _tiny_parts(unet_in_channels=9)
    return StableDiffusionInpaintPipeline(**parts, safety_checker=None, feature_extractor=None,
                                          requires_safety_checker=False)


# ---------------------------------------------------------------- loading and array helpers


def _from_pretrained(load: Callable[..., T], source: str, what: str, allow_download: bool, **kwargs) -> T:
    """`load(source, ...)` for a local folder or a hub id, with whatever cannot be found (a missing folder or
    weight file, a hub id not in the local cache) reported as a FileNotFoundError naming it."""
    folder = Path(source).expanduser()
    if not folder.exists() and (source.count("/") != 1 or source.startswith((".", "/", "~"))):
        raise FileNotFoundError(f"{what} not found: {source} is neither a folder nor a hub id (namespace/name)")
    try:
        return load(str(folder) if folder.exists() else source, local_files_only=not allow_download, **kwargs)
    except OSError as error:  # how diffusers and huggingface_hub report missing files and cache misses
        if folder.exists():
            problem = f"could not load the {what} from folder {source}"
        elif allow_download:
            problem = f"could not download the {what} {source}"
        else:
            problem = (f"{what} {source} is not a local folder and not in the local Hugging Face cache: give a "
                       "diffusers folder, or set allow_download: true to fetch it")
        raise FileNotFoundError(f"{problem} ({error})") from error


def _placed(model: T, device: torch.device, dtype: torch.dtype) -> T:
    """A pipeline or model moved to `device` in `dtype`, casting only when the dtype differs (diffusers
    warns on every cast)."""
    return model.to(device=device) if model.dtype == dtype else model.to(device=device, dtype=dtype)


def _check_count(count: int, name: str, values: Sequence) -> None:
    if len(values) != count:
        raise ValueError(f"{name}: expected one per image ({count}), got {len(values)}")


def _check_batch(images: object, name: str) -> None:
    check_images(images, name)
    if len(images) == 0:
        raise ValueError(f"{name}: no images")


def _rounded(height: int, width: int) -> tuple[int, int]:
    """The nearest size the pipelines accept: each side a positive multiple of 8."""
    return tuple(max(SIZE_MULTIPLE, round(side / SIZE_MULTIPLE) * SIZE_MULTIPLE) for side in (height, width))


def _resize(images: np.ndarray, size: tuple[int, int], interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """(n, H, W[, C]) images resized to size (height, width); unchanged when already that size."""
    if images.shape[1:3] == size:
        return images
    return np.stack([cv2.resize(image, size[::-1], interpolation=interpolation) for image in images])


def _uint8(images: np.ndarray) -> np.ndarray:
    """The pipelines' `output_type="np"` images (float in [0, 1]) as uint8."""
    return (np.clip(images, 0, 1) * 255).round().astype(np.uint8)


def _generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One generator per image: an image depends on its own seed only, not on its batch.

    CPU generators: diffusers draws the starting noise on the CPU and moves it, so a seed gives the same
    noise on every device.
    """
    return [torch.Generator("cpu").manual_seed(int(seed)) for seed in seeds]


# ---------------------------------------------------------------- components


class _DiffusionComponent(ModelComponent):
    """A model component (config, resources, the setup check) running a diffusers pipeline or model."""

    config: GenerateConfig | InpaintConfig | LatentConfig

    def _device_dtype(self) -> tuple[torch.device, torch.dtype]:
        """Half precision on CUDA (what these weights are run in), float32 on the CPU (half is slow or missing)."""
        device = resolve_device(self.config.runtime)
        return device, torch.float16 if device.type == "cuda" else torch.float32


class MaskGenerator(_DiffusionComponent):
    """Images of a frame's rendered keypoints, prompted for a larger attribute (the paper's mask expansion)."""

    config: GenerateConfig
    model: StableDiffusionControlNetPipeline | StableDiffusionXLControlNetPipeline | None

    def _sources(self) -> tuple[str, str]:
        base, controlnet = DEFAULT_CONTROLNET_WEIGHTS[self.config.flavour]
        return self.config.base_model or base, self.config.controlnet or controlnet

    @property
    def provenance(self) -> str:
        if self.config.flavour == "tiny":
            return "tiny random controlnet (seed 0)"
        base, controlnet = self._sources()
        return f"controlnet {controlnet} on {base}"

    def setup(self) -> None:
        """Load (or build) the pipeline onto the device; once per worker."""
        cfg = self.config
        device, dtype = self._device_dtype()
        if cfg.flavour == "tiny":
            pipeline = tiny_controlnet_pipeline(seed=0)
        else:
            base, controlnet_source = self._sources()
            controlnet = _from_pretrained(ControlNetModel.from_pretrained, controlnet_source, "ControlNet",
                                          cfg.allow_download, dtype=dtype)
            if cfg.flavour == "sd15":
                pipeline = _from_pretrained(StableDiffusionControlNetPipeline.from_pretrained, base,
                                            "base pipeline", cfg.allow_download, controlnet=controlnet,
                                            safety_checker=None, requires_safety_checker=False, dtype=dtype)
            else:
                pipeline = _from_pretrained(StableDiffusionXLControlNetPipeline.from_pretrained, base,
                                            "base pipeline", cfg.allow_download, controlnet=controlnet,
                                            dtype=dtype)
        pipeline.set_progress_bar_config(disable=True)
        self.model = _placed(pipeline, device, dtype)

    def generate(self, conditions: np.ndarray, prompts: Sequence[str], seeds: Sequence[int]) -> np.ndarray:
        """(N, H, W, 3) uint8 RGB images for (N, H, W, 3) uint8 RGB condition images (keypoints drawn as the
        ControlNet expects, `tasks.samples.expansion.condition_images`), one prompt and seed each.

        The pipeline runs at the nearest multiple-of-8 size; images come back at the conditions' size.
        """
        self._check_setup()
        _check_batch(conditions, "conditions")
        _check_count(len(conditions), "prompts", prompts)
        _check_count(len(conditions), "seeds", seeds)
        cfg = self.config
        height, width = conditions.shape[1:3]
        size = _rounded(height, width)
        images = np.empty_like(conditions)
        for part in batches(len(conditions), cfg.runtime.batch_size):
            count = part.stop - part.start
            with torch.inference_mode():
                painted = self.model(
                    prompt=list(prompts[part]), negative_prompt=[cfg.negative_prompt] * count,
                    image=images_to_tensor(_resize(conditions[part], size)), height=size[0], width=size[1],
                    num_inference_steps=cfg.steps, guidance_scale=cfg.guidance_scale,
                    controlnet_conditioning_scale=cfg.conditioning_scale, generator=_generators(seeds[part]),
                    output_type="np").images
            images[part] = _resize(_uint8(painted), (height, width))
        return images


class Inpainter(_DiffusionComponent):
    """Paints where a mask says (the area an augmentation exposed) and leaves every other pixel exactly as is."""

    config: InpaintConfig
    model: StableDiffusionInpaintPipeline | StableDiffusionXLInpaintPipeline | None

    def _source(self) -> str:
        return self.config.model or DEFAULT_INPAINT_WEIGHTS[self.config.flavour]

    @property
    def provenance(self) -> str:
        if self.config.flavour == "tiny":
            return "tiny random inpainting (seed 0)"
        return f"inpainting {self._source()}"

    def setup(self) -> None:
        """Load (or build) the pipeline onto the device; once per worker."""
        cfg = self.config
        device, dtype = self._device_dtype()
        if cfg.flavour == "tiny":
            pipeline = tiny_inpaint_pipeline(seed=0)
        elif cfg.flavour == "sd15":
            pipeline = _from_pretrained(StableDiffusionInpaintPipeline.from_pretrained, self._source(),
                                        "inpainting pipeline", cfg.allow_download, safety_checker=None,
                                        requires_safety_checker=False, dtype=dtype)
        else:
            pipeline = _from_pretrained(StableDiffusionXLInpaintPipeline.from_pretrained, self._source(),
                                        "inpainting pipeline", cfg.allow_download, dtype=dtype)
        pipeline.set_progress_bar_config(disable=True)
        self.model = _placed(pipeline, device, dtype)

    def inpaint(self, images: np.ndarray, masks: np.ndarray, seeds: Sequence[int]) -> np.ndarray:
        """(N, H, W, 3) uint8 RGB images with the (N, H, W) bool `masks` (True: paint here) painted over.

        The pipeline runs at the nearest multiple-of-8 size; its output is resized back and composited,
        so pixels outside the mask are returned unchanged (the VAE round trip would alter them).
        """
        self._check_setup()
        _check_batch(images, "images")
        masks = np.asarray(masks)
        if masks.dtype != np.bool_ or masks.shape != images.shape[:3]:
            raise ValueError(f"masks must be a {images.shape[:3]} bool array, got {masks.shape} {masks.dtype}")
        _check_count(len(images), "seeds", seeds)
        cfg = self.config
        height, width = images.shape[1:3]
        size = _rounded(height, width)
        result = images.copy()
        for part in batches(len(images), cfg.runtime.batch_size):
            count = part.stop - part.start
            mask = _resize(masks[part].astype(np.uint8), size, cv2.INTER_NEAREST)
            with torch.inference_mode():
                painted = self.model(
                    prompt=[cfg.prompt] * count, image=images_to_tensor(_resize(images[part], size)),
                    mask_image=torch.from_numpy(mask).float()[:, None], height=size[0], width=size[1],
                    num_inference_steps=cfg.steps, guidance_scale=cfg.guidance_scale,
                    generator=_generators(seeds[part]), output_type="np").images
            painted = _resize(_uint8(painted), (height, width))
            result[part] = np.where(masks[part][..., None], painted, images[part])
        return result


class LatentEncoder(_DiffusionComponent):
    """The VAE latents the trainer reads instead of encoding every step."""

    config: LatentConfig
    model: AutoencoderKL | None
    weights_fingerprint: str | None = None  # `weight_files.tensors.weights_fingerprint` of the VAE, once set up

    def _source(self) -> str | None:
        """The diffusers folder or hub id holding `vae/`; None: the tiny flavour's seeded random VAE."""
        if self.config.vae is not None or self.config.flavour != "tiny":
            return self.config.vae or DEFAULT_CONTROLNET_WEIGHTS["sd15"][0]
        return None

    @property
    def provenance(self) -> str:
        source = self._source()
        return "tiny random VAE (Durian tiny flavour, seed 0)" if source is None else f"VAE of {source}"

    def setup(self) -> None:
        """Load the VAE onto the device; once per worker."""
        device, dtype = self._device_dtype()
        source = self._source()
        if source is None:  # the very VAE `random_components` gives the tiny Durian model
            vae = random_components(model_flavour("tiny"), seed=0).vae
        else:
            vae = _from_pretrained(AutoencoderKL.from_pretrained, source, "VAE", self.config.allow_download,
                                   subfolder="vae", dtype=dtype)
        spec = model_flavour(self.config.flavour).vae
        if (vae.config.latent_channels, len(vae.config.block_out_channels)) != (
                spec.latent_channels, len(spec.block_out_channels)):
            scale = 2 ** (len(vae.config.block_out_channels) - 1)
            raise ValueError(f"the {self.provenance} does not make {self.config.flavour} latents: it has "
                             f"{vae.config.latent_channels} channels at 1/{scale} size, the flavour "
                             f"{spec.latent_channels} at 1/{spec.vae_scale_factor}")
        self.weights_fingerprint = weights_fingerprint(vae)  # recorded with the latents; training checks it
        self.model = _placed(vae.eval(), device, dtype)

    def encode(self, images: np.ndarray) -> np.ndarray:
        """(N, C, H/f, W/f) float16 latents, already multiplied by the VAE's scaling factor (f: its
        downsampling, 8 for SD 1.5; odd sides round down), of (N, H, W, 3) uint8 RGB images.

        The posterior's mean, not a sample: the stored latents stay a function of the image alone, and
        SD's VAE posterior is so narrow that sampling would only add noise far below the diffusion noise.
        """
        self._check_setup()
        _check_batch(images, "images")
        latents = []
        for part in batches(len(images), self.config.runtime.batch_size):
            mean = encode_latents(self.model, images_to_tensor(images[part]))
            latents.append(mean.to(torch.float16).cpu().numpy())
        return np.concatenate(latents)
