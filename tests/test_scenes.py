"""Scenes: PySceneDetect on the decoded frames, streamed; clips never straddle a cut; the seeded scene sample."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from data_specs.sample import decode_sample
from data_specs.scenes import SceneConfig
from data_specs.units import UnitReport, WorkUnit
from data_specs.video import DecodeConfig
from tasks.clips import cut_clips, cut_scene_clips
from tasks.media import Frame, iter_frames, probe_video
from tasks.scenes import sample_scene_frames, split_scenes
from tasks.sources import list_videos
from tasks.unit import run_unit
from tests.conftest import small_config
from tests.scene_videos import SCENES_AT_12_FPS, write_cut_video

DECODE = DecodeConfig(fps=12, size=64)


@pytest.fixture(scope="module")
def cut_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cut_video(tmp_path_factory.mktemp("scenes"))


def decoded(path: Path) -> list[Frame]:
    return list(iter_frames(str(path), probe_video(str(path)), DECODE))


@pytest.mark.parametrize("config", [SceneConfig(), SceneConfig(detector="content", threshold=20)])
def test_a_hard_cut_and_a_zoom_cut_start_scenes(cut_video: Path, config: SceneConfig):
    scenes = list(split_scenes(decoded(cut_video), config, 12.0))
    assert [frame.index for _, frame in scenes] == list(range(len(SCENES_AT_12_FPS)))
    assert [scene for scene, _ in scenes] == SCENES_AT_12_FPS


def test_the_default_content_threshold_misses_the_zoom_cut(cut_video: Path):
    """Why the adaptive detector is the default: the zoom cut changes a fifth of the picture by a little."""
    scenes = [scene for scene, _ in split_scenes(decoded(cut_video), SceneConfig(detector="content"), 12.0)]
    assert scenes == [0] * 11 + [1] * 25


def test_without_a_detector_the_video_is_one_scene(cut_video: Path):
    assert {scene for scene, _ in split_scenes(decoded(cut_video), SceneConfig(detector="none"), 12.0)} == {0}


def test_clips_never_straddle_a_cut(cut_video: Path):
    frames = decoded(cut_video)
    naive = [[f.index for f in clip] for clip in cut_clips(frames, 4, 4)]
    assert [8, 9, 10, 11] in naive  # the cut at frame 11 would sit in the last frame of this clip
    clips = [(scene, [f.index for f in clip])
             for scene, clip in cut_scene_clips(split_scenes(frames, SceneConfig(), 12.0), 4, 4)]
    assert clips == [(0, [0, 1, 2, 3]), (0, [4, 5, 6, 7]), (1, [11, 12, 13, 14]), (1, [15, 16, 17, 18]),
                     (1, [19, 20, 21, 22]), (2, [23, 24, 25, 26]), (2, [27, 28, 29, 30]), (2, [31, 32, 33, 34])]


def test_detection_holds_back_only_the_detectors_lookahead():
    """Frames come out at most `min_scene_s` seconds after they went in: the video is never held."""
    taken = []

    def frames():
        for index in range(200):
            taken.append(index)
            yield Frame(index, index / 12, np.full((32, 32, 3), 50 if index < 100 else 200, np.uint8))

    for scene, frame in split_scenes(frames(), SceneConfig(min_scene_s=0.5), 12.0):
        assert taken[-1] - frame.index <= 6 and scene == (frame.index >= 100)


def _rng(scene: int | None) -> np.random.Generator:
    return np.random.default_rng([0, 1000 if scene is None else scene])


def test_the_scene_sample_is_bounded_uniform_and_seeded():
    stream = [(index // 30, Frame(index, index / 12, np.zeros((2, 2, 3), np.uint8))) for index in range(75)]
    samples = list(sample_scene_frames(iter(stream), 8, _rng))
    assert [(s.scene_index, s.first_index, s.last_index, len(s.frames)) for s in samples] == [
        (0, 0, 29, 8), (1, 30, 59, 8), (2, 60, 74, 8)]
    for sample in samples:
        indices = [f.index for f in sample.frames]
        assert indices == sorted(set(indices)) and sample.first_index <= indices[0] <= indices[-1] <= sample.last_index
    again = list(sample_scene_frames(iter(stream), 8, _rng))
    assert [[f.index for f in s.frames] for s in again] == [[f.index for f in s.frames] for s in samples]
    (video,) = sample_scene_frames(iter(stream), 5, _rng, whole_video=True)
    assert video.scene_index is None and (video.first_index, video.last_index, len(video.frames)) == (0, 74, 5)
    # Uniform: over many seeds every frame of a scene is about as likely to be kept.
    counts = np.zeros(30)
    for seed in range(400):
        (sample,) = sample_scene_frames(iter(stream[:30]), 3, lambda s, seed=seed: np.random.default_rng(seed))
        counts[[f.index for f in sample.frames]] += 1
    assert counts.sum() == 1200 and counts.min() > 20 and counts.max() < 60


# ---------------------------------------------------------------- in the unit: clips.parquet, pairs from the scene

TRUTH = {"backend": "truth", "runtime": {"device": "cpu"}}
PERCEPTION = {"detection": TRUTH, "keypoints": TRUTH, "crop": {"size": 48},
              "segmentation": {**TRUTH, "attributes": ["hair", "hat"]}}


def pairs_config(**references) -> dict:
    """Pairs whose references come from the scene; every frame of a scene is a candidate (the longest has 13), so
    which clips can be served does not hang on the draw."""
    return {"pairs": {"pairs_per_clip": 2, "frames": 2, "min_ref_distance": 1,
                      "references": {"scope": "scene", "min_gap_s": 0.25, "candidates": 13, **references}},
            "expansion": {"mode": "none"}, "augment": {"enabled": False}}


def build(cut_video: Path, output: Path, **overrides) -> tuple[UnitReport, dict[str, list[dict]]]:
    config = small_config(cut_video.parent, output, **overrides)  # the folder holds the cut video alone
    unit = WorkUnit(unit_id="cuts", fingerprint="0" * 16, videos=tuple(list_videos(config.inputs)))
    report = run_unit(unit, config)
    tables = {name: pq.read_table(output / report.parts_dir / f"{name}.parquet").to_pylist()
              for name in ("clips", "samples", "failures", "shards")}
    return report, tables


def shard_samples(output: Path, report: UnitReport) -> list:
    return [decode_sample(raw) for shard in report.shards
            for raw in wds.WebDataset(str(output / "shards" / shard), shardshuffle=False)]


def test_the_unit_cuts_clips_inside_scenes_and_records_them(cut_video: Path, tmp_path: Path):
    report, tables = build(cut_video, tmp_path / "out")
    assert [(row["scene_index"], row["frame_indices"][0]) for row in tables["clips"]] == [
        (0, 0), (0, 4), (1, 11), (1, 15), (1, 19), (2, 23), (2, 27), (2, 31)]
    for row in tables["clips"]:
        assert {SCENES_AT_12_FPS[i] for i in row["frame_indices"]} == {row["scene_index"]}
    samples = shard_samples(tmp_path / "out", report)
    assert [s.meta.scene_index for s in samples] == [row["scene_index"] for row in tables["clips"]]
    assert [row["scene_index"] for row in tables["samples"]] == [row["scene_index"] for row in tables["clips"]]


def test_a_video_whose_scenes_are_all_shorter_than_a_clip_says_so(cut_video: Path, tmp_path: Path):
    _, tables = build(cut_video, tmp_path / "out", clips={"length": 14, "stride": 14})
    assert not tables["clips"] and [row["reason"] for row in tables["failures"]] == [
        "too short: 36 frame(s) decoded in 3 scenes of at most 13 frames, a clip needs 14 (clips.length)"]


def test_pairs_take_their_references_from_the_clips_scene_far_from_the_targets(cut_video: Path, tmp_path: Path):
    report, tables = build(cut_video, tmp_path / "out", perception=PERCEPTION, training_samples=pairs_config())
    samples = shard_samples(tmp_path / "out", report)
    assert len(samples) == len(tables["samples"]) > 20 and not tables["failures"]
    scenes = {row["clip_id"]: row["scene_index"] for row in tables["clips"]}
    for sample, row in zip(samples, tables["samples"], strict=True):
        meta = sample.meta
        assert meta.scene_index == scenes[meta.clip_key] == row["scene_index"] and meta.reference_scope == "scene"
        target_times = np.array(meta.target_frame_indices) / 12
        for ref in (meta.attribute_ref, meta.portrait_ref):
            assert ref.position is None and SCENES_AT_12_FPS[ref.frame_index] == meta.scene_index
            assert ref.time_s == pytest.approx(ref.frame_index / 12)
            assert ref.gap_s == pytest.approx(np.abs(ref.time_s - target_times).min()) and ref.gap_s >= 0.25 - 1e-6
        assert row["reference_gap_s"] == pytest.approx(meta.reference_gap_s)
    # The same inputs give the same pairs, byte for byte.
    again, tables_again = build(cut_video, tmp_path / "again", perception=PERCEPTION, training_samples=pairs_config())
    assert [row["sha256"] for row in tables_again["shards"]] == [row["sha256"] for row in tables["shards"]]


def test_a_clip_without_a_far_enough_reference_is_a_failure_row(cut_video: Path, tmp_path: Path):
    _, tables = build(cut_video, tmp_path / "out", perception=PERCEPTION,
                      training_samples=pairs_config(min_gap_s=1.0), clips={"max_clips_per_video": 2})
    assert not tables["samples"] and len(tables["failures"]) == 2
    for row in tables["failures"]:
        assert row["failed_in"] == "training-samples"
        assert row["reason"].startswith("no reference 1 s from the targets (pairs.references.min_gap_s) with hair")
        assert "reference candidate(s) of scene 0 perceived" in row["reason"]


def test_references_from_the_whole_video(cut_video: Path, tmp_path: Path):
    report, tables = build(cut_video, tmp_path / "out", perception=PERCEPTION,
                           training_samples=pairs_config(scope="video", min_gap_s=1.0, candidates=36))
    samples = shard_samples(tmp_path / "out", report)
    assert samples and not tables["failures"]
    other_scene = 0
    for sample in samples:
        for ref in (sample.meta.attribute_ref, sample.meta.portrait_ref):
            assert ref.gap_s >= 1.0 - 1e-6
            other_scene += SCENES_AT_12_FPS[ref.frame_index] != sample.meta.scene_index
    assert other_scene > 0 and {s.meta.reference_scope for s in samples} == {"video"}
