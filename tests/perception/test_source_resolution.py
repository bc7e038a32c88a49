"""Perception on HD frames at the source's aspect ratio: a face placed high and small is kept, the detector sees a
bounded copy, the crop is cut from the source picture, the face rules judge the real frame, an enlarged crop is
refused with its figure, and the detector's five points come with the sample."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from data_specs.perception import DETECTOR_5, PerceptionConfig
from data_specs.sample import ClipMeta, ClipSample
from data_specs.video import DecodeConfig
from tasks.build_processors import LocalModel
from tasks.errors import DataError
from tasks.media import iter_frames, probe_video, source_frame_size
from tasks.perception.face_track import detector_view, to_crop_coords, to_frame_detections
from tasks.perception.processor import KEYPOINTS, PerceptionProcessor
from tasks.synthetic import COLOURS, EYE, load_truth, write_portrait_video

TRUTH = {"backend": "truth"}
CROP = 160
# 16:9 and 9:16 HD frames with the head high and small (face width 12-14% of the shorter side), as in real
# talking-head and phone footage: a centred square of either frame cuts the head off or shrinks it.
LAYOUTS = {"landscape": {"width": 1280, "height": 720, "head_centre": (0.75, 0.22), "head_size": 0.12},
           "portrait": {"width": 720, "height": 1280, "head_centre": (0.4, 0.16), "head_size": 0.14}}


@pytest.fixture(scope="module")
def hd_videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("hd")
    return {name: write_portrait_video(folder / f"{name}.mp4", seed=7, num_frames=4, attributes=("hair", "hat"),
                                       **layout) for name, layout in LAYOUTS.items()}


def source_clip(path: Path, decode: DecodeConfig = DecodeConfig()) -> ClipSample:
    """The clip as the unit hands it to perception: frames at source size, the source size in the meta."""
    probe = probe_video(str(path))
    frames = list(iter_frames(str(path), probe, decode, source_size=True))
    meta = ClipMeta(video_id=path.stem, clip_index=0, frame_indices=[f.index for f in frames],
                    time_s=[f.time_s for f in frames], fps=24.0, source_path=str(path), content_sha256="0" * 64,
                    config_hash="c", code_version="v", source_size=(probe.width, probe.height))
    return ClipSample(key=f"{path.stem}_c00000", meta=meta, frames=np.stack([f.image for f in frames]))


def perceive(clip: ClipSample, **sections: dict) -> ClipSample:
    config = PerceptionConfig.model_validate({
        "detection": TRUTH, "keypoints": TRUTH, "segmentation": {**TRUTH, "attributes": ["hair", "hat"]},
        **sections, "crop": {"size": CROP, **sections.get("crop", {})}})
    perception = PerceptionProcessor(config, DecodeConfig())
    perception.setup({spec.name: LocalModel(spec) for spec in perception.models})
    (out,) = perception(clip)
    return out


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_a_high_small_face_is_kept_and_cropped_from_the_source_picture(hd_videos: dict[str, Path],
                                                                       name: str) -> None:
    clip = source_clip(hd_videos[name])
    layout = LAYOUTS[name]
    assert clip.frames.shape[1:3] == (layout["height"], layout["width"])
    out = perceive(clip)
    truth = load_truth(hd_videos[name])
    boxes = np.asarray(out.meta.perception.crop_boxes)
    assert out.frames.shape == (4, CROP, CROP, 3)
    # The crop holds the whole face: its box (source pixels) contains the truth's face box.
    assert (boxes[:, :2] < truth["boxes"][:, :2]).all() and (boxes[:, 2:] > truth["boxes"][:, 2:]).all()
    # Cut from the source frame: an integer-aligned slice of the source, area-resized, is the same picture.
    for frame, crop, box in zip(clip.frames, out.frames, boxes):
        x1, y1, x2, y2 = np.round(box).astype(int)
        assert x1 >= 0 and y1 >= 0
        expected = cv2.resize(frame[y1:y2, x1:x2], (CROP, CROP), interpolation=cv2.INTER_AREA)
        assert np.abs(crop.astype(int) - expected).mean() < 6
    # Its scale from source pixels is the crop side over the crop size (margin 0.5: twice the face's longer side).
    sides = np.maximum(truth["boxes"][:, 2] - truth["boxes"][:, 0], truth["boxes"][:, 3] - truth["boxes"][:, 1])
    assert out.meta.perception.source_px_per_output_px == pytest.approx(np.median(sides) * 2 / CROP, rel=0.03)


def test_the_detectors_points_are_the_eye_centres_in_the_crop(hd_videos: dict[str, Path]) -> None:
    clip = source_clip(hd_videos["landscape"])
    out = perceive(clip)
    truth = load_truth(hd_videos["landscape"])
    boxes = np.asarray(out.meta.perception.crop_boxes, np.float32)
    expected = to_crop_coords(truth["keypoints"], boxes, CROP)
    assert out.landmarks.shape == (4, 5, 2) and out.landmarks.dtype == np.float32
    # Through the detector's half-size copy and back: within half a source pixel, i.e. < 0.5 crop pixels here.
    np.testing.assert_allclose(out.landmarks, expected, atol=0.5)
    for crop, eyes in zip(out.frames, out.landmarks[:, :2]):  # and the crop is dark (an eye) there
        for x, y in np.round(eyes).astype(int):
            assert crop[y - 1:y + 2, x - 1:x + 2].min(axis=(0, 1)).max() < COLOURS[EYE][0] + 40


def test_the_face_rules_judge_the_real_frame(hd_videos: dict[str, Path]) -> None:
    """min_face_fraction refers to the 720 px shorter side of the HD frame, not to a square thumbnail."""
    clip = source_clip(hd_videos["landscape"])
    with pytest.raises(DataError, match=r"face too small: median side [6-9]\d\.\d px, minimum 144\.0 px \(20% of"):
        perceive(clip, crop={"min_face_fraction": 0.2})
    assert perceive(clip, crop={"min_face_fraction": 0.1}).frames.shape[0] == 4


def test_a_crop_enlarged_beyond_the_bound_is_refused_with_its_figure(hd_videos: dict[str, Path]) -> None:
    clip = source_clip(hd_videos["landscape"])
    # A 512 px crop from about 224 source px: 0.44 source px per output px, below 1 / 1.5.
    with pytest.raises(DataError, match=r"crop enlarged from the source: 0\.4\d source px per output px .*"
                                        r"below 1/1\.5 \(crop\.max_upscale\)"):
        perceive(clip, crop={"size": 512})
    assert perceive(clip, crop={"size": 512, "max_upscale": 2.5}).meta.perception.source_px_per_output_px < 0.5


def test_a_source_larger_than_max_side_counts_its_own_pixels(hd_videos: dict[str, Path]) -> None:
    """Decoded at half size (decode.max_side), the crop's figure is still in source pixels."""
    decode = DecodeConfig(max_side=640)
    assert source_frame_size(probe_video(str(hd_videos["landscape"])), decode) == (640, 360)
    full = perceive(source_clip(hd_videos["landscape"]))
    half = perceive(source_clip(hd_videos["landscape"], decode))
    assert half.meta.perception.source_px_per_output_px == pytest.approx(
        full.meta.perception.source_px_per_output_px, rel=0.02)


def test_the_detector_keypoint_backend_gives_the_five_landmarks(hd_videos: dict[str, Path]) -> None:
    out = perceive(source_clip(hd_videos["portrait"]), keypoints={"backend": "detector"})
    assert out.meta.perception.keypoint_layout == DETECTOR_5.name
    assert out.keypoints.shape == (4, 5, 3)
    np.testing.assert_array_equal(out.keypoints[..., :2], out.landmarks)
    assert (out.keypoints[..., 2] == 1).all()  # the truth detector's score
    assert out.meta.perception.provenance[KEYPOINTS].startswith("face detector landmarks (ground truth")
    assert out.pose_frames.any()
    config = PerceptionConfig.model_validate({"detection": TRUTH, "keypoints": {"backend": "detector"}})
    assert KEYPOINTS not in [spec.name for spec in PerceptionProcessor(config, DecodeConfig()).models]


def test_the_detector_sees_a_copy_bounded_by_max_side() -> None:
    frames = np.random.default_rng(0).integers(0, 255, (2, 720, 1280, 3), dtype=np.uint8)
    view, scale = detector_view(frames, 640)
    assert view.shape == (2, 360, 640, 3) and scale == (2.0, 2.0)
    np.testing.assert_allclose(view[0].astype(float).mean(), frames[0].astype(float).mean(), atol=0.5)
    same, unit = detector_view(frames[:, :300, :400], 640)
    assert same.shape == (2, 300, 400, 3) and unit == (1.0, 1.0)
    detection = np.arange(15, dtype=np.float32)[None]
    (mapped,) = to_frame_detections([detection], (2.0, 3.0))
    np.testing.assert_array_equal(mapped[0, [0, 2, 5, 7, 9, 11, 13]], 2 * detection[0, [0, 2, 5, 7, 9, 11, 13]])
    np.testing.assert_array_equal(mapped[0, [1, 3, 6, 8, 10, 12, 14]], 3 * detection[0, [1, 3, 6, 8, 10, 12, 14]])
    assert mapped[0, 4] == 4  # the score is not a coordinate
