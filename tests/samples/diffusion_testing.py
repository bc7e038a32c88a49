"""Tiny random diffusion weights saved in diffusers' official folder layouts, and inputs for the diffusion tests.

The folders are what real weights look like on disk (`model_index.json` with `unet/`, `vae/`,
`text_encoder/`, `tokenizer/`, `scheduler/`; a ControlNet folder with `config.json` and
`diffusion_pytorch_model.safetensors`), so the flavours 'sd15' load them through the same
`from_pretrained` calls as downloaded weights.
"""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import cv2
import numpy as np
from diffusers import StableDiffusionPipeline

from data_specs.model import model_flavour
from data_specs.spec import RuntimeConfig
from model.builders import random_components
from tasks.samples.diffusion import tiny_controlnet_pipeline, tiny_inpaint_pipeline

CPU = RuntimeConfig(device="cpu", batch_size=2)


def save_controlnet_weights(root: Path, seed: int = 0) -> tuple[Path, Path]:
    """`tiny_controlnet_pipeline(seed)` saved as an SD 1.5 base folder (no ControlNet in it, as the real base
    is) and a separate ControlNet folder; returns (base, controlnet)."""
    pipeline = tiny_controlnet_pipeline(seed)
    parts = {name: getattr(pipeline, name) for name in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")}
    base = StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    base.save_pretrained(root / "base")
    pipeline.controlnet.save_pretrained(root / "controlnet")
    return root / "base", root / "controlnet"


def save_inpaint_weights(root: Path, seed: int = 0) -> Path:
    """`tiny_inpaint_pipeline(seed)` saved as an SD 1.5 inpainting folder."""
    tiny_inpaint_pipeline(seed).save_pretrained(root / "inpaint")
    return root / "inpaint"


def save_tiny_vae(root: Path) -> Path:
    """A folder whose `vae/` holds the tiny Durian flavour's seeded VAE (as a saved DurianPipeline has)."""
    random_components(model_flavour("tiny"), seed=0).vae.save_pretrained(root / "vae")
    return root


def keypoint_images(count: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """(count, height, width, 3) uint8 renderings of random keypoints joined by limbs, on black."""
    rng = np.random.default_rng(seed)
    images = np.zeros((count, height, width, 3), np.uint8)
    for image in images:
        points = rng.uniform((0.2 * width, 0.2 * height), (0.8 * width, 0.8 * height), (5, 2)).astype(int)
        for (x0, y0), (x1, y1) in pairwise(points):
            cv2.line(image, (int(x0), int(y0)), (int(x1), int(y1)), rng.integers(64, 255, 3).tolist(), 2)
        for x, y in points:
            cv2.circle(image, (int(x), int(y)), 2, (255, 255, 255), -1)
    return images


def textured_images(count: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """(count, height, width, 3) uint8 smooth random images."""
    images = np.random.default_rng(seed).integers(0, 255, (count, height, width, 3), dtype=np.uint8)
    return np.stack([cv2.GaussianBlur(image, (5, 5), 1.5) for image in images])
