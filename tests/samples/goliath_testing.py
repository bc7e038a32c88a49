"""A frontal face in the Goliath face layout (Sapiens' 238 face points), drawn from simple curves, and a perceived
clip carrying it: keypoints in the layout the `openpose_face` condition derives its 68 points from."""

from __future__ import annotations

import numpy as np

from data_specs.perception import GOLIATH_FACE
from data_specs.pose_frames import render_pose_frames
from data_specs.sample import ClipSample

# Points of the subject's right side and of the midline on a unit face (x right, y down; the subject's right is
# the image's left). The left side is their mirror image through the layout's mirror partners.
EYE_Y, EYE_OUTER_X, EYE_INNER_X = 0.42, 0.28, 0.44
LID_HEIGHT = {"upper_lash": -0.03, "lower_lash": 0.02, "upper_eyelid": -0.045, "upper_crease": -0.06,
              "lower_eyelid": 0.03}
BROW_Y, BROW_OUTER_X, BROW_INNER_X, BROW_ARCH = 0.34, 0.25, 0.45, 0.03
MOUTH = {"outer_corner": (0.40, 0.70), "inner_corner": (0.42, 0.71), "upper_outer": 0.67, "lower_outer": 0.75,
         "upper_inner": 0.70, "lower_inner": 0.72}
MIDLINE = {"center_of_glabella": 0.36, "center_of_nose_root": 0.42, "tip_of_nose_bridge": 0.47,
           "midpoint_1_of_nose_bridge": 0.45, "midpoint_2_of_nose_bridge": 0.50, "midpoint_3_of_nose_bridge": 0.53,
           "tip_of_nose": 0.56, "bottom_center_of_nose": 0.595, "center_of_labiomental_groove": 0.80,
           "tip_of_chin": 0.88}
# Where along a contour (0: one end, 1: the other) each numbered midpoint sits: any order serves, the derivation
# sorts contour points by where they project.
LID_MIDPOINTS = {1: 1 / 8, 2: 2 / 8, 3: 3 / 8, 4: 5 / 8, 5: 6 / 8, 6: 7 / 8}
LIP_MIDPOINTS = {1: 0.5, 3: 0.25, 4: 0.75}  # right half, outer corner (0) to the midline (1); 2, 6, 5 mirror them


def _arc(start: tuple[float, float], stop: tuple[float, float], height: float, u: float) -> tuple[float, float]:
    """The point at fraction u along a sine arch from start to stop, `height` off the chord (negative: up)."""
    return (start[0] + u * (stop[0] - start[0]),
            start[1] + u * (stop[1] - start[1]) + height * float(np.sin(np.pi * u)))


def _right_and_midline() -> dict[str, tuple[float, float]]:
    points = {name: (0.5, y) for name, y in MIDLINE.items()}
    outer, inner = (EYE_OUTER_X, EYE_Y), (EYE_INNER_X, EYE_Y)
    for line, height in LID_HEIGHT.items():
        lid, kind = line.rsplit("_", 1)  # e.g. ("upper", "lash")
        points[f"r_outer_end_of_{lid}_{kind}_line"] = outer
        points[f"r_inner_end_of_{lid}_{kind}_line"] = inner
        points[f"r_centerpoint_of_{lid}_{kind}_line"] = _arc(outer, inner, height, 0.5)
        for number, u in LID_MIDPOINTS.items():
            points[f"r_midpoint_{number}_of_{lid}_{kind}_line"] = _arc(outer, inner, height, u)
    for edge, drop in (("upper", 0.0), ("lower", 0.02)):
        outer_brow, inner_brow = (BROW_OUTER_X, BROW_Y + drop), (BROW_INNER_X, BROW_Y + drop)
        points[f"{edge}_startpoint_of_r_eyebrow"] = inner_brow
        for number, u in ((1, 0.5), (2, 0.25), (3, 0.75)):
            points[f"{edge}_midpoint_{number}_of_r_eyebrow"] = _arc(outer_brow, inner_brow, -BROW_ARCH, u)
    points["end_of_r_eyebrow"] = (BROW_OUTER_X, BROW_Y + 0.01)
    points.update({"r_outer_corner_of_nose": (0.44, 0.55), "outer_corner_of_r_nostril": (0.45, 0.58),
                   "inner_corner_of_r_nostril": (0.48, 0.59), "upper_corner_of_r_nostril": (0.465, 0.57)})
    for contour, (corner, name) in {"outer": (MOUTH["outer_corner"], "r_outer_corner_of_mouth"),
                                    "inner": (MOUTH["inner_corner"], "r_inner_corner_of_mouth")}.items():
        points[name] = corner
        for lip in ("upper", "lower"):
            middle = (0.5, MOUTH[f"{lip}_{contour}"])
            centre = {"upper_outer": "center_of_cupid_bow"}.get(f"{lip}_{contour}", f"center_of_{lip}_{contour}_lip")
            points[centre] = middle
            for number, u in LIP_MIDPOINTS.items():
                points[f"midpoint_{number}_of_{lip}_{contour}_lip"] = _arc(corner, middle, 0.0, u)
    eye_centre = ((EYE_OUTER_X + EYE_INNER_X) / 2, EYE_Y)
    others = [name for name in GOLIATH_FACE.names if name.startswith("r_") and name not in points]
    for k, name in enumerate(others):  # the ear, iris and pupil: small circles (the 68 points use none of them)
        centre, radius = (eye_centre, 0.015) if "iris" in name or "pupil" in name else ((0.14, 0.47), 0.04)
        angle = 2 * np.pi * k / len(others)
        points[name] = (centre[0] + radius * np.cos(angle), centre[1] + radius * np.sin(angle))
    return points


def goliath_face(size: int, shift: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """(238, 3) keypoints (x, y in a size x size frame, confidence 1) of a frontal face, moved by `shift` pixels."""
    known = _right_and_midline()
    unit = np.zeros((GOLIATH_FACE.num_points, 2))
    for i, name in enumerate(GOLIATH_FACE.names):
        if name in known:
            unit[i] = known[name]
        else:  # the left side: the mirror image of its partner on the right
            x, y = known[GOLIATH_FACE.names[GOLIATH_FACE.flip[i]]]
            unit[i] = (1.0 - x, y)
    xy = unit * (size - 1) + np.asarray(shift)
    return np.concatenate([xy, np.ones((len(xy), 1))], axis=1).astype(np.float32)


def with_goliath_face(clip: ClipSample, seed: int = 0) -> ClipSample:
    """The clip with Goliath-layout keypoints (the face moving a little from frame to frame) and its pose frames
    drawn from them by the project's renderer."""
    rng = np.random.default_rng(seed)
    size = clip.frames.shape[1]
    keypoints = np.stack([goliath_face(size, tuple(rng.uniform(-2, 2, 2))) for _ in clip.frames])
    perception = clip.meta.perception.model_copy(update={"keypoint_layout": GOLIATH_FACE.name})
    meta = clip.meta.model_copy(update={"perception": perception})
    clip.meta, clip.keypoints = meta, keypoints
    clip.pose_frames = render_pose_frames(keypoints, GOLIATH_FACE, size)
    return clip
