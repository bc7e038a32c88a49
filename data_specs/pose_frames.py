"""Keypoints -> the pose guider's input frames: one coloured dot per confident point on black.

The one renderer of pose frames: the data pipeline draws the training samples' pose frames
with it and `DurianPipeline` draws the driving keypoints with it, so the pose guider sees at
inference exactly what it was trained on.

The colour of a point is its facial region's colour in `PoseRenderSpec.region_colours`, so
the same layout always renders the same way; drawing is aliased (no blending), so every
drawn pixel has exactly its region's colour. Points are drawn in layout order.
"""

from __future__ import annotations

import cv2
import numpy as np

from data_specs.perception import KEYPOINT_LAYOUTS, KeypointLayout, PoseRenderSpec


def render_pose_frames(keypoints: np.ndarray, layout: KeypointLayout, size: int | tuple[int, int],
                       spec: PoseRenderSpec | None = None) -> np.ndarray:
    """Draw (N, K, 3) keypoints (x, y, confidence in output pixels) as (N, H, W, 3) uint8 RGB frames.

    `size` is the output side, or (height, width). Points below `spec.confidence_threshold`
    or outside the frame are not drawn.
    """
    spec = spec or PoseRenderSpec()
    height, width = (size, size) if isinstance(size, int) else size
    keypoints = np.asarray(keypoints, np.float32)
    if keypoints.ndim != 3 or keypoints.shape[1:] != (layout.num_points, 3):
        raise ValueError(f"keypoints must be (N, {layout.num_points}, 3) for layout {layout.name!r}, "
                         f"got {keypoints.shape}")
    missing = sorted(set(layout.regions) - set(spec.region_colours))
    if missing:
        raise ValueError(f"PoseRenderSpec.region_colours has no colour for region(s) {', '.join(missing)}")
    colours = [spec.region_colours[region] for region in layout.regions]
    radius = round(spec.point_radius * min(height, width) / spec.reference_size)
    frames = np.zeros((len(keypoints), height, width, 3), np.uint8)
    for frame, points in zip(frames, keypoints):
        visible = (points[:, 2] >= spec.confidence_threshold) & np.isfinite(points[:, :2]).all(axis=1)
        for index in np.flatnonzero(visible):
            x, y = round(float(points[index, 0])), round(float(points[index, 1]))
            if 0 <= x < width and 0 <= y < height:
                if radius == 0:
                    frame[y, x] = colours[index]
                else:
                    cv2.circle(frame, (x, y), radius, colours[index], thickness=-1, lineType=cv2.LINE_8)
    return frames


def layout_with_points(num_points: int) -> KeypointLayout:
    """The known keypoint layout with `num_points` points (5: `truth_5`, 238: `goliath_face`)."""
    for layout in KEYPOINT_LAYOUTS.values():
        if layout.num_points == num_points:
            return layout
    known = ", ".join(f"{name} ({layout.num_points})" for name, layout in KEYPOINT_LAYOUTS.items())
    raise ValueError(f"no keypoint layout has {num_points} points; known layouts: {known}")
