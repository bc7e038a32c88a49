"""Pose frames: keypoints rendered as images, what the pose guider sees.

Shared by the pipeline (driving keypoints) and the data pipeline (training targets),
so both render keypoints the same way.
"""

from __future__ import annotations

import colorsys

import numpy as np
import torch


def keypoint_colours(num_keypoints: int) -> torch.Tensor:
    """One fully saturated RGB colour per keypoint index, around the hue wheel: (K, 3) in [0, 1].

    A fixed colour per index tells the guider which point is which (left eye vs right eye).
    """
    return torch.tensor([colorsys.hsv_to_rgb(k / num_keypoints, 1.0, 1.0) for k in range(num_keypoints)],
                        dtype=torch.float32)


def render_keypoints(keypoints: np.ndarray | torch.Tensor, size: tuple[int, int],
                     sigma: float | None = None) -> torch.Tensor:
    """Render keypoints as coloured Gaussian dots on black.

    keypoints: (F, K, 2) pixel (x, y) coordinates in a canvas of size (H, W); a point
        with a NaN coordinate (not detected) is not drawn.
    sigma: dot radius in pixels; default 1% of the canvas diagonal, at least 1.
    Returns (F, 3, H, W) float32 in [0, 1]; where dots overlap, the brighter wins.
    """
    points = torch.as_tensor(np.asarray(keypoints, np.float32))
    if points.ndim != 3 or points.shape[-1] != 2:
        raise ValueError(f"keypoints must be (F, K, 2), got {tuple(points.shape)}")
    height, width = size
    if sigma is None:
        sigma = max(1.0, 0.01 * float(np.hypot(height, width)))
    colours = keypoint_colours(points.shape[1])
    ys = torch.arange(height, dtype=torch.float32)[:, None]
    xs = torch.arange(width, dtype=torch.float32)[None, :]
    canvas = torch.zeros(points.shape[0], 3, height, width)
    # One keypoint at a time keeps memory at O(F * H * W) for dense layouts (K in the hundreds).
    for k in range(points.shape[1]):
        x, y = points[:, k, 0, None, None], points[:, k, 1, None, None]
        heat = torch.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2)).nan_to_num(0.0)
        canvas = torch.maximum(canvas, heat[:, None] * colours[k, :, None, None])
    return canvas
