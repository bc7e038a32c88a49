"""Parquet schemas of the manifests a build writes under `manifests/`.

Every row carries its lineage: the source path and its content hash, the frame
indices it covers (where it covers frames), the hash of the config that produced it
and the code version. Readers and writers both go through these constants, so a
column cannot drift between them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq

from data_specs.files import publishing
from data_specs.lineage import Lineage, Stamp
from data_specs.split import TRAIN, Split

VideoStatus = Literal["ok", "partial", "failed"]

LINEAGE = [
    pa.field("source_path", pa.string(), nullable=False),
    pa.field("content_sha256", pa.string()),
    pa.field("config_hash", pa.string(), nullable=False),
    pa.field("code_version", pa.string(), nullable=False),
    pa.field("unit_id", pa.string(), nullable=False),
]

VIDEOS = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),  # ok | partial (decoding broke after some clips) | failed
        pa.field("size_bytes", pa.int64()),
        pa.field("duration_s", pa.float64()),
        pa.field("fps", pa.float64()),
        pa.field("variable_fps", pa.bool_()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("rotation", pa.int32()),
        pa.field("codec", pa.string()),
        pa.field("has_audio", pa.bool_()),
        # The stream's colour tags as ffprobe names them (null: unspecified), and the YUV matrix and range its
        # frames were converted with (untagged streams: BT.709 for HD, BT.601 below; limited range).
        pa.field("color_space", pa.string()),
        pa.field("color_range", pa.string()),
        pa.field("color_primaries", pa.string()),
        pa.field("color_transfer", pa.string()),
        pa.field("yuv_matrix", pa.string()),  # bt601 | bt709 | bt2020 | fcc | smpte240m
        pa.field("yuv_range", pa.string()),  # limited | full
        pa.field("frames_decoded", pa.int32()),
        pa.field("num_clips", pa.int32()),
        *LINEAGE,
    ]
)

CLIPS = pa.schema(
    [
        pa.field("clip_id", pa.string(), nullable=False),
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("clip_index", pa.int32(), nullable=False),
        pa.field("frame_indices", pa.list_(pa.int32()), nullable=False),
        pa.field("time_start_s", pa.float64()),
        pa.field("time_end_s", pa.float64()),
        pa.field("fps", pa.float64()),
        pa.field("scene_index", pa.int32(), nullable=False),  # the clip's scene (shot) within its video
        # Median crop side in source pixels / crop size (perception only): below 1 the crop is enlarged.
        pa.field("source_px_per_output_px", pa.float64()),
        *LINEAGE,
    ]
)

SAMPLES = pa.schema(
    [
        pa.field("sample_key", pa.string(), nullable=False),
        pa.field("clip_id", pa.string(), nullable=False),
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("shard", pa.string(), nullable=False),
        pa.field("fields", pa.list_(pa.string()), nullable=False),
        pa.field("frame_indices", pa.list_(pa.int32()), nullable=False),
        pa.field("scene_index", pa.int32()),  # the clip's scene within its video (null: built without scenes)
        # Training samples (kind "pair") only; null for clip samples. What a loader needs to filter by training
        # stage and rebalance attributes, and what the dataset card plots, without opening a shard.
        pa.field("kind", pa.string(), nullable=False),  # clip | pair
        pa.field("training_stage", pa.int32()),
        pa.field("attribute", pa.string()),
        pa.field("pair_index", pa.int32()),
        pa.field("attribute_mask_area", pa.float32()),  # fraction of the attribute reference M_attr covers
        pa.field("expanded_mask_area", pa.float32()),  # fraction of the portrait reference M_port_train covers
        pa.field("expansion", pa.string()),  # none | dilate | generate
        pa.field("face_size", pa.float32()),  # median crop-box side, decoded-frame pixels
        pa.field("reference_gap_s", pa.float32()),  # time from the nearer reference to the nearest target, seconds
        pa.field("split", pa.string(), nullable=False),  # train | eval, by group or source video (data_specs.split)
        pa.field("group", pa.string()),  # the input manifest's `group` (person, take); null: none given
        *LINEAGE,
    ]
)

SHARDS = pa.schema(
    [
        pa.field("shard", pa.string(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("size_bytes", pa.int64(), nullable=False),
        pa.field("num_samples", pa.int32(), nullable=False),
        pa.field("unit_id", pa.string(), nullable=False),
        pa.field("config_hash", pa.string(), nullable=False),
        pa.field("code_version", pa.string(), nullable=False),
    ]
)

FAILURES = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),  # video_id, or clip_id for a clip-level failure
        # where it failed: "unit" (the whole unit), "read", "probe", "decode", or a clip processor's name
        pa.field("failed_in", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("frame_indices", pa.list_(pa.int32())),
        *LINEAGE,
    ]
)

TABLES: dict[str, pa.Schema] = {
    "videos": VIDEOS,
    "clips": CLIPS,
    "samples": SAMPLES,
    "failures": FAILURES,
    "shards": SHARDS,  # last: the shards manifest is what marks a build complete
}


# ---------------------------------------------------------------- typed rows, one class per table


@dataclass(kw_only=True)
class VideoRow(Lineage):
    video_id: str
    status: VideoStatus = "failed"
    size_bytes: int | None = None
    duration_s: float | None = None
    fps: float | None = None
    variable_fps: bool | None = None
    width: int | None = None
    height: int | None = None
    rotation: int | None = None
    codec: str | None = None
    has_audio: bool | None = None
    color_space: str | None = None
    color_range: str | None = None
    color_primaries: str | None = None
    color_transfer: str | None = None
    yuv_matrix: str | None = None
    yuv_range: str | None = None
    frames_decoded: int = 0
    num_clips: int = 0


@dataclass(kw_only=True)
class ClipRow(Lineage):
    clip_id: str
    video_id: str
    clip_index: int
    frame_indices: list[int]
    time_start_s: float
    time_end_s: float
    fps: float
    scene_index: int
    source_px_per_output_px: float | None = None


@dataclass(kw_only=True)
class SampleRow(Lineage):
    sample_key: str
    clip_id: str
    video_id: str
    shard: str
    fields: list[str]
    frame_indices: list[int]
    scene_index: int | None = None
    kind: str = "clip"
    training_stage: int | None = None
    attribute: str | None = None
    pair_index: int | None = None
    attribute_mask_area: float | None = None
    expanded_mask_area: float | None = None
    expansion: str | None = None
    face_size: float | None = None
    reference_gap_s: float | None = None
    split: Split = TRAIN
    group: str | None = None


@dataclass(kw_only=True)
class FailureRow(Lineage):
    item_id: str
    failed_in: str
    reason: str
    frame_indices: list[int] | None = None

    def __post_init__(self) -> None:
        if not self.reason.strip():
            raise ValueError(f"failure row for {self.item_id} (failed in {self.failed_in!r}) has no reason")


@dataclass(kw_only=True)
class ShardRow(Stamp):
    shard: str
    sha256: str
    size_bytes: int
    num_samples: int


ROWS: dict[str, type] = {"videos": VideoRow, "clips": ClipRow, "samples": SampleRow, "failures": FailureRow,
                         "shards": ShardRow}


def to_table(name: str, rows: Iterable[object]) -> pa.Table:
    """Typed rows of the named table to an Arrow table of its schema."""
    row_type = ROWS[name]
    plain = []
    for row in rows:
        if not isinstance(row, row_type):
            raise TypeError(f"{name} rows must be {row_type.__name__}, got {type(row).__name__}")
        plain.append({field.name: getattr(row, field.name) for field in dataclasses.fields(row)})
    return pa.Table.from_pylist(plain, schema=TABLES[name])


def write_table_atomic(table: pa.Table, path: Path) -> None:
    """Write Parquet so that readers never see half a file."""
    with publishing(path) as partial:
        pq.write_table(table, partial)


def read_table(name: str, path: Path) -> pa.Table:
    """Read a manifest and check it against its schema."""
    table = pq.read_table(path)
    expected = TABLES[name]
    if not table.schema.equals(expected, check_metadata=False):
        raise ValueError(f"{path} does not match the {name} schema:\n{table.schema}")
    return table
