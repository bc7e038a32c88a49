"""The unit runner on real videos, without Prefect or Ray: rows, failures, skips, redo, processors."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from data_specs.layout import OutputLayout
from data_specs.sample import ClipSample, clip_key
from data_specs.schemas import FailureRow
from data_specs.units import WorkUnit
from tasks.base import Resources
from tasks.errors import DataError
from tasks.sources import list_videos, plan_units
from tasks.unit import run_unit
from tests.conftest import small_config

EXPECTED_FAILURES = {
    "zero_byte": ("probe", "file is empty (0 bytes)"),
    "truncated": ("probe", "truncated or corrupt video (moov atom not found)"),
    "random_bytes": ("probe", "not a video file"),
    "audio_only": ("probe", "no video stream (audio only)"),
    "one_frame": ("decode", "too short: 1 frame(s) decoded, a clip needs 4 (clips.length)"),
    "large": ("probe", "4104x4104"),
    "truncated_stream": ("decode", "decode failed after"),
}


def run_all(config) -> list:
    units = plan_units(list_videos(config.inputs), config)
    return [run_unit(unit, config) for unit in units]


def one_unit(config) -> WorkUnit:
    return WorkUnit(unit_id="all", fingerprint="0" * 16, videos=tuple(list_videos(config.inputs)))


def table(output: Path, report, name: str) -> list[dict]:
    return pq.read_table(output / report.parts_dir / f"{name}.parquet").to_pylist()


def test_bad_inputs_become_failure_rows_and_good_ones_samples(videos: Path, tmp_path: Path):
    config = small_config(videos, tmp_path / "out", execution={"videos_per_unit": 100})
    reports = run_all(config)
    failures = [row for r in reports for row in table(config.output_path, r, "failures")]
    by_name = {row["source_path"].rsplit("/", 1)[-1].rsplit(".", 1)[0]: row for row in failures}
    assert set(by_name) == set(EXPECTED_FAILURES)
    for name, (failed_in, reason) in EXPECTED_FAILURES.items():
        assert by_name[name]["failed_in"] == failed_in and reason in by_name[name]["reason"], by_name[name]
    video_rows = {row["source_path"].rsplit("/", 1)[-1]: row for r in reports for row in table(config.output_path, r, "videos")}
    ok = {name for name, row in video_rows.items() if row["status"] == "ok"}
    assert ok == {f"portrait_{i:04d}.mp4" for i in range(5)} | {"rotated.mp4", "variable_fps.mp4",
                                                                  "spaces and ünïcode name.mp4"}
    assert video_rows["rotated.mp4"]["rotation"] == 90 and video_rows["variable_fps.mp4"]["variable_fps"]
    samples = [row for r in reports for row in table(config.output_path, r, "samples")]
    # 24 frames at 24 fps -> 12 frames at 12 fps -> three 4-frame clips per good portrait video.
    assert sum(row["video_id"].startswith("portrait_") for row in samples) == 15
    assert all(row["content_sha256"] and len(row["frame_indices"]) == 4 for row in samples)


def test_second_run_skips_and_a_touched_video_is_redone(videos: Path, tmp_path: Path):
    config = small_config(videos / "good", tmp_path / "out", execution={"videos_per_unit": 1})
    first = run_all(config)
    assert not any(r.skipped for r in first) and len(first) == 5
    assert all(r.skipped for r in run_all(config))
    touched = videos / "good" / "portrait_0002.mp4"
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    third = run_all(config)
    redone = [r for r in third if not r.skipped]
    assert len(redone) == 1 and table(config.output_path, redone[0], "videos")[0]["source_path"] == str(touched)
    # The superseded run's shards and parts are gone; the new ones exist.
    layout = OutputLayout(config.output_path)
    old = next(r for r in first if r.unit_id == redone[0].unit_id)
    assert not any((layout.shards / s).exists() for s in old.shards)
    assert all((layout.shards / s).exists() for s in redone[0].shards)
    assert not (config.output_path / old.parts_dir).exists()


class RejectSecondClip:
    """A clip processor that rejects every second clip, as perception rejects a clip without a face."""

    name = "face-check"
    resources = Resources(cpus=1)
    models = ()
    requires = ()

    def setup(self, models) -> None:
        self.calls = 0

    def __call__(self, sample: ClipSample) -> list[ClipSample]:
        if sample.meta.clip_index == 1:
            raise DataError("no face found in 4 of 4 frames")
        sample.keypoints = np.zeros((len(sample.frames), 5, 3), np.float32)
        return [sample]


def test_a_processor_failure_drops_one_clip_and_is_recorded(videos: Path, tmp_path: Path):
    config = small_config(videos / "good", tmp_path / "out", execution={"videos_per_unit": 100})
    report = run_unit(one_unit(config), config, [RejectSecondClip()])
    failures = table(config.output_path, report, "failures")
    assert len(failures) == 5 and {row["failed_in"] for row in failures} == {"face-check"}
    assert {row["reason"] for row in failures} == {"no face found in 4 of 4 frames"}
    assert all(row["item_id"].endswith("_c00001") and row["frame_indices"] == [4, 5, 6, 7] for row in failures)
    samples = table(config.output_path, report, "samples")
    assert len(samples) == 10 and all("keypoints.npy" in row["fields"] for row in samples)


def test_on_error_raise_stops_at_the_first_bad_video(videos: Path, tmp_path: Path):
    config = small_config(videos / "edge", tmp_path / "out", execution={"on_error": "raise", "videos_per_unit": 100})
    with pytest.raises(DataError):
        run_unit(one_unit(config), config)
    assert not list((tmp_path / "out" / "shards").glob("*.tar"))
    assert not (tmp_path / "out" / "units").exists() or not list((tmp_path / "out" / "units").glob("*.done.json"))


def test_time_range_and_clip_cap_from_a_manifest(videos: Path, tmp_path: Path):
    (tmp_path / "list.csv").write_text(f"path,start_s,end_s\n{videos / 'good' / 'portrait_0000.mp4'},0.25,0.75\n")
    config = small_config(tmp_path / "list.csv", tmp_path / "out", clips={"length": 2, "stride": 1,
                                                                          "max_clips_per_video": 3})
    (report,) = run_all(config)
    clips = table(config.output_path, report, "clips")
    assert [row["frame_indices"] for row in clips] == [[0, 1], [1, 2], [2, 3]]
    assert 0.24 <= clips[0]["time_start_s"] <= 0.34


def test_videos_behind_an_fsspec_url_are_fetched_and_processed(videos: Path, tmp_path: Path):
    import fsspec

    memory = fsspec.filesystem("memory")
    memory.pipe("/bucket/in/portrait_0000.mp4", (videos / "good" / "portrait_0000.mp4").read_bytes())
    try:
        config = small_config("memory://bucket/in", tmp_path / "out")
        (ref,) = list_videos(config.inputs)
        assert ref.uri == "memory:///bucket/in/portrait_0000.mp4"
        (report,) = run_all(config)
        (video,) = table(config.output_path, report, "videos")
        assert video["status"] == "ok" and video["source_path"] == ref.uri and report.samples == 3
    finally:
        memory.rm("/bucket", recursive=True)


class RejectSilently(RejectSecondClip):
    def __call__(self, sample: ClipSample) -> list[ClipSample]:
        raise DataError()


def test_a_failure_without_a_message_still_gets_a_readable_reason(videos: Path, tmp_path: Path):
    config = small_config(videos / "good", tmp_path / "out", execution={"videos_per_unit": 100})
    report = run_unit(one_unit(config), config, [RejectSilently()])
    reasons = {row["reason"] for row in table(config.output_path, report, "failures")}
    assert reasons == {"DataError (raised without a message)"}
    with pytest.raises(ValueError, match="has no reason"):
        FailureRow(item_id="x", failed_in="s", reason=" ", source_path="p", config_hash="h", code_version="c",
                   unit_id="u")


def test_samples_are_written_in_video_then_clip_order(videos: Path, tmp_path: Path):
    """Shards are byte-identical across runs only while a unit writes its samples in one fixed order."""
    config = small_config(videos / "good", tmp_path / "out", shards={"samples_per_shard": 100})
    unit = one_unit(config)
    report = run_unit(unit, config)
    with tarfile.open(config.output_path / "shards" / report.shards[0]) as tar:
        keys = list(dict.fromkeys(name.split(".", 1)[0] for name in tar.getnames()))
    assert keys == [clip_key(video.video_id, index) for video in unit.videos for index in range(3)]
    assert [row["sample_key"] for row in table(config.output_path, report, "samples")] == keys


def test_the_fingerprint_changes_with_a_video_size_or_mtime(videos: Path, tmp_path: Path):
    config = small_config(videos / "good", tmp_path / "out", execution={"videos_per_unit": 100})
    refs = list_videos(config.inputs)
    (unit,) = plan_units(refs, config)
    resized = [refs[0].model_copy(update={"size_bytes": refs[0].size_bytes + 1}), *refs[1:]]
    touched = [refs[0].model_copy(update={"modified": refs[0].modified + "1"}), *refs[1:]]
    for changed in (resized, touched):
        (other,) = plan_units(changed, config)
        assert other.unit_id == unit.unit_id and other.fingerprint != unit.fingerprint


def test_perception_crops_from_the_source_and_records_the_crop_scale(tmp_path: Path):
    """16:9 HD sources with the face high and small: decoded at source size, the face is kept and
    clips.parquet records each crop's scale from source pixels; a crop that would be enlarged too much is a
    failure row with its figure."""
    from tasks.synthetic import write_portrait_video

    for name, head_size in (("near", 0.12), ("far", 0.06)):
        write_portrait_video(tmp_path / "in" / f"{name}.mp4", seed=3, num_frames=8, width=1280, height=720,
                             head_centre=(0.3, 0.25), head_size=head_size, attributes=("hair",))
    truth = {"backend": "truth"}
    config = small_config(tmp_path / "in", tmp_path / "out", perception={
        "detection": truth, "keypoints": truth, "segmentation": {**truth, "attributes": ["hair"]},
        "crop": {"size": 256, "min_face_fraction": 0.05}})
    report = run_unit(one_unit(config), config)
    clips = {row["source_path"].rsplit("/", 1)[-1]: row for row in table(config.output_path, report, "clips")}
    # near: a ~224 source px crop side for 256 output px; far: half of that, beyond the 1.5x bound.
    assert 0.8 < clips["near.mp4"]["source_px_per_output_px"] < 0.95
    assert clips["far.mp4"]["source_px_per_output_px"] is None
    (failure,) = table(config.output_path, report, "failures")
    assert failure["item_id"] == clips["far.mp4"]["clip_id"] and failure["failed_in"] == "perception"
    assert failure["reason"].startswith("crop enlarged from the source: 0.4")
    (sample,) = table(config.output_path, report, "samples")
    assert sample["clip_id"] == clips["near.mp4"]["clip_id"] and "landmarks.npy" in sample["fields"]
