"""The generated expansion's condition in the OpenPose face format: 68 points derived from Goliath's named face
points, drawn as the OpenPose/DWPose annotators draw a face (white filled circles, radius 3 at 512 px, on black)."""

from __future__ import annotations

import numpy as np
import pytest

from data_specs.config import parse_config
from data_specs.openpose_face import CHIN, IBUG_FLIP, NUM_POINTS, openpose_face_points, render_openpose_face
from data_specs.perception import GOLIATH_FACE, TRUTH_5
from data_specs.training_samples import GenerateConfig
from tasks.samples.expansion import condition_images
from tests.samples.goliath_testing import EYE_INNER_X, EYE_OUTER_X, EYE_Y, goliath_face, with_goliath_face
from tests.samples.samples_testing import TRUTH_PERCEPTION, perceived_clip

SIZE = 512
THRESHOLD = 0.3


def named(keypoints: np.ndarray, name: str) -> np.ndarray:
    return keypoints[GOLIATH_FACE.names.index(name), :2]


def test_the_68_points_sit_where_the_named_goliath_points_say():
    face = goliath_face(SIZE)
    points = openpose_face_points(face, GOLIATH_FACE, THRESHOLD)
    assert points.shape == (NUM_POINTS, 3)
    # Jaw: only the chin tip; the other 16 jaw points are left out (confidence 0), never invented.
    np.testing.assert_allclose(points[CHIN, :2], named(face, "tip_of_chin"))
    assert (points[[i for i in range(17) if i != CHIN], 2] == 0).all() and (points[17:, 2] == 1).all()
    for index, name in ((17, "end_of_r_eyebrow"), (21, "upper_startpoint_of_r_eyebrow"),
                        (22, "upper_startpoint_of_l_eyebrow"), (26, "end_of_l_eyebrow"), (27, "center_of_nose_root"),
                        (30, "tip_of_nose"), (31, "outer_corner_of_r_nostril"), (33, "bottom_center_of_nose"),
                        (35, "outer_corner_of_l_nostril"), (48, "r_outer_corner_of_mouth"),
                        (51, "center_of_cupid_bow"), (54, "l_outer_corner_of_mouth"),
                        (57, "center_of_lower_outer_lip"), (60, "r_inner_corner_of_mouth"),
                        (62, "center_of_upper_inner_lip"), (64, "l_inner_corner_of_mouth"),
                        (66, "center_of_lower_inner_lip")):
        np.testing.assert_allclose(points[index, :2], named(face, name), atol=1e-3, err_msg=f"point {index}")
    scale = SIZE - 1
    # The subject's right eye (image left): corners, and the lids a third and two thirds of the way along.
    np.testing.assert_allclose(points[36, :2], (EYE_OUTER_X * scale, EYE_Y * scale), atol=1e-3)
    np.testing.assert_allclose(points[39, :2], (EYE_INNER_X * scale, EYE_Y * scale), atol=1e-3)
    width = (EYE_INNER_X - EYE_OUTER_X) * scale
    np.testing.assert_allclose(points[[37, 38], 0], points[36, 0] + width * np.array([1, 2]) / 3, atol=1.5)
    assert (points[[37, 38], 1] < EYE_Y * scale - 5).all() and (points[[40, 41], 1] > EYE_Y * scale + 3).all()
    assert points[40, 0] > points[41, 0]  # the lower lid runs back from the inner corner to the outer one
    # The brows run outer to inner (right) and inner to outer (left), along the arch above the eyes.
    assert np.all(np.diff(points[17:22, 0]) > 0) and np.all(np.diff(points[22:27, 0]) > 0)
    assert points[19, 1] < points[17, 1] and points[24, 1] < points[26, 1]


def test_the_derivation_mirrors_with_the_face():
    """Mirroring the face (x -> W - 1 - x, each Goliath point with its partner) mirrors the 68 points with the
    68-point layout's own partners: no side or order mixed up anywhere."""
    rng = np.random.default_rng(3)
    face = goliath_face(SIZE)
    face[:, :2] += rng.normal(0, 2.0, (len(face), 2))  # no longer symmetric
    mirrored = face[list(GOLIATH_FACE.flip)].copy()
    mirrored[:, 0] = SIZE - 1 - mirrored[:, 0]
    points = openpose_face_points(face, GOLIATH_FACE, THRESHOLD)
    expected = points[list(IBUG_FLIP)].copy()
    expected[:, 0] = SIZE - 1 - expected[:, 0]
    valid = expected[:, 2] > 0
    np.testing.assert_allclose(openpose_face_points(mirrored, GOLIATH_FACE, THRESHOLD)[valid], expected[valid],
                               atol=1e-3)


def test_unsure_points_drop_out_of_their_contour_or_take_its_ends_with_them():
    face = goliath_face(SIZE)
    middle = (EYE_OUTER_X + EYE_INNER_X) / 2 * (SIZE - 1)
    face[GOLIATH_FACE.names.index("r_centerpoint_of_upper_lash_line"), :] = (middle, 10, 0.1)  # unsure, far off
    face[GOLIATH_FACE.names.index("tip_of_nose"), 2] = 0.1
    points = openpose_face_points(face, GOLIATH_FACE, THRESHOLD)
    assert (points[[37, 38], 1] > EYE_Y * (SIZE - 1) - 15).all()  # the unsure point pulled nothing off the lid
    assert (points[27:31, 2] < THRESHOLD).all() and (points[31:36, 2] == 1).all()
    frame = render_openpose_face(points[None], SIZE, THRESHOLD)[0]
    tip = points[30, :2].astype(int)
    assert not frame[tip[1], tip[0]].any()  # an unsure point is not drawn


def test_the_render_is_white_dots_at_the_points_and_nothing_else():
    points = openpose_face_points(goliath_face(SIZE), GOLIATH_FACE, THRESHOLD)
    frame = render_openpose_face(points[None], SIZE, THRESHOLD)[0]
    lit = frame.any(axis=-1)
    assert (frame[lit] == 255).all()  # white, nothing blended
    drawn = points[points[:, 2] >= THRESHOLD, :2].astype(int)  # pixels as the annotators truncate them
    assert len(drawn) == 52 and lit[drawn[:, 1], drawn[:, 0]].all()
    ys, xs = np.nonzero(lit)
    nearest = np.min(np.hypot(xs[:, None] - drawn[None, :, 0], ys[:, None] - drawn[None, :, 1]), axis=1)
    assert nearest.max() <= 3  # within the radius-3 disc of a drawn point: nothing else is lit
    assert lit.sum() >= 52 * 25  # each dot a filled disc (29 px apart from overlaps)
    small = render_openpose_face(points[None] * [0.125, 0.125, 1], 64, THRESHOLD)[0].any(axis=-1)
    assert small.sum() <= 52 * 5  # the radius scales with the frame (1 px at 64)


def test_the_condition_follows_the_config():
    clip = with_goliath_face(perceived_clip(frames=6, size=SIZE // 4))
    openpose = condition_images(GenerateConfig(), clip, [1, 4])
    expected = render_openpose_face(openpose_face_points(clip.keypoints[[1, 4]], GOLIATH_FACE, THRESHOLD),
                                    SIZE // 4, THRESHOLD)
    np.testing.assert_array_equal(openpose, expected)
    pose = condition_images(GenerateConfig(condition="pose_frames"), clip, [1, 4])
    np.testing.assert_array_equal(pose, clip.pose_frames[[1, 4]])
    assert not np.array_equal(openpose, pose)
    with pytest.raises(ValueError, match="derived from the 'goliath_face' layout.*'truth_5' has only 5 points"):
        openpose_face_points(perceived_clip().keypoints, TRUTH_5, THRESHOLD)


def test_an_openpose_condition_without_goliath_keypoints_is_refused_before_any_work():
    perception = {**TRUTH_PERCEPTION.model_dump(), "segmentation": {"backend": "bisenet", "attributes": ["hair"]}}
    build = {"inputs": {"source": "videos"}, "output_dir": "out", "perception": perception,
             "training_samples": {"expansion": {"mode": "generate"}}}
    with pytest.raises(ValueError, match="condition 'openpose_face' derives the 68 OpenPose face points"):
        parse_config(build)
    build["training_samples"]["expansion"]["generate"] = {"condition": "pose_frames"}
    assert parse_config(build).training_samples.expansion.generate.condition == "pose_frames"
