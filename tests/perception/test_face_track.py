"""Tracking the main face, smoothing, cropping and each rejection rule, on generated videos and their truth."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from perception_testing import SIZE, Clip

from data_specs.perception import FaceCropConfig
from tasks.errors import DataError
from tasks.perception.face_track import (
    crop_boxes,
    crop_clip,
    smooth_boxes,
    to_crop_coords,
    to_frame_coords,
    track_main_face,
)
from tasks.synthetic import COLOURS, HAT

FRAME = (SIZE, SIZE)
CONFIG = FaceCropConfig(size=64)


def centres(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, :2] + boxes[:, 2:4]) / 2


def jitter(boxes: np.ndarray) -> float:
    """Mean size of the frame-to-frame acceleration of the box centre (0 for steady motion)."""
    return float(np.abs(np.diff(centres(boxes), n=2, axis=0)).mean())


def with_boxes(detections: list[np.ndarray], boxes: np.ndarray) -> list[np.ndarray]:
    """The detections with their main box replaced, frame by frame."""
    out = [d.copy() for d in detections]
    for d, box in zip(out, boxes):
        d[0, :4] = box
    return out


def test_crop_follows_the_head(clips: list[Clip]) -> None:
    clip = clips[0]
    track = track_main_face(clip.detections(), FRAME, CONFIG)
    assert track.detected.all() and track.frame_size == FRAME
    np.testing.assert_allclose(track.boxes, clip.truth["boxes"], atol=1e-4)
    boxes = crop_boxes(track, CONFIG)
    assert np.allclose(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])  # square
    # Where the true face centre lands in each crop: the crop centre, lowered by shift_y of the face height.
    face_centre = to_crop_coords(centres(clip.truth["boxes"])[:, None], boxes, CONFIG.size)[:, 0]
    face_height = (clip.truth["boxes"][:, 3] - clip.truth["boxes"][:, 1]) * CONFIG.size / (boxes[:, 2] - boxes[:, 0])
    expected = np.stack([np.full(len(boxes), CONFIG.size / 2 - 0.5), CONFIG.size / 2 - 0.5 + CONFIG.shift_y *
                         face_height], 1)
    assert np.abs(face_centre - expected).max() < 0.03 * CONFIG.size
    keypoints = to_crop_coords(clip.truth["keypoints"], boxes, CONFIG.size)
    assert ((keypoints > 0) & (keypoints < CONFIG.size)).all()
    crops = crop_clip(clip.frames, boxes, CONFIG.size)
    assert crops.shape == (len(clip.frames), 64, 64, 3) and crops.dtype == np.uint8
    # The hat, cut with the same boxes from the exact masks, is hat-coloured in the crops (edges aside).
    hat = crop_clip(clip.truth["masks_hat"], boxes, CONFIG.size, interpolation=cv2.INTER_NEAREST)
    inside = np.stack([cv2.erode(m.view(np.uint8), np.ones((5, 5), np.uint8)) for m in hat]).astype(bool)
    assert inside.sum() > 100
    assert np.abs(crops[inside].astype(int) - COLOURS[HAT]).max() < 30


def test_smoothing_removes_detector_jitter_without_lag(clips: list[Clip]) -> None:
    clip = clips[1]
    truth = clip.truth["boxes"]
    noisy = truth + np.random.default_rng(0).normal(0, 1.5, truth.shape).astype(np.float32)
    track = track_main_face(with_boxes(clip.detections(), noisy), FRAME, CONFIG)
    smoothed = crop_boxes(track, CONFIG)
    raw = crop_boxes(track, CONFIG.model_copy(update={"smoothing_sigma": 0}))
    ideal = crop_boxes(track_main_face(clip.detections(), FRAME, CONFIG), CONFIG.model_copy(
        update={"smoothing_sigma": 0}))
    assert jitter(smoothed) < 0.3 * jitter(raw)
    assert np.abs(smoothed - ideal).mean() < 0.7 * np.abs(raw - ideal).mean()


def test_smoothing_keeps_steady_motion_to_the_ends() -> None:
    steady = np.stack([np.arange(10.0), np.arange(10.0) * 2, np.arange(10.0) + 5, np.arange(10.0) * 2 + 5], 1)
    np.testing.assert_allclose(smooth_boxes(steady, sigma=3), steady, atol=1e-4)
    np.testing.assert_array_equal(smooth_boxes(steady, sigma=0), steady.astype(np.float32))


def test_short_gaps_are_bridged(clips: list[Clip]) -> None:
    clip = clips[0]
    detections = clip.detections()
    detections[5] = detections[6] = np.zeros((0, 15), np.float32)
    track = track_main_face(detections, FRAME, CONFIG)
    assert not track.detected[[5, 6]].any() and track.detected.sum() == len(detections) - 2
    assert np.abs(track.boxes[5:7] - clip.truth["boxes"][5:7]).max() < 2.0


def test_rejects_a_clip_without_a_face() -> None:
    with pytest.raises(DataError, match="^no face: none detected in any of the 8 frames"):
        track_main_face([np.zeros((0, 15), np.float32)] * 8, FRAME, CONFIG)


def test_rejects_a_face_lost_for_long(clips: list[Clip]) -> None:
    detections = clips[0].detections()
    for i in range(8, 14):
        detections[i] = np.zeros((0, 15), np.float32)
    with pytest.raises(DataError, match=r"^no face in frames 8-13 \(6 frames"):
        track_main_face(detections, FRAME, CONFIG)


def test_rejects_several_faces_of_similar_size(clips: list[Clip]) -> None:
    detections = clips[0].detections()
    crowded = [np.concatenate([d, d]) for d in detections]
    for d in crowded:
        d[1, [0, 2]] = FRAME[0] - d[1, [2, 0]]  # a mirrored second face of the same size
    with pytest.raises(DataError, match="^several faces of similar size"):
        track_main_face(crowded, FRAME, CONFIG)
    small_second = [d.copy() for d in crowded]
    for d in small_second:
        d[1, 2:4] = d[1, :2] + 5  # a tiny face in the background is no competitor
    track_main_face(small_second, FRAME, CONFIG)


def test_rejects_a_small_face(clips: list[Clip]) -> None:
    truth = clips[0].truth["boxes"]
    centre, half = centres(truth), (truth[:, 2:] - truth[:, :2]) * 0.1
    small = np.concatenate([centre - half, centre + half], 1)
    with pytest.raises(DataError, match="^face too small"):
        track_main_face(with_boxes(clips[0].detections(), small), FRAME, CONFIG)


def test_rejects_a_face_leaving_the_frame(clips: list[Clip]) -> None:
    truth = clips[0].truth["boxes"]
    drift = np.linspace(0, 0.7 * SIZE, len(truth))[:, None] * [1, 0, 1, 0]  # slides out to the right
    with pytest.raises(DataError, match="^face leaves the frame"):
        track_main_face(with_boxes(clips[0].detections(), truth + drift), FRAME, CONFIG)


def test_rejects_a_cut_seen_in_the_detections(clips: list[Clip]) -> None:
    first, second = clips[0].detections(), clips[1].detections()
    shift = np.zeros(15, np.float32)
    shift[[0, 2, 5, 7, 9, 11, 13]] = 60  # every x moves 60 px to the right
    jumped = first[:12] + [d + shift for d in second[12:]]
    with pytest.raises(DataError, match="^cut inside the clip: the face jumps to another place at frame"):
        track_main_face(jumped, FRAME, CONFIG)


def test_crop_and_coordinates_agree_to_a_fraction_of_a_pixel() -> None:
    spot = np.array([[[47.3, 31.6]], [[90.0, 70.0]]], np.float32)
    rows, cols = np.indices((100, 120))
    blobs = [np.exp(-((cols - x) ** 2 + (rows - y) ** 2) / (2 * 4.0**2)) for ((x, y),) in spot]  # smooth spots
    frames = np.repeat(np.round(np.stack(blobs) * 255).astype(np.uint8)[..., None], 3, axis=3)
    boxes = np.array([[20.5, 10.25, 80.5, 70.25], [-50, -40, 250, 260]], np.float32)  # 60 px, then 300 px (> 2x)
    crops = crop_clip(frames, boxes, 32)
    mapped = to_crop_coords(spot, boxes, 32)
    for crop, ((x, y),) in zip(crops, mapped):
        weights = crop[..., 0].astype(float)
        rows, cols = np.indices(weights.shape)
        centroid = np.array([(cols * weights).sum(), (rows * weights).sum()]) / weights.sum()
        np.testing.assert_allclose(centroid, [x, y], atol=0.15)
    assert crops[1, 0, 0].max() == 0 and crops[1, -1, -1].max() == 0  # outside the frame is black
    np.testing.assert_allclose(to_frame_coords(mapped, boxes, 32), spot, atol=1e-4)
    masks = crop_clip(frames[..., 0] > 128, boxes, 32, interpolation=cv2.INTER_NEAREST)
    assert masks.dtype == bool and masks[0].any()


def test_pixel_centres_are_kept() -> None:
    """A crop box covering the frame edge to edge is the identity; halving maps pixel pairs onto one pixel."""
    frames = np.random.default_rng(0).integers(0, 255, (1, 40, 40, 3), dtype=np.uint8)
    whole = np.array([[0, 0, 40, 40]], np.float32)
    np.testing.assert_array_equal(crop_clip(frames, whole, 40), frames)
    points = np.array([[[0.0, 0.0], [39.0, 12.0]]], np.float32)
    np.testing.assert_allclose(to_crop_coords(points, whole, 40), points, atol=1e-5)
    np.testing.assert_allclose(to_crop_coords(points, whole, 20), [[[-0.25, -0.25], [19.25, 5.75]]], atol=1e-5)
