"""Tiny inputs shared by the model tests (imported by module name: tests/model is no package)."""

from __future__ import annotations

import numpy as np
import torch

from model.durian import ReferenceInputs

LATENT = 16  # latent side of the tiny flavour (64 px / 4)
# Synthetic face keypoints in a 64x64 frame: eyes, nose, mouth corners.
FACE = np.array([[24, 28], [40, 28], [32, 36], [26, 46], [38, 46]], np.float32)


def make_references(batch: int = 1, attributes: int = 1, seed: int = 0, dim: int = 32) -> ReferenceInputs:
    """Random reference inputs of the tiny flavour's shapes."""
    g = torch.Generator().manual_seed(seed)
    return ReferenceInputs(
        portrait=torch.randn(batch, 5, LATENT, LATENT, generator=g),
        attributes=torch.randn(batch, attributes, 5, LATENT, LATENT, generator=g),
        identity_embeds=torch.randn(batch, 1, dim, generator=g),
        attribute_embeds=torch.randn(batch, attributes, dim, generator=g),
    )


def make_clip(batch: int = 1, frames: int = 2, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(noisy latents (B, 4, F, 16, 16), timesteps (B,), guidance (B, 3, F, 64, 64))."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 4, frames, LATENT, LATENT, generator=g), torch.full((batch,), 500),
            torch.rand(batch, 3, frames, 4 * LATENT, 4 * LATENT, generator=g))


def face_image(seed: int) -> np.ndarray:
    """A random 64x64 RGB uint8 image."""
    return np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)
