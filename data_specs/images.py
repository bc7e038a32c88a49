"""From the dataset's images to the tensors every network takes: one conversion for perception, the data-side
diffusion models, the trainer's loader and the pipeline's pose frames.

A sample holds uint8 RGB arrays, channels last (`data_specs.sample`); torch networks take float32, channels first.
torch is imported inside, so that data workers that only read or write shards never load it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def images_to_tensor(images: np.ndarray, scale: float = 255.0) -> torch.Tensor:
    """(..., H, W, 3) uint8 RGB -> (..., 3, H, W) float32 divided by `scale`: in [0, 1] by default, [0, 255]
    with 1. The result is a strided view of channels-last memory; `.contiguous()` it where that matters."""
    import torch

    tensor = torch.from_numpy(np.ascontiguousarray(images)).movedim(-1, -3).float()
    return tensor if scale == 1 else tensor.div(scale)
