"""Running one unit of work: videos in, shards and manifest parts out.

The output folder holds:

    shards/<unit>-<fp>-NNNNN.tar        complete shards (partial ones are hidden `.partial` files)
    units/<unit>-<fp>/<table>.parquet   this unit's manifest rows, one file per table
    units/<unit>.done.json              the `UnitReport`, written last: the unit is complete

A unit whose done file carries the current fingerprint is skipped. A unit redone
because its inputs changed writes under a new fingerprint, then retires the files of
its previous run, so a run killed at any point leaves only complete files behind and
the previous manifest still describes files that exist.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from data_specs.config import BuildConfig
from data_specs.lineage import code_version
from data_specs.sample import ClipMeta, ClipSample, clip_key, encode_sample
from data_specs.schemas import to_table, write_table_atomic
from data_specs.units import UnitReport, VideoRef, WorkUnit
from tasks.base import ClipStage
from tasks.clips import cut_clips
from tasks.errors import DataError, failure_kind
from tasks.media import Frame, check_decodable, iter_frames, probe_video
from tasks.shards import RotatingShardWriter
from tasks.sources import local_copy, sha256_file


@dataclass(frozen=True)
class OutputLayout:
    """Where a build's files live under its output folder."""

    root: Path

    @property
    def shards(self) -> Path:
        return self.root / "shards"

    @property
    def units(self) -> Path:
        return self.root / "units"

    @property
    def manifests(self) -> Path:
        return self.root / "manifests"

    def done_file(self, unit_id: str) -> Path:
        return self.units / f"{unit_id}.done.json"

    def parts_dir(self, unit: WorkUnit) -> Path:
        return self.units / f"{unit.unit_id}-{unit.fingerprint[:8]}"


def read_report(layout: OutputLayout, unit_id: str) -> UnitReport | None:
    """The unit's last completed report, or None if it never completed."""
    done = layout.done_file(unit_id)
    return UnitReport.model_validate_json(done.read_text()) if done.exists() else None


def is_complete(layout: OutputLayout, unit: WorkUnit) -> bool:
    report = read_report(layout, unit.unit_id)
    return report is not None and report.fingerprint == unit.fingerprint


@dataclass
class _Rows:
    """Manifest rows collected while a unit runs."""

    videos: list[dict] = field(default_factory=list)
    clips: list[dict] = field(default_factory=list)
    samples: list[dict] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)
    frames: int = 0


def run_unit(unit: WorkUnit, config: BuildConfig, stages: Sequence[ClipStage] = ()) -> UnitReport:
    """Process every video of `unit` and publish its shards and manifest parts.

    Bad videos and clips become failure rows (or raise, with `on_error="raise"`);
    anything else raises, and the unit leaves no visible trace until a retry succeeds.
    """
    started, started_at = time.perf_counter(), time.time()
    layout = OutputLayout(config.output_path)
    previous = read_report(layout, unit.unit_id)
    if previous is not None and previous.fingerprint == unit.fingerprint:
        return previous.model_copy(update={"skipped": True})

    # OpenCV's thread pool only adds scheduling overhead on single frames, and a unit is
    # given one CPU's worth of work: colour conversion and JPEG stay on the calling thread.
    cv2.setNumThreads(1)
    for stage in stages:
        stage.setup()
    rows = _Rows()
    lineage = {"config_hash": config.output_hash(), "code_version": code_version(), "unit_id": unit.unit_id}
    prefix = f"{unit.unit_id}-{unit.fingerprint[:8]}"
    with RotatingShardWriter(layout.shards, prefix, config.shards.samples_per_shard,
                             config.shards.max_shard_bytes) as writer:
        for video in unit.videos:
            _process_video(video, config, stages, writer, rows, lineage)
    shard_rows = [{**record.model_dump(), "unit_id": unit.unit_id, "config_hash": lineage["config_hash"],
                   "code_version": lineage["code_version"]} for record in writer.records]

    parts = layout.parts_dir(unit)
    for name, table_rows in (("videos", rows.videos), ("clips", rows.clips), ("samples", rows.samples),
                             ("failures", rows.failures), ("shards", shard_rows)):
        write_table_atomic(to_table(name, table_rows), parts / f"{name}.parquet")

    report = UnitReport(
        unit_id=unit.unit_id,
        fingerprint=unit.fingerprint,
        shards=[record.shard for record in writer.records],
        parts_dir=parts.relative_to(layout.root).as_posix(),
        videos=len(rows.videos),
        videos_failed=sum(row["status"] == "failed" for row in rows.videos),
        clips=len(rows.clips),
        samples=len(rows.samples),
        frames=rows.frames,
        failures_by_reason=dict(Counter(failure_kind(row["stage"], row["reason"]) for row in rows.failures)),
        started_at=started_at,
        seconds=round(time.perf_counter() - started, 3),
    )
    done = layout.done_file(unit.unit_id)
    partial = done.with_name(f".{done.name}.partial")
    partial.write_text(report.model_dump_json(indent=2))
    partial.replace(done)  # the unit is complete from here on
    if previous is not None:
        _retire(layout, previous, keep=set(report.shards), keep_parts=report.parts_dir)
    return report


def _process_video(video: VideoRef, config: BuildConfig, stages: Sequence[ClipStage],
                   writer: RotatingShardWriter, rows: _Rows, base_lineage: dict) -> None:
    lineage = {**base_lineage, "source_path": video.uri, "content_sha256": None}
    video_row = {"video_id": video.video_id, "status": "failed", "size_bytes": video.size_bytes,
                 "frames_decoded": 0, "num_clips": 0, **lineage}
    step = "read"
    counted = _Counted(iter(()))
    try:
        with local_copy(video.uri) as path:
            if not path.is_file():
                raise DataError("file not found")
            step = "probe"
            probe = probe_video(str(path))
            check_decodable(probe, config.decode)
            lineage["content_sha256"] = video_row["content_sha256"] = sha256_file(path)
            video_row.update(duration_s=probe.duration_s, fps=probe.fps, variable_fps=probe.variable_fps,
                             width=probe.width, height=probe.height, rotation=probe.rotation, codec=probe.codec,
                             has_audio=probe.has_audio)
            step = "decode"
            rate = config.decode.fps or probe.fps  # the decoder's constant output rate
            counted = _Counted(iter_frames(str(path), probe, config.decode, video.start_s, video.end_s))
            for clip_index, clip in enumerate(cut_clips(counted, config.clips.length, config.clips.stride)):
                if config.clips.max_clips_per_video and clip_index >= config.clips.max_clips_per_video:
                    break
                _process_clip(video, clip_index, clip, rate, config, stages, writer, rows, lineage)
                video_row["num_clips"] += 1
            if video_row["num_clips"] == 0:
                raise DataError(
                    f"too short: {counted.count} frame(s) decoded, a clip needs {config.clips.length} "
                    f"(clips.length)"
                )
            video_row["status"] = "ok"
    except DataError as err:
        if config.execution.on_error == "raise":
            raise
        # Clips cut before a mid-stream decode error are complete and stay in the shards.
        video_row["status"] = "partial" if video_row["num_clips"] else "failed"
        rows.failures.append({"item_id": video.video_id, "stage": step, "reason": str(err),
                              "frame_indices": None, **lineage})
    video_row["frames_decoded"] = counted.count
    rows.frames += counted.count
    rows.videos.append(video_row)


def _process_clip(video: VideoRef, clip_index: int, clip: list[Frame], fps: float, config: BuildConfig,
                  stages: Sequence[ClipStage], writer: RotatingShardWriter, rows: _Rows, lineage: dict) -> None:
    frame_indices = [frame.index for frame in clip]
    key = clip_key(video.video_id, clip_index)
    sample = ClipSample(
        key=key,
        meta=ClipMeta(video_id=video.video_id, clip_index=clip_index, frame_indices=frame_indices,
                      time_s=[frame.time_s for frame in clip], fps=fps,
                      source_path=video.uri, content_sha256=lineage["content_sha256"],
                      config_hash=lineage["config_hash"], code_version=lineage["code_version"]),
        frames=np.stack([frame.image for frame in clip]),
    )
    rows.clips.append({"clip_id": key, "video_id": video.video_id, "clip_index": clip_index,
                       "frame_indices": frame_indices, "time_start_s": clip[0].time_s,
                       "time_end_s": clip[-1].time_s, "fps": sample.meta.fps, **lineage})
    for stage in stages:
        try:
            sample = stage(sample)
        except DataError as err:
            if config.execution.on_error == "raise":
                raise
            rows.failures.append({"item_id": key, "stage": stage.name, "reason": str(err),
                                  "frame_indices": frame_indices, **lineage})
            return
    shard = writer.write(encode_sample(sample, config.decode.jpeg_quality))
    rows.samples.append({"sample_key": key, "clip_id": key, "video_id": video.video_id, "shard": shard,
                         "fields": sample.field_names(), "frame_indices": frame_indices, **lineage})


class _Counted:
    """Wraps a frame iterator and counts what passed through."""

    def __init__(self, frames: Iterator[Frame]) -> None:
        self.frames = frames
        self.count = 0

    def __iter__(self) -> Iterator[Frame]:
        for frame in self.frames:
            self.count += 1
            yield frame


def _retire(layout: OutputLayout, previous: UnitReport, keep: set[str], keep_parts: str) -> None:
    """Delete what a superseded run of a unit wrote."""
    for shard in previous.shards:
        if shard not in keep:
            (layout.shards / shard).unlink(missing_ok=True)
    if previous.parts_dir != keep_parts:
        shutil.rmtree(layout.root / previous.parts_dir, ignore_errors=True)
