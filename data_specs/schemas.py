"""Parquet schemas of the manifests a build writes under `manifests/`.

Every row carries its lineage: the source path and its content hash, the frame
indices it covers (where it covers frames), the hash of the config that produced it
and the code version. Readers and writers both go through these constants, so a
column cannot drift between them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

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
        pa.field("status", pa.string(), nullable=False),  # ok | failed
        pa.field("size_bytes", pa.int64()),
        pa.field("duration_s", pa.float64()),
        pa.field("fps", pa.float64()),
        pa.field("variable_fps", pa.bool_()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("rotation", pa.int32()),
        pa.field("codec", pa.string()),
        pa.field("has_audio", pa.bool_()),
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
        pa.field("stage", pa.string(), nullable=False),
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


def to_table(name: str, rows: Iterable[Mapping]) -> pa.Table:
    """Rows (dicts) to a table of the named schema; a missing or extra column is an error."""
    schema = TABLES[name]
    rows = list(rows)
    for row in rows:
        extra = set(row) - set(schema.names)
        if extra:
            raise KeyError(f"{name} row has columns not in the schema: {sorted(extra)}")
    return pa.Table.from_pylist(rows, schema=schema)


def write_table_atomic(table: pa.Table, path: Path) -> None:
    """Write Parquet to a temporary name and rename it, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    pq.write_table(table, partial)
    partial.replace(path)


def read_table(name: str, path: Path) -> pa.Table:
    """Read a manifest and check it against its schema."""
    table = pq.read_table(path)
    expected = TABLES[name]
    if not table.schema.equals(expected, check_metadata=False):
        raise ValueError(f"{path} does not match the {name} schema:\n{table.schema}")
    return table
