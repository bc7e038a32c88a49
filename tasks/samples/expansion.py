"""Mask expansion without a model: M_port_train = M_attr U erode(dilate(M_attr, d), e).

The generated expansion (`ExpansionConfig.mode == "generate"`) unites M_attr with the mask of a
ControlNet image instead; its model calls live in the stage, and it ends in `expand` as well.
"""

from __future__ import annotations

import cv2
import numpy as np

from data_specs.training_samples import DilateConfig


def draw_dilation(rng: np.random.Generator, config: DilateConfig, side: int) -> tuple[int, int]:
    """(dilation, erosion) radii in pixels for a `side` x `side` mask."""
    dilate = int(round(rng.uniform(*config.dilate) * side))
    erode = int(round(rng.uniform(*config.erode) * side))
    return dilate, erode


def dilate_erode(mask: np.ndarray, dilate_px: int, erode_px: int) -> np.ndarray:
    """The mask dilated by `dilate_px`, then eroded by `erode_px` (elliptic kernels)."""
    grown = mask.astype(np.uint8)
    if dilate_px:
        grown = cv2.dilate(grown, _disc(dilate_px))
    if erode_px:
        grown = cv2.erode(grown, _disc(erode_px))
    return grown.astype(bool)


def expand(attribute_mask: np.ndarray, extra: np.ndarray) -> np.ndarray:
    """M_port_train: the attribute mask united with what the expansion added, so it always contains M_attr."""
    return attribute_mask | extra


def _disc(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
