"""The ground-truth backends: exact detections, keypoints and masks for generated videos, in any geometry."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from perception_testing import SIZE, Clip, decode

from data_specs.perception import TRUTH_5, FaceCropConfig, FaceDetectionConfig, KeypointConfig, SegmentationConfig
from tasks.errors import DataError
from tasks.perception import build_face_detector, build_keypoint_estimator, build_segmenter
from tasks.perception.face_track import crop_boxes, crop_clip, to_crop_coords, track_main_face
from tasks.perception.truth import frame_refs
from tasks.synthetic import COLOURS, EYE, HAT

ALL = ("hair", "eyeglasses", "beard", "hat")


def eroded(masks: np.ndarray, pixels: int = 2) -> np.ndarray:
    kernel = np.ones((2 * pixels + 1, 2 * pixels + 1), np.uint8)
    return np.stack([cv2.erode(m.view(np.uint8), kernel) for m in masks]).astype(bool)


def test_truth_detections_are_the_exact_boxes(clips: list[Clip]) -> None:
    clip = clips[0]
    detector = build_face_detector(FaceDetectionConfig(backend="truth"))
    detector.setup()
    assert "ground truth" in detector.provenance and detector.resources.gpus == 0
    found = detector.detect(clip.frames, frame_refs(str(clip.path), clip.times, (SIZE, SIZE), "center"))
    assert len(found) == len(clip.frames) and all(d.shape == (1, 15) and d.dtype == np.float32 for d in found)
    found = np.concatenate(found)
    np.testing.assert_allclose(found[:, :4], clip.truth["boxes"], atol=1e-3)
    np.testing.assert_allclose(found[:, 5:].reshape(-1, 5, 2), clip.truth["keypoints"], atol=1e-3)
    assert (found[:, 4] == 1).all()


@pytest.mark.parametrize("crop", ["center", "pad"])
def test_truth_follows_the_decoders_geometry(wide_video: Path, crop: str) -> None:
    clip = decode(wide_video, size=64, crop=crop)
    refs = frame_refs(str(clip.path), clip.times, (64, 64), crop)
    detector = build_face_detector(FaceDetectionConfig(backend="truth"))
    eyes = np.concatenate(detector.detect(clip.frames, refs))[:, 5:9].reshape(-1, 2, 2)
    if crop == "center":  # eyes 3 px wide: dark where the truth puts them (padding shrinks them to a pixel)
        for frame, frame_eyes in zip(clip.frames, eyes):
            for x, y in np.round(frame_eyes).astype(int):
                assert frame[y - 1 : y + 2, x - 1 : x + 2].min(axis=(0, 1)).max() < COLOURS[EYE][0] + 60
    masks = build_segmenter(SegmentationConfig(backend="truth", attributes=ALL))(clip.frames, refs)
    hat = eroded(masks["hat"])
    assert hat.sum() > 50 and np.abs(clip.frames[hat].astype(int) - COLOURS[HAT]).max() < 30
    assert not masks["beard"].any() and not masks["eyeglasses"].any()  # drawn without them


def test_truth_on_face_crops(clips: list[Clip]) -> None:
    """Detect, track and crop with the truth, then the truth keypoints and masks of the crops line up."""
    clip, config = clips[1], FaceCropConfig(size=96)
    refs = frame_refs(str(clip.path), clip.times, (SIZE, SIZE), "center")
    track = track_main_face(build_face_detector(FaceDetectionConfig(backend="truth")).detect(clip.frames, refs),
                            (SIZE, SIZE), config)
    boxes = crop_boxes(track, config)
    crops = crop_clip(clip.frames, boxes, config.size)
    crop_refs = frame_refs(str(clip.path), clip.times, (SIZE, SIZE), "center", boxes)
    estimator = build_keypoint_estimator(KeypointConfig(backend="truth"))
    assert estimator.layout is TRUTH_5
    keypoints = estimator(crops, refs=crop_refs)
    assert keypoints.shape == (len(crops), 5, 3) and (keypoints[..., 2] == 1).all()
    np.testing.assert_allclose(keypoints[..., :2], to_crop_coords(clip.truth["keypoints"], boxes, config.size),
                               atol=1e-3)
    masks = build_segmenter(SegmentationConfig(backend="truth", attributes=("hat", "hair")))(crops, crop_refs)
    assert list(masks) == ["hat", "hair"] and masks["hat"].shape == crops.shape[:3]
    hat = eroded(masks["hat"])
    assert hat.sum() > 500 and np.abs(crops[hat].astype(int) - COLOURS[HAT]).max() < 30


def test_truth_needs_to_know_each_frame(clips: list[Clip], tmp_path: Path) -> None:
    detector = build_face_detector(FaceDetectionConfig(backend="truth"))
    with pytest.raises(ValueError, match="one FrameRef per image"):
        detector.detect(clips[0].frames)
    refs = frame_refs(str(clips[0].path), clips[0].times[:3], (SIZE, SIZE), "center")
    with pytest.raises(ValueError, match="one FrameRef per image"):
        build_keypoint_estimator(KeypointConfig(backend="truth"))(clips[0].frames[:4], refs=refs)
    stranger = frame_refs(str(tmp_path / "filmed.mp4"), [0.0], (SIZE, SIZE), "center")
    with pytest.raises(DataError, match="no ground truth beside .*filmed.mp4"):
        detector.detect(clips[0].frames[:1], stranger)
