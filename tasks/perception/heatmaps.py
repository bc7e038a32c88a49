"""Top-down geometry and heatmap decoding of Sapiens pose, as mmpose's `UDPHeatmap` codec does it.

UDP (unbiased data processing) measures sizes between the centres of the first and last
pixel, (size - 1), so a box of scale s maps onto an input of width W_in by (W_in - 1) / s
and a heatmap of width W by (W - 1) / s. Decoding takes each heatmap's maximum and refines
it with DARK: blur the heatmap with a Gaussian, take its logarithm, and move the peak by
one Newton step (gradient / Hessian from finite differences). A Gaussian peak is found to
a small fraction of a heatmap pixel.
"""

from __future__ import annotations

import cv2
import numpy as np

_CV_MAX_CHANNELS = 128  # OpenCV 5 images have at most 128 channels (OpenCV 4: 512)


def topdown_boxes(boxes: np.ndarray, box_scale: float, aspect: float) -> tuple[np.ndarray, np.ndarray]:
    """Centres (N, 2) and sizes (N, 2) of top-down boxes: (N, 4) xyxy `boxes` x `box_scale`, widened to `aspect`
    (width / height)."""
    boxes = np.asarray(boxes, np.float32)
    centers = (boxes[:, :2] + boxes[:, 2:4]) / 2
    sizes = (boxes[:, 2:4] - boxes[:, :2]) * box_scale
    width, height = sizes[:, 0], sizes[:, 1]
    too_wide = width > height * aspect
    sizes = np.stack([np.where(too_wide, width, height * aspect), np.where(too_wide, width / aspect, height)], 1)
    return centers, sizes.astype(np.float32)


def udp_warp_matrix(center: np.ndarray, size: np.ndarray, output_size: tuple[int, int]) -> np.ndarray:
    """2x3 affine taking the box (`center`, `size`) onto an output of `output_size` (w, h), UDP style."""
    scale = (np.asarray(output_size, np.float64) - 1) / np.asarray(size, np.float64)
    offset = scale * (np.asarray(size, np.float64) / 2 - np.asarray(center, np.float64))
    return np.array([[scale[0], 0, offset[0]], [0, scale[1], offset[1]]], np.float32)


def decode_heatmaps(heatmaps: np.ndarray, blur_kernel: int = 11) -> tuple[np.ndarray, np.ndarray]:
    """Peaks of (N, K, H, W) heatmaps: coordinates (N, K, 2) in heatmap pixels (x, y), and scores (N, K).

    The score is the heatmap's maximum. A heatmap with no positive value gets (-1, -1),
    as in mmpose; its score is <= 0, so any confidence gate drops it.
    """
    heatmaps = np.asarray(heatmaps, np.float32)
    n, k, h, w = heatmaps.shape
    flat = heatmaps.reshape(n, k, h * w)
    peak = flat.argmax(axis=2)
    scores = np.take_along_axis(flat, peak[..., None], axis=2)[..., 0]
    y, x = np.divmod(peak, w)
    coords = np.stack([x, y], axis=-1).astype(np.float32)
    valid = scores > 0
    coords[~valid] = -1
    if valid.any():
        coords[valid] -= _dark_offsets(heatmaps, x, y, scores, blur_kernel)[valid]
    return coords, scores


def heatmap_to_image(coords: np.ndarray, centers: np.ndarray, sizes: np.ndarray,
                     heatmap_size: tuple[int, int]) -> np.ndarray:
    """Map (N, K, 2) heatmap coordinates back into the image the top-down boxes were cut from."""
    per_pixel = sizes / (np.asarray(heatmap_size, np.float32) - 1)  # image pixels per heatmap pixel, (N, 2)
    return coords * per_pixel[:, None] + (centers - sizes / 2)[:, None]


def _dark_offsets(heatmaps: np.ndarray, x: np.ndarray, y: np.ndarray, peaks: np.ndarray,
                  blur_kernel: int) -> np.ndarray:
    """(N, K, 2) Newton steps from the integer peaks on the log of the blurred heatmaps (DARK)."""
    n, k, h, w = heatmaps.shape
    blurred = np.empty_like(heatmaps)
    for i in range(n):
        for start in range(0, k, _CV_MAX_CHANNELS):
            channels = heatmaps[i, start : start + _CV_MAX_CHANNELS].transpose(1, 2, 0)
            # Zero outside the heatmap, as mmpose pads with zeros before blurring.
            smooth = cv2.GaussianBlur(channels, (blur_kernel, blur_kernel), 0, borderType=cv2.BORDER_CONSTANT)
            blurred[i, start : start + _CV_MAX_CHANNELS] = smooth.reshape(h, w, -1).transpose(2, 0, 1)
    # Keep each map's original maximum, then take logs of the clipped maps.
    blurred *= (peaks / np.maximum(blurred.reshape(n, k, -1).max(axis=2), 1e-12))[..., None, None]
    logs = np.log(np.clip(blurred, 1e-3, 50.0))
    padded = np.pad(logs, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
    rows, cols = y + 1, x + 1  # peak position in the padded maps
    batch, point = np.indices((n, k))

    def at(dy: int, dx: int) -> np.ndarray:
        return padded[batch, point, rows + dy, cols + dx]

    centre = at(0, 0)
    dx = 0.5 * (at(0, 1) - at(0, -1))
    dy = 0.5 * (at(1, 0) - at(-1, 0))
    dxx = at(0, 1) - 2 * centre + at(0, -1)
    dyy = at(1, 0) - 2 * centre + at(-1, 0)
    dxy = 0.5 * (at(1, 1) - at(0, 1) - at(1, 0) + 2 * centre - at(0, -1) - at(-1, 0) + at(-1, -1))
    hessian = np.stack([np.stack([dxx, dxy], -1), np.stack([dxy, dyy], -1)], -2) + np.finfo(np.float32).eps * np.eye(2)
    gradient = np.stack([dx, dy], -1)[..., None]
    offsets = (np.linalg.pinv(hessian) @ gradient)[..., 0]  # pinv: a flat map gets no step instead of inf
    return np.where(np.isfinite(offsets), offsets, 0).astype(np.float32)
