"""Mask expansion without a model: M_port_train = M_attr U erode(dilate(M_attr, d), e).

The generated expansion (`ExpansionConfig.mode == "generate"`) unites M_attr with the mask of a
ControlNet image instead, drawn from `condition_images` in the format the ControlNet was trained on;
its model calls live in the processor, and it ends in `expand` as well.
"""

from __future__ import annotations

import cv2
import numpy as np

from data_specs.openpose_face import openpose_face_points, render_openpose_face
from data_specs.perception import KEYPOINT_LAYOUTS
from data_specs.sample import ClipSample
from data_specs.training_samples import DilateConfig, GenerateConfig


def draw_dilation(rng: np.random.Generator, config: DilateConfig, side: int) -> tuple[int, int]:
    """(dilation, erosion) radii in pixels for a `side` x `side` mask."""
    dilate = int(round(rng.uniform(*config.dilate) * side))
    erode = int(round(rng.uniform(*config.erode) * side))
    return dilate, erode


def dilate_erode(mask: np.ndarray, dilate_px: int, erode_px: int) -> np.ndarray:
    """The mask dilated by a disc of radius `dilate_px`, then eroded by one of `erode_px`.

    Through distance transforms (OpenCV's 5 x 5 approximation of the Euclidean distance): linear in the
    pixels whatever the radius, where a 30 px disc kernel costs several times more.
    """
    grown = mask.astype(bool)
    if dilate_px:
        grown = _distance_to(grown) <= dilate_px
    if erode_px:
        grown = _distance_to(~grown) > erode_px
    return grown


def expand(attribute_mask: np.ndarray, extra: np.ndarray) -> np.ndarray:
    """M_port_train: the attribute mask united with what the expansion added, so it always contains M_attr."""
    return attribute_mask | extra


def _distance_to(region: np.ndarray) -> np.ndarray:
    """Per pixel, the Euclidean distance to the nearest pixel of `region` (0 inside it)."""
    if not region.any():
        return np.full(region.shape, np.inf, np.float32)
    return cv2.distanceTransform((~region).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_5)


def condition_images(config: GenerateConfig, sample: ClipSample, positions: list[int]) -> np.ndarray:
    """(len(positions), H, W, 3) uint8: the ControlNet's condition for each clip position, as `config.condition`
    says: the 68 OpenPose face points as the OpenPose annotators draw them, or the clip's own pose frames."""
    if config.condition == "pose_frames":
        return np.stack([sample.pose_frames[p] for p in positions])
    layout = KEYPOINT_LAYOUTS[sample.meta.perception.keypoint_layout]
    points = openpose_face_points(sample.keypoints[positions], layout, config.condition_min_confidence)
    return render_openpose_face(points, sample.frames.shape[1:3], config.condition_min_confidence)
