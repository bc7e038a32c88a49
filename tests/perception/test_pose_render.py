"""Rendered pose frames against their spec: colours by region, confidence gate, sizes, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from data_specs.perception import GOLIATH_FACE, TRUTH_5, PoseRenderSpec
from data_specs.pose_frames import render_pose_frames


def spread_points(count: int, size: int, confidence: float = 1.0) -> np.ndarray:
    """(1, count, 3) points on a grid, at least 8 px apart, inside a size x size frame."""
    side = int(np.ceil(np.sqrt(count)))
    step = size // (side + 1)
    assert step >= 8
    grid = np.array([((i % side + 1) * step, (i // side + 1) * step, confidence) for i in range(count)], np.float32)
    return grid[None]


def test_each_point_has_its_regions_colour_and_nothing_else_is_drawn() -> None:
    spec = PoseRenderSpec(point_radius=2, reference_size=256)
    points = spread_points(GOLIATH_FACE.num_points, 256)
    frame = render_pose_frames(points, GOLIATH_FACE, 256, spec)[0]
    drawn = np.zeros(frame.shape[:2], bool)
    for (x, y, _), region in zip(points[0], GOLIATH_FACE.regions):
        x, y = int(x), int(y)
        assert tuple(frame[y, x]) == spec.region_colours[region]
        assert tuple(frame[y, x + 2]) == spec.region_colours[region] and frame[y, x + 3].max() == 0  # radius 2
        drawn[y - 2 : y + 3, x - 2 : x + 3] = True
    assert frame[~drawn].max() == 0  # black background
    colours = {tuple(c) for c in frame.reshape(-1, 3)} - {(0, 0, 0)}
    assert colours == {spec.region_colours[r] for r in GOLIATH_FACE.regions}  # no blended colours


def test_low_confidence_and_outside_points_are_not_drawn() -> None:
    points = spread_points(TRUTH_5.num_points, 64)
    points[0, 1, 2] = 0.29  # below the default 0.3
    points[0, 2, :2] = [80, 10]  # outside the frame
    points[0, 3, :2] = np.nan
    frame = render_pose_frames(points, TRUTH_5, 64)[0]
    spec = PoseRenderSpec()
    drawn = {tuple(c) for c in frame.reshape(-1, 3)} - {(0, 0, 0)}
    assert drawn == {spec.region_colours[TRUTH_5.regions[i]] for i in (0, 4)}
    assert frame[int(points[0, 1, 1]), int(points[0, 1, 0])].max() == 0
    higher = render_pose_frames(points, TRUTH_5, 64, PoseRenderSpec(confidence_threshold=0.2))[0]
    assert higher[int(points[0, 1, 1]), int(points[0, 1, 0])].max() > 0


def test_dot_size_scales_with_the_output_and_rendering_is_deterministic() -> None:
    points = spread_points(TRUTH_5.num_points, 64)
    small = render_pose_frames(points, TRUTH_5, 64, PoseRenderSpec(point_radius=4, reference_size=128))
    large = render_pose_frames(points * [2, 2, 1], TRUTH_5, (128, 128), PoseRenderSpec(point_radius=4,
                                                                                        reference_size=128))
    assert (large[0] > 0).any(axis=2).sum() > 3 * (small[0] > 0).any(axis=2).sum()
    np.testing.assert_array_equal(small, render_pose_frames(points, TRUTH_5, 64, PoseRenderSpec(
        point_radius=4, reference_size=128)))
    one_pixel = render_pose_frames(points, TRUTH_5, 64, PoseRenderSpec(point_radius=0))
    assert (one_pixel[0] > 0).any(axis=2).sum() == TRUTH_5.num_points
    wide = render_pose_frames(np.repeat(points, 3, axis=0), TRUTH_5, (32, 80))
    assert wide.shape == (3, 32, 80, 3) and wide.dtype == np.uint8


def test_layout_and_spec_must_fit_the_keypoints() -> None:
    with pytest.raises(ValueError, match=r"\(N, 238, 3\)"):
        render_pose_frames(np.zeros((1, 5, 3)), GOLIATH_FACE, 64)
    with pytest.raises(ValueError, match="no colour for region"):
        render_pose_frames(np.zeros((1, 5, 3)), TRUTH_5, 64, PoseRenderSpec(region_colours={"nose": (1, 2, 3)}))
