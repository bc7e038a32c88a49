"""UDP/DARK heatmap decoding and the top-down geometry, against heatmaps with known sub-pixel peaks."""

from __future__ import annotations

import cv2
import numpy as np

from tasks.perception.heatmaps import decode_heatmaps, heatmap_to_image, topdown_boxes, udp_warp_matrix

HEATMAP = (48, 64)  # (W, H) of the test heatmaps


def gaussian_heatmaps(points: np.ndarray, size: tuple[int, int], sigma: float = 6.0) -> np.ndarray:
    """(N, K, H, W) unit-peak Gaussians at (N, K, 2) sub-pixel (x, y), as mmpose's UDP encoder draws them."""
    rows, cols = np.indices((size[1], size[0]), dtype=np.float32)
    dx = cols[None, None] - points[..., 0, None, None]
    dy = rows[None, None] - points[..., 1, None, None]
    return np.exp(-(dx**2 + dy**2) / (2 * sigma**2)).astype(np.float32)


def test_decodes_gaussian_peaks_to_sub_pixel_accuracy() -> None:
    rng = np.random.default_rng(0)
    points = rng.uniform([8, 8], [HEATMAP[0] - 8, HEATMAP[1] - 8], (2, 238, 2)).astype(np.float32)  # face subset
    coords, scores = decode_heatmaps(gaussian_heatmaps(points, HEATMAP))
    assert coords.shape == (2, 238, 2) and scores.shape == (2, 238)
    integer_error = np.abs(np.round(points) - points).max()
    assert integer_error > 0.3  # the test points are really off the grid
    np.testing.assert_allclose(coords, points, atol=0.02)
    np.testing.assert_allclose(scores, 1.0, atol=0.02)


def test_heatmap_scale_and_confidence_follow_the_maximum() -> None:
    points = np.array([[[20.4, 30.7], [10.2, 50.9]]], np.float32)
    heatmaps = gaussian_heatmaps(points, HEATMAP) * np.array([0.8, 0.25], np.float32)[None, :, None, None]
    coords, scores = decode_heatmaps(heatmaps)
    np.testing.assert_allclose(coords, points, atol=0.02)
    np.testing.assert_allclose(scores, [[0.8, 0.25]], atol=0.01)


def test_empty_heatmap_gives_no_confident_point() -> None:
    heatmaps = np.zeros((1, 2, HEATMAP[1], HEATMAP[0]), np.float32)
    heatmaps[0, 1] = gaussian_heatmaps(np.array([[[5.5, 6.5]]], np.float32), HEATMAP)[0, 0]
    coords, scores = decode_heatmaps(heatmaps)
    assert scores[0, 0] <= 0 and (coords[0, 0] == -1).all()
    np.testing.assert_allclose(coords[0, 1], [5.5, 6.5], atol=0.02)


def test_topdown_boxes_are_scaled_and_widened_to_three_by_four() -> None:
    centers, sizes = topdown_boxes(np.array([[10, 20, 50, 60], [0, 0, 30, 120]], np.float32), 1.25, 0.75)
    np.testing.assert_allclose(centers, [[30, 40], [15, 60]])
    np.testing.assert_allclose(sizes, [[50, 50 / 0.75], [150 * 0.75, 150]])


def test_warp_then_decode_returns_to_the_image_point() -> None:
    """A point warped onto the network input and encoded at heatmap scale decodes back to itself."""
    input_size, heatmap_size = (48 * 4, 64 * 4), HEATMAP
    centers, sizes = topdown_boxes(np.array([[30, 40, 110, 150]], np.float32), 1.25, 0.75)
    point = np.array([71.3, 88.6])
    matrix = udp_warp_matrix(centers[0], sizes[0], input_size)
    on_input = matrix[:, :2] @ point + matrix[:, 2]
    # The encoder draws the target at input position x (W_heatmap - 1) / (W_input - 1).
    on_heatmap = on_input * (np.array(heatmap_size) - 1) / (np.array(input_size) - 1)
    coords, _ = decode_heatmaps(gaussian_heatmaps(on_heatmap[None, None].astype(np.float32), heatmap_size))
    np.testing.assert_allclose(heatmap_to_image(coords, centers, sizes, heatmap_size)[0, 0], point, atol=0.05)
    # And the warp really puts the image point there: a dot drawn at it lands on `on_input`.
    image = np.zeros((200, 160), np.float32)
    image[round(point[1]), round(point[0])] = 1
    warped = cv2.warpAffine(image, matrix, input_size, flags=cv2.INTER_LINEAR)
    expected = matrix[:, :2] @ np.round(point) + matrix[:, 2]
    assert np.abs(np.array(np.unravel_index(warped.argmax(), warped.shape))[::-1] - expected).max() <= 1
