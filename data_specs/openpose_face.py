"""The OpenPose face format: 68 points in the iBUG 300-W layout, drawn as white dots on black.

OpenPose ControlNets (`lllyasviel/control_v11p_sd15_openpose`, `thibaud/controlnet-openpose-sdxl-1.0`, the
openpose mode of ControlNet-Union) were trained on the pictures of the OpenPose/DWPose annotators (controlnet_aux):
a body skeleton and hands in colour, and the face as 68 filled white circles of radius 3 at 512 px, no lines;
a point the detector did not find is not drawn. Face-only pictures of that kind are the annotators'
"openpose_faceonly" mode, one of the inputs the v1.1 OpenPose ControlNet documents.

`openpose_face_points` derives the 68 points from the Goliath face keypoints (Sapiens), by the points' names:

- brows (17-26): the upper brow contour, outer end to inner start, resampled to 5 points;
- nose bridge (27-30): nose root to nose tip along Goliath's bridge points, resampled to 4 points;
- lower nose (31-35): the nostrils' outer corners, their inner corners and the bottom centre of the nose;
- eyes (36-47): corners as the mean of the upper and lower lash lines' ends, lids resampled along the lash lines
  (the lid margins, i.e. the eye opening 300-W traces);
- lips (48-67): the corners and the midline points of the outer and inner lip contours, each half-contour between
  them resampled to the layout's spacing.

Jaw (0-16): Goliath has no jaw contour, only the chin tip, which becomes point 8. The other 16 jaw points are left
out (not drawn), not interpolated between the ears and the chin: nothing in Goliath says where the jawline runs
(it depends on the head's shape, pose and the hair or beard over it), and a ControlNet takes every drawn dot as
evidence, so invented dots would impose a face outline; missing points are what its training pictures show for
occluded jaws.

Where a contour's points lie between its two ends is read from their projection on the line joining the ends,
not from the midpoints' numbers, so the derivation holds whatever Goliath's numbering order along a contour is.
"""

from __future__ import annotations

import cv2
import numpy as np

from data_specs.perception import GOLIATH_FACE, KeypointLayout

NUM_POINTS = 68
POINT_RADIUS, REFERENCE_SIZE = 3, 512  # controlnet_aux's `draw_facepose`: radius 3 on its 512 px detection canvas
WHITE = (255, 255, 255)
CHIN = 8
# The mirror partner of each point of the 68-point layout (jaw, brows, nose, eyes, lips).
IBUG_FLIP: tuple[int, ...] = (
    *range(16, -1, -1), *range(26, 16, -1), 27, 28, 29, 30, 35, 34, 33, 32, 31,
    45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40,
    54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55, 64, 63, 62, 61, 60, 67, 66, 65)


def _names(template: str, numbers: range) -> tuple[str, ...]:
    return tuple(template.format(n) for n in numbers)


def _side(side: str) -> dict[str, tuple[str, ...] | str]:
    """The Goliath names of one side's brow, eye and nostril ('r' or 'l': the subject's side)."""
    return {
        "brow_inner": f"upper_startpoint_of_{side}_eyebrow", "brow_outer": f"end_of_{side}_eyebrow",
        "brow": _names(f"upper_midpoint_{{}}_of_{side}_eyebrow", range(1, 4)),
        "eye_inner": (f"{side}_inner_end_of_upper_lash_line", f"{side}_inner_end_of_lower_lash_line"),
        "eye_outer": (f"{side}_outer_end_of_upper_lash_line", f"{side}_outer_end_of_lower_lash_line"),
        "upper_lid": (f"{side}_centerpoint_of_upper_lash_line",
                      *_names(f"{side}_midpoint_{{}}_of_upper_lash_line", range(1, 7))),
        "lower_lid": (f"{side}_centerpoint_of_lower_lash_line",
                      *_names(f"{side}_midpoint_{{}}_of_lower_lash_line", range(1, 7))),
        "nostril_outer": f"outer_corner_of_{side}_nostril", "nostril_inner": f"inner_corner_of_{side}_nostril",
    }


_RIGHT, _LEFT = _side("r"), _side("l")
_BRIDGE = ("tip_of_nose_bridge", *_names("midpoint_{}_of_nose_bridge", range(1, 4)))
_UPPER_OUTER = _names("midpoint_{}_of_upper_outer_lip", range(1, 7))
_LOWER_OUTER = _names("midpoint_{}_of_lower_outer_lip", range(1, 7))
_UPPER_INNER = _names("midpoint_{}_of_upper_inner_lip", range(1, 7))
_LOWER_INNER = _names("midpoint_{}_of_lower_inner_lip", range(1, 7))

# (68-point indices from one end to the other, first end, last end, Goliath points between them): each run is the
# contour from the first end through the points between to the last end, resampled evenly to the indices. An end
# is a Goliath name, the mean of several, or an index already derived (the eyes' corners, the lips' midline).
_CONTOURS: tuple[tuple[tuple[int, ...], object, object, tuple[str, ...]], ...] = (
    ((17, 18, 19, 20, 21), _RIGHT["brow_outer"], _RIGHT["brow_inner"], _RIGHT["brow"]),
    ((22, 23, 24, 25, 26), _LEFT["brow_inner"], _LEFT["brow_outer"], _LEFT["brow"]),
    ((27, 28, 29, 30), "center_of_nose_root", "tip_of_nose", _BRIDGE),
    ((31, 32, 33), _RIGHT["nostril_outer"], "bottom_center_of_nose", (_RIGHT["nostril_inner"],)),
    ((33, 34, 35), "bottom_center_of_nose", _LEFT["nostril_outer"], (_LEFT["nostril_inner"],)),
    ((36, 37, 38, 39), _RIGHT["eye_outer"], _RIGHT["eye_inner"], _RIGHT["upper_lid"]),
    ((39, 40, 41, 36), _RIGHT["eye_inner"], _RIGHT["eye_outer"], _RIGHT["lower_lid"]),
    ((42, 43, 44, 45), _LEFT["eye_inner"], _LEFT["eye_outer"], _LEFT["upper_lid"]),
    ((45, 46, 47, 42), _LEFT["eye_outer"], _LEFT["eye_inner"], _LEFT["lower_lid"]),
    ((48, 49, 50, 51), "r_outer_corner_of_mouth", "center_of_cupid_bow", _UPPER_OUTER),
    ((51, 52, 53, 54), "center_of_cupid_bow", "l_outer_corner_of_mouth", _UPPER_OUTER),
    ((54, 55, 56, 57), "l_outer_corner_of_mouth", "center_of_lower_outer_lip", _LOWER_OUTER),
    ((57, 58, 59, 48), "center_of_lower_outer_lip", "r_outer_corner_of_mouth", _LOWER_OUTER),
    ((60, 61, 62), "r_inner_corner_of_mouth", "center_of_upper_inner_lip", _UPPER_INNER),
    ((62, 63, 64), "center_of_upper_inner_lip", "l_inner_corner_of_mouth", _UPPER_INNER),
    ((64, 65, 66), "l_inner_corner_of_mouth", "center_of_lower_inner_lip", _LOWER_INNER),
    ((66, 67, 60), "center_of_lower_inner_lip", "r_inner_corner_of_mouth", _LOWER_INNER),
)


def openpose_face_points(keypoints: np.ndarray, layout: KeypointLayout, confidence_threshold: float) -> np.ndarray:
    """(..., K, 3) keypoints (x, y, confidence) of `layout` -> (..., 68, 3) points of the 68-point layout.

    A derived point's confidence is the least of its contour's two ends; points between the ends below
    `confidence_threshold` are left out of the contour. The 16 jaw points other than the chin have confidence 0.
    Only the Goliath face layout has the points to derive from: any other raises ValueError.
    """
    if layout.name != GOLIATH_FACE.name:
        raise ValueError(f"the OpenPose face points are derived from the {GOLIATH_FACE.name!r} layout (Sapiens "
                         f"keypoints); layout {layout.name!r} has only {layout.num_points} points")
    keypoints = np.asarray(keypoints, np.float64)
    if keypoints.shape[-2:] != (layout.num_points, 3):
        raise ValueError(f"keypoints must be (..., {layout.num_points}, 3), got {keypoints.shape}")
    flat = keypoints.reshape(-1, layout.num_points, 3)
    index = {name: i for i, name in enumerate(layout.names)}
    out = np.stack([_face68(points, index, confidence_threshold) for points in flat])
    return out.reshape(*keypoints.shape[:-2], NUM_POINTS, 3).astype(np.float32)


def _face68(points: np.ndarray, index: dict[str, int], threshold: float) -> np.ndarray:
    face = np.zeros((NUM_POINTS, 3))
    face[CHIN] = points[index["tip_of_chin"]]
    done: set[int] = {CHIN}

    def end(source: object, slot: int) -> np.ndarray:
        if slot in done:  # a corner or midline point another run derived already
            return face[slot]
        names = (source,) if isinstance(source, str) else tuple(source)
        rows = points[[index[name] for name in names]]
        return np.array([*rows[:, :2].mean(axis=0), rows[:, 2].min()])

    for slots, first, last, between in _CONTOURS:
        start, stop = end(first, slots[0]), end(last, slots[-1])
        inner = points[[index[name] for name in between]]
        inner = inner[inner[:, 2] >= threshold]
        for slot, value in zip(slots, _resampled(start, stop, inner, len(slots))):
            if slot not in done:
                face[slot] = value
                done.add(slot)
    return face


def _resampled(start: np.ndarray, stop: np.ndarray, between: np.ndarray, count: int) -> np.ndarray:
    """`count` points spaced evenly along the polyline start -> (the points of `between` that project between the
    ends, in projection order) -> stop; each with the lesser confidence of the two ends."""
    axis = stop[:2] - start[:2]
    length2 = float(axis @ axis)
    polyline = [start[:2]]
    if length2 > 0 and len(between):
        t = (between[:, :2] - start[:2]) @ axis / length2
        inside = (t > 0) & (t < 1)
        polyline += list(between[inside][np.argsort(t[inside]), :2])
    polyline.append(stop[:2])
    polyline = np.array(polyline)
    travelled = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(polyline, axis=0), axis=1))])
    targets = np.linspace(0.0, travelled[-1], count)
    xy = np.stack([np.interp(targets, travelled, polyline[:, 0]), np.interp(targets, travelled, polyline[:, 1])], 1)
    xy[0], xy[-1] = start[:2], stop[:2]  # the ends exactly (a zero-length contour interpolates to nothing)
    return np.concatenate([xy, np.full((count, 1), min(start[2], stop[2]))], axis=1)


def render_openpose_face(points: np.ndarray, size: int | tuple[int, int], confidence_threshold: float) -> np.ndarray:
    """(N, 68, 3) points (x, y, confidence in output pixels) -> (N, H, W, 3) uint8 frames as controlnet_aux's
    OpenPose/DWPose annotators draw a face: a filled white circle per point on black, radius 3 at 512 px
    (scaled with the shorter side, at least 1), at the point's pixel (coordinates truncated, as the annotators
    do); points below `confidence_threshold` or on the frame's first row or column (where the annotators put
    missing points) are not drawn."""
    height, width = (size, size) if isinstance(size, int) else size
    points = np.asarray(points, np.float32)
    if points.ndim != 3 or points.shape[1:] != (NUM_POINTS, 3):
        raise ValueError(f"points must be (N, {NUM_POINTS}, 3), got {points.shape}")
    radius = max(1, round(POINT_RADIUS * min(height, width) / REFERENCE_SIZE))
    frames = np.zeros((len(points), height, width, 3), np.uint8)
    for frame, face in zip(frames, points):
        for x, y, confidence in face:
            if confidence >= confidence_threshold and np.isfinite(x) and np.isfinite(y) and x >= 1 and y >= 1:
                cv2.circle(frame, (int(x), int(y)), radius, WHITE, thickness=-1)
    return frames
