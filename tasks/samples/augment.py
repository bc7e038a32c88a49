"""Augmentation of a reference frame: a random affine warp, a fill of the exposed area, colour jitter.

`draw` samples an `AugmentParams` (recorded in the sample's metadata) and `apply` replays it on
the original frame and mask, bit for bit: the same three steps (`warp`, the fill, `jitter`)
that the stage runs, where an inpainting fill is a model call batched over the clip's pairs.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from data_specs.training_samples import AugmentConfig, AugmentParams

_GREY_WEIGHTS = np.array([0.299, 0.587, 0.114])
_RGB_TO_YIQ = np.array([_GREY_WEIGHTS, [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])

Inpaint = Callable[[np.ndarray, np.ndarray, int], np.ndarray]  # (image, exposed mask, seed) -> image


def identity_params() -> AugmentParams:
    """No change: what a reference records when augmentation is off."""
    return AugmentParams(angle_deg=0.0, scale=1.0, translate=(0.0, 0.0), brightness=1.0, contrast=1.0,
                         saturation=1.0, hue=0.0, fill="constant")


def draw(rng: np.random.Generator, config: AugmentConfig, side: int) -> AugmentParams:
    """Random parameters within the config's ranges for a `side` x `side` reference."""
    shift = config.translate * side
    return AugmentParams(
        angle_deg=float(rng.uniform(-config.rotate_deg, config.rotate_deg)),
        scale=float(rng.uniform(*config.scale)),
        translate=(float(rng.uniform(-shift, shift)), float(rng.uniform(-shift, shift))),
        brightness=float(rng.uniform(1 - config.brightness, 1 + config.brightness)),
        contrast=float(rng.uniform(1 - config.contrast, 1 + config.contrast)),
        saturation=float(rng.uniform(1 - config.saturation, 1 + config.saturation)),
        hue=float(rng.uniform(-config.hue, config.hue)),
        fill=config.fill,
        fill_value=config.fill_value,
        inpaint_seed=int(rng.integers(2**31)) if config.fill == "inpaint" else None,
    )


def affine_matrix(params: AugmentParams, size: tuple[int, int]) -> np.ndarray:
    """The 2 x 3 matrix of the warp for an image of (height, width)."""
    height, width = size
    matrix = cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), params.angle_deg, params.scale)
    matrix[:, 2] += params.translate
    return matrix


def warp_points(points: np.ndarray, params: AugmentParams, size: tuple[int, int]) -> np.ndarray:
    """(N, 2) pixel points of an image of (height, width) -> where the warp moves them."""
    matrix = affine_matrix(params, size)
    return np.asarray(points, np.float64) @ matrix[:, :2].T + matrix[:, 2]


def warp(image: np.ndarray, mask: np.ndarray, params: AugmentParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, mask, exposed): the warped image (exposed area reflected or constant), the warped mask
    (nothing of it in the exposed area) and where the warp exposed the image's outside."""
    size = image.shape[:2]
    matrix = affine_matrix(params, size)
    dsize = (size[1], size[0])
    border = cv2.BORDER_REFLECT_101 if params.fill == "reflect" else cv2.BORDER_CONSTANT
    warped = cv2.warpAffine(image, matrix, dsize, flags=cv2.INTER_LINEAR, borderMode=border,
                            borderValue=tuple(int(v) for v in params.fill_value))
    # The mask (bit 0) and a marker of the image's inside (bit 1) travel in one nearest-neighbour warp.
    marked = mask.astype(np.uint8) | np.uint8(2)
    moved = cv2.warpAffine(marked, matrix, dsize, flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                           borderValue=0)
    return warped, (moved & 1).astype(bool), moved == 0


def jitter(image: np.ndarray, params: AugmentParams) -> np.ndarray:
    """Brightness, contrast, saturation, then hue, on a uint8 RGB image.

    All four are linear in RGB (the hue turns the chroma plane of YIQ), so they compose into one
    3 x 4 colour matrix applied in a single pass that rounds and saturates to uint8.
    """
    grey = _GREY_WEIGHTS
    mean = params.brightness * float(np.dot(cv2.mean(image)[:3], grey))
    saturation = params.saturation * np.eye(3) + (1 - params.saturation) * np.outer(np.ones(3), grey)
    linear = _hue_rotation(params.hue) @ (params.contrast * params.brightness * saturation)
    # Every step maps grey to grey, so the contrast's pull towards the mean grey stays an offset.
    matrix = np.hstack([linear, np.full((3, 1), (1 - params.contrast) * mean)])
    return cv2.transform(image, matrix.astype(np.float32))


def _hue_rotation(turn: float) -> np.ndarray:
    """The RGB matrix that turns the I/Q chroma plane of YIQ by `turn` of a full circle (grey stays grey)."""
    angle = 2 * np.pi * turn
    rotation = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    return np.linalg.inv(_RGB_TO_YIQ) @ rotation @ _RGB_TO_YIQ


def apply(image: np.ndarray, mask: np.ndarray, params: AugmentParams,
          inpaint: Inpaint | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Replay recorded parameters on an original frame and mask: (augmented image, augmented mask)."""
    warped, warped_mask, exposed = warp(image, mask, params)
    if params.fill == "inpaint" and exposed.any():
        if inpaint is None:
            raise ValueError("fill 'inpaint' needs the inpainting model to replay")
        warped = inpaint(warped, exposed, params.inpaint_seed or 0)
    return jitter(warped, params), warped_mask
