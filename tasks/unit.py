"""Running one unit of work: videos in, shards and manifest parts out (layout: `data_specs.layout`).

A unit whose done file carries the current fingerprint is skipped. A unit redone
because its inputs changed writes under a new fingerprint, then retires the files of
its previous run, so a run killed at any point leaves only complete files behind and
the previous manifest still describes files that exist.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from data_specs.config import BuildConfig
from data_specs.files import sha256_file, write_atomic
from data_specs.layout import OutputLayout
from data_specs.lineage import Lineage, Stamp, code_version
from data_specs.sample import ClipMeta, ClipSample, PairSample, Sample, clip_key, encode_sample
from data_specs.scenes import SceneConfig
from data_specs.schemas import ClipRow, FailureRow, SampleRow, ShardRow, VideoRow, to_table, write_table_atomic
from data_specs.split import Split, split_key, split_of
from data_specs.units import UnitReport, VideoRef, WorkUnit
from data_specs.video import VideoProbe
from tasks.base import ClipProcessor, SceneFrames, VideoProcessor
from tasks.build_processors import processors_for
from tasks.clips import cut_scene_clips
from tasks.errors import DataError, ProcessorCrash, failure_kind, failure_reason, is_infrastructure
from tasks.media import Frame, check_decodable, colour_encoding, iter_frames, probe_video
from tasks.scenes import split_scenes
from tasks.shards import RotatingShardWriter
from tasks.sources import local_copy


def unit_stamp(unit: WorkUnit, config: BuildConfig) -> Stamp:
    return Stamp(config_hash=config.output_hash(), code_version=code_version(), unit_id=unit.unit_id)


def run_unit(unit: WorkUnit, config: BuildConfig,
             processors: Sequence[ClipProcessor] | None = None) -> UnitReport:
    """Process every video of `unit` and publish its shards and manifest parts (see `UnitRun`).

    processors: set up already (`tasks.build_processors.processors_for`); None: the config's, with models in
    this process.
    """
    layout = OutputLayout(config.output_path)
    previous = layout.read_report(unit.unit_id)
    if previous is not None and previous.fingerprint == unit.fingerprint:
        return previous.model_copy(update={"skipped": True})
    if processors is None:
        processors = processors_for(config)
    return UnitRun(unit, config, processors, layout).run(previous)


@dataclass
class UnitRun:
    """One run of one unit: its inputs, the shard writer, and the manifest rows collected so far.

    Bad videos and clips become failure rows (or raise, with `on_error="raise"`), and so
    does a processor's crash on one clip, for its video (`ProcessorCrash`); infrastructure errors
    raise, and the unit leaves no visible trace until a retry succeeds.
    """

    unit: WorkUnit
    config: BuildConfig
    processors: Sequence[ClipProcessor]
    layout: OutputLayout
    videos: list[VideoRow] = field(default_factory=list)
    clips: list[ClipRow] = field(default_factory=list)
    samples: list[SampleRow] = field(default_factory=list)
    failures: list[FailureRow] = field(default_factory=list)
    frames: int = 0

    def run(self, previous: UnitReport | None) -> UnitReport:
        started, started_at = time.perf_counter(), time.time()
        # OpenCV's thread pool only adds scheduling overhead on single frames, and a unit is
        # given one CPU's worth of work: colour conversion and JPEG stay on the calling thread.
        cv2.setNumThreads(1)
        stamp = unit_stamp(self.unit, self.config)
        prefix = self.layout.parts_dir(self.unit).name
        shards = self.config.shards
        with RotatingShardWriter(self.layout.shards, prefix, shards.samples_per_shard,
                                 shards.max_shard_bytes) as self.writer:
            for video in self.unit.videos:
                self._process_video(video, stamp.with_source(video.uri))
        shard_rows = [ShardRow(**record.model_dump(), **stamp.columns()) for record in self.writer.records]

        parts = self.layout.parts_dir(self.unit)
        for name, rows in (("videos", self.videos), ("clips", self.clips), ("samples", self.samples),
                           ("failures", self.failures), ("shards", shard_rows)):
            write_table_atomic(to_table(name, rows), parts / f"{name}.parquet")
        report = UnitReport(
            unit_id=self.unit.unit_id,
            fingerprint=self.unit.fingerprint,
            shards=[record.shard for record in self.writer.records],
            parts_dir=parts.relative_to(self.layout.root).as_posix(),
            videos=len(self.videos),
            videos_failed=sum(row.status == "failed" for row in self.videos),
            clips=len(self.clips),
            samples=len(self.samples),
            frames=self.frames,
            failures_by_reason=dict(Counter(failure_kind(row.failed_in, row.reason) for row in self.failures)),
            started_at=started_at,
            seconds=round(time.perf_counter() - started, 3),
        )
        write_atomic(self.layout.done_file(self.unit.unit_id), report.model_dump_json(indent=2))
        # The unit is complete from here on; what its previous run wrote can go.
        if previous is not None:
            self._retire(previous, report)
        return report

    def _process_video(self, video: VideoRef, lineage: Lineage) -> None:
        row = VideoRow(video_id=video.video_id, size_bytes=video.size_bytes, **lineage.columns())
        step = "read"
        counted = _Counted(iter(()))
        try:
            with local_copy(video.uri) as path:
                if not path.is_file():
                    raise DataError("file not found")
                step = "probe"
                probe = probe_video(str(path))
                check_decodable(probe, self.config.decode)
                lineage = dataclasses.replace(lineage, content_sha256=sha256_file(path))
                row.content_sha256 = lineage.content_sha256
                row.duration_s, row.fps, row.variable_fps = probe.duration_s, probe.fps, probe.variable_fps
                row.width, row.height, row.rotation = probe.width, probe.height, probe.rotation
                row.codec, row.has_audio = probe.codec, probe.has_audio
                row.color_space, row.color_range = probe.color_space, probe.color_range
                row.color_primaries, row.color_transfer = probe.color_primaries, probe.color_transfer
                encoding = colour_encoding(probe)
                row.yuv_matrix, row.yuv_range = encoding.matrix, encoding.range
                step = "decode"
                rate = self.config.decode.fps or probe.fps  # the decoder's constant output rate
                # Perception crops faces from the source picture; without it, frames are decode.size squares.
                source_size = (probe.width, probe.height) if self.config.perception is not None else None
                counted = _Counted(self._decode(path, probe, video, source_size))
                limit = self.config.clips.max_clips_per_video
                scene_lengths: Counter[int] = Counter()
                scenes = _tally(split_scenes(counted, self.config.scenes, rate), scene_lengths)
                with contextlib.ExitStack() as per_video:
                    runners = [per_video.enter_context(processor.for_video(_VideoScan(self, index, video, path,
                                                                                      probe, rate, lineage,
                                                                                      source_size)))
                               if isinstance(processor, VideoProcessor) else processor
                               for index, processor in enumerate(self.processors)]
                    for clip_index, (scene_index, clip) in enumerate(cut_scene_clips(scenes, self.config.clips.length,
                                                                                     self.config.clips.stride)):
                        if limit and clip_index >= limit:
                            break
                        self._process_clip(video, clip_index, scene_index, clip, rate, lineage, source_size, runners)
                        row.num_clips += 1
                if row.num_clips == 0:
                    scenes_seen = (f" in {len(scene_lengths)} scenes of at most {max(scene_lengths.values())} frames"
                                   if len(scene_lengths) > 1 else "")
                    raise DataError(f"too short: {counted.count} frame(s) decoded{scenes_seen}, a clip needs "
                                    f"{self.config.clips.length} (clips.length)")
                row.status = "ok"
        except (DataError, ProcessorCrash) as err:
            if self.config.execution.on_error == "raise":
                raise
            # Clips cut before a mid-stream decode error (or a processor's crash) are complete and stay in the shards.
            row.status = "partial" if row.num_clips else "failed"
            failed_in = err.processor if isinstance(err, ProcessorCrash) else step
            self.failures.append(FailureRow(item_id=video.video_id, failed_in=failed_in, reason=failure_reason(err),
                                            **lineage.columns()))
        row.frames_decoded = counted.count
        self.frames += counted.count
        self.videos.append(row)

    def _decode(self, path: Path, probe: VideoProbe, video: VideoRef,
                source_size: tuple[int, int] | None) -> Iterator[Frame]:
        """The video's range as the build decodes it (the clip pass and the scene pass alike)."""
        return iter_frames(str(path), probe, self.config.decode, video.start_s, video.end_s,
                           source_size=source_size is not None)

    def _clip_sample(self, video: VideoRef, key: str, clip_index: int, scene_index: int | None, clip: list[Frame],
                     fps: float, lineage: Lineage, source_size: tuple[int, int] | None) -> ClipSample:
        return ClipSample(
            key=key,
            meta=ClipMeta(video_id=video.video_id, clip_index=clip_index, frame_indices=[f.index for f in clip],
                          time_s=[frame.time_s for frame in clip], fps=fps, source_path=video.uri,
                          content_sha256=lineage.content_sha256, config_hash=lineage.config_hash,
                          code_version=lineage.code_version, scene_index=scene_index, source_size=source_size),
            frames=np.stack([frame.image for frame in clip]),
        )

    def _process_clip(self, video: VideoRef, clip_index: int, scene_index: int, clip: list[Frame], fps: float,
                      lineage: Lineage, source_size: tuple[int, int] | None = None,
                      runners: Sequence[Callable[[Sample], list[Sample]]] | None = None) -> None:
        """Run one clip through the processors (`runners`: what each processor runs for this video, by default
        itself) and write what comes out."""
        frame_indices = [frame.index for frame in clip]
        key = clip_key(video.video_id, clip_index)
        sample = self._clip_sample(video, key, clip_index, scene_index, clip, fps, lineage, source_size)
        row = ClipRow(clip_id=key, video_id=video.video_id, clip_index=clip_index, frame_indices=frame_indices,
                      time_start_s=clip[0].time_s, time_end_s=clip[-1].time_s, fps=fps, scene_index=scene_index,
                      **lineage.columns())
        self.clips.append(row)
        records: list[Sample] = [sample]
        for processor, run in zip(self.processors, runners or self.processors):
            passed = []
            for record in records:
                try:
                    passed += run(record)
                except DataError as err:
                    if self.config.execution.on_error == "raise":
                        raise
                    self.failures.append(FailureRow(item_id=record.key, failed_in=processor.name,
                                                    reason=failure_reason(err), frame_indices=frame_indices,
                                                    **lineage.columns()))
                except Exception as err:
                    if self.config.execution.on_error == "raise" or is_infrastructure(err):
                        raise
                    raise ProcessorCrash(processor.name, err) from err  # ends this video only
            records = passed
            perceived = [r.meta.perception for r in records if isinstance(r, ClipSample) and r.meta.perception]
            if perceived:
                row.source_px_per_output_px = perceived[0].source_px_per_output_px
        split = split_of(split_key(video.group, lineage.content_sha256, video.video_id), self.config.split)
        for record in records:
            shard = self.writer.write(encode_sample(record, self.config.decode.jpeg_quality))
            self.samples.append(sample_row(record, shard, lineage, split, video.group))

    def _retire(self, previous: UnitReport, current: UnitReport) -> None:
        """Delete what a superseded run of this unit wrote."""
        for shard in set(previous.shards) - set(current.shards):
            self.layout.shard(shard).unlink(missing_ok=True)
        if previous.parts_dir != current.parts_dir:
            shutil.rmtree(self.layout.root / previous.parts_dir, ignore_errors=True)


def sample_row(sample: Sample, shard: str, lineage: Lineage, split: Split, group: str | None = None) -> SampleRow:
    """The samples-manifest row of a written sample; pairs also carry what a loader filters and rebalances by."""
    meta = sample.meta
    if not isinstance(sample, PairSample):
        return SampleRow(sample_key=sample.key, clip_id=sample.key, video_id=meta.video_id, shard=shard,
                         fields=sample.field_names(), frame_indices=meta.frame_indices, scene_index=meta.scene_index,
                         split=split, group=group, **lineage.columns())
    return SampleRow(sample_key=sample.key, clip_id=meta.clip_key, video_id=meta.video_id, shard=shard,
                     fields=sample.field_names(), frame_indices=meta.target_frame_indices,
                     scene_index=meta.scene_index, kind="pair",
                     training_stage=meta.training_stage, attribute=meta.attribute, pair_index=meta.pair_index,
                     attribute_mask_area=meta.attribute_ref.mask_area,
                     expanded_mask_area=meta.portrait_ref.mask_area, expansion=meta.expansion.mode,
                     face_size=meta.face_size, reference_gap_s=meta.reference_gap_s, split=split, group=group,
                     **lineage.columns())


@dataclass
class _VideoScan:
    """The `tasks.base.VideoScan` the unit gives the processor at `position` for one video."""

    run: UnitRun
    position: int
    video: VideoRef
    path: Path
    probe: VideoProbe
    rate: float
    lineage: Lineage
    source_size: tuple[int, int] | None

    @property
    def video_id(self) -> str:
        return self.video.video_id

    def scenes(self) -> SceneFrames:
        return _ScenePass(self.run._decode(self.path, self.probe, self.video, self.source_size),
                          self.run.config.scenes, self.rate)

    def through_earlier_processors(self, frame: Frame, scene_index: int | None) -> ClipSample:
        key = f"{self.video.video_id}_r{frame.index:06d}"  # named by its frame; never written
        records: list[Sample] = [self.run._clip_sample(self.video, key, 0, scene_index, [frame], self.rate,
                                                       self.lineage, self.source_size)]
        for processor in self.run.processors[:self.position]:
            records = [out for record in records for out in processor(record)]
        if len(records) != 1 or not isinstance(records[0], ClipSample):
            raise DataError(f"the processors before {self.run.processors[self.position].name!r} made "
                            f"{len(records)} record(s) of a one-frame clip, not one clip")
        return records[0]


class _ScenePass:
    """(scene, frame) pairs of a second decode, ending quietly at a decode error; `close()` stops the decoder."""

    def __init__(self, frames: Iterator[Frame], config: SceneConfig, rate: float) -> None:
        self._frames = frames
        self._scenes = split_scenes(_until_data_error(frames), config, rate)

    def __iter__(self) -> Iterator[tuple[int, Frame]]:
        return iter(self._scenes)

    def close(self) -> None:
        self._frames.close()


class _Counted:
    """Wraps a frame iterator and counts what passed through."""

    def __init__(self, frames: Iterator[Frame]) -> None:
        self.frames = frames
        self.count = 0

    def __iter__(self) -> Iterator[Frame]:
        for frame in self.frames:
            self.count += 1
            yield frame


def _until_data_error(frames: Iterable[Frame]) -> Iterator[Frame]:
    """The frames up to a decode error, which ends them quietly: the clip pass meets the same error and records it."""
    with contextlib.suppress(DataError):
        yield from frames


def _tally(scenes: Iterable[tuple[int, Frame]], lengths: Counter[int]) -> Iterator[tuple[int, Frame]]:
    """Pass (scene, frame) pairs through, counting each scene's frames into `lengths`."""
    for scene, frame in scenes:
        lengths[scene] += 1
        yield scene, frame
