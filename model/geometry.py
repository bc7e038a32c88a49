"""2-D geometry on keypoints: similarity fits, image warps and motion retargeting.

Keypoints are (..., K, 2) arrays of (x, y) pixel coordinates, x to the right and
y down, with the centre of pixel (i, j) at (j, i).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F


def fit_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) taking src to dst.

    Umeyama's closed form; points with a NaN in either set are ignored.
    src, dst: (K, 2). Returns the (2, 3) matrix M with dst ~ M @ [x, y, 1].
    """
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    valid = np.isfinite(src).all(1) & np.isfinite(dst).all(1)
    if valid.sum() < 2:
        raise ValueError("a similarity needs at least two valid point pairs")
    src, dst = src[valid], dst[valid]
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    u, singular, vt = np.linalg.svd(dst_c.T @ src_c / len(src))
    # Keep a proper rotation (no reflection).
    sign = np.diag([1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    rotation = u @ sign @ vt
    scale = np.trace(np.diag(singular) @ sign) / src_c.var(0).sum()
    translation = dst_mean - scale * rotation @ src_mean
    return np.hstack([scale * rotation, translation[:, None]])


def warp_affine(image: torch.Tensor, matrix: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """Warp image (N, C, H, W) by the (2, 3) src->dst pixel matrix into a (h, w) = size canvas.

    Bilinear; outside the source is zero.
    """
    height, width = size
    inverse = np.linalg.inv(np.vstack([matrix, [0.0, 0.0, 1.0]]))[:2]
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float64),
                            torch.arange(width, dtype=torch.float64), indexing="ij")
    dst = torch.stack([xs, ys, torch.ones_like(xs)], dim=-1)  # (h, w, 3)
    src = dst @ torch.from_numpy(inverse).T  # (h, w, 2) source pixel coordinates
    src_h, src_w = image.shape[-2:]
    # Pixel centres -> grid_sample's [-1, 1] with align_corners=False.
    grid = torch.stack([(2 * src[..., 0] + 1) / src_w - 1, (2 * src[..., 1] + 1) / src_h - 1], dim=-1)
    grid = grid.to(image).expand(image.shape[0], -1, -1, -1)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def retarget_keypoints(driving: np.ndarray, portrait: np.ndarray) -> np.ndarray:
    """Apply the driving motion to the portrait's own keypoints.

    The driving motion is taken relative to its first frame, mapped into the
    portrait's frame by the rotation and scale of the similarity that aligns the
    first driving frame to the portrait, and added to the portrait's keypoints, so
    the portrait keeps its face shape.
    driving: (F, K, 2); portrait: (K, 2). Returns (F, K, 2) float32.
    """
    driving = np.asarray(driving, np.float64)
    portrait = np.asarray(portrait, np.float64)
    if driving.shape[1:] != portrait.shape:
        raise ValueError(f"driving keypoints {driving.shape} do not match portrait {portrait.shape}")
    linear = fit_similarity(driving[0], portrait)[:, :2]
    motion = (driving - driving[:1]) @ linear.T
    return (portrait[None] + motion).astype(np.float32)
