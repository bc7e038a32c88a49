"""Build-level manifests: merging unit parts, collecting garbage, verifying shards.

`publish_manifests` writes `manifests/{videos,clips,samples,failures}.parquet`, then
`manifests/shards.parquet` (the shard list is what marks a build complete), then
`manifests/build.json`; each file appears atomically. Shards and parts that no
current unit owns (superseded runs, runs killed mid-way) are deleted afterwards.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel

from data_specs.config import BuildConfig
from data_specs.files import file_problem, write_atomic
from data_specs.layout import BuildSummary, OutputLayout
from data_specs.lineage import code_version
from data_specs.schemas import TABLES, FailureRow, VideoRow, read_table, to_table, write_table_atomic
from data_specs.units import UnitReport, WorkUnit
from tasks.errors import failure_kind
from tasks.unit import unit_stamp


def unit_failure_rows(unit: WorkUnit, config: BuildConfig, reason: str) -> list[FailureRow]:
    """Failure rows for every video of a unit whose worker could not finish it."""
    stamp = unit_stamp(unit, config)
    return [FailureRow(item_id=video.video_id, failed_in="unit", reason=reason,
                       **stamp.with_source(video.uri).columns()) for video in unit.videos]


def publish_manifests(config: BuildConfig, reports: list[UnitReport], extra_failures: list[FailureRow],
                      timeline: dict[str, float] | None = None,
                      units_per_node: dict[str, int] | None = None) -> BuildSummary:
    """Merge the parts of the given (completed) units into the build manifests and collect garbage."""
    layout = OutputLayout(config.output_path)
    tables: dict[str, list[pa.Table]] = {name: [] for name in TABLES}
    for report in sorted(reports, key=lambda r: r.unit_id):
        for name in TABLES:
            tables[name].append(read_table(name, layout.part(report, name)))
    if extra_failures:  # videos of units that never completed: a failure row and a failed video row each
        tables["failures"].append(to_table("failures", extra_failures))
        tables["videos"].append(to_table("videos", [
            VideoRow(video_id=row.item_id, status="failed", source_path=row.source_path,
                     content_sha256=row.content_sha256, config_hash=row.config_hash,
                     code_version=row.code_version, unit_id=row.unit_id) for row in extra_failures]))
    merged = {name: pa.concat_tables(parts) if parts else to_table(name, []) for name, parts in tables.items()}
    for name in TABLES:  # TABLES lists shards last on purpose
        write_table_atomic(merged[name], layout.manifest(name))

    failures = merged["failures"].to_pylist()
    statuses = Counter(merged["videos"].column("status").to_pylist())
    ran = [report for report in reports if not report.skipped]
    failed_units = {row.unit_id for row in extra_failures}
    summary = BuildSummary(
        output_dir=str(layout.root),
        config_hash=config.output_hash(),
        code_version=code_version(),
        units=len(reports) + len(failed_units),
        units_skipped=sum(report.skipped for report in reports),
        units_failed=len(failed_units),
        videos=merged["videos"].num_rows,
        videos_failed=statuses["failed"],
        videos_partial=statuses["partial"],
        clips=merged["clips"].num_rows,
        samples=merged["samples"].num_rows,
        frames=sum(report.frames for report in reports),
        shards=merged["shards"].num_rows,
        shard_bytes=sum(merged["shards"].column("size_bytes").to_pylist()),
        failures_by_reason=dict(Counter(failure_kind(row["failed_in"], row["reason"])
                                        for row in failures).most_common()),
        work_span_s=round(max((r.started_at + r.seconds for r in ran), default=0.0)
                          - min((r.started_at for r in ran), default=0.0), 3),
        work_s=round(sum(r.seconds for r in ran), 3),
        units_per_node=units_per_node or {},
        timeline={**(timeline or {}), **({"first_unit_started": min(r.started_at for r in ran),
                                           "last_unit_ended": max(r.started_at + r.seconds for r in ran)}
                                          if ran else {})},
    )
    write_atomic(layout.summary_file, summary.model_dump_json(indent=2))
    _collect_garbage(layout, reports)
    return summary


def _collect_garbage(layout: OutputLayout, reports: list[UnitReport]) -> None:
    """Delete shards, parts and done files that no unit of this build owns."""
    owned_shards = {shard for report in reports for shard in report.shards}
    owned_parts = {Path(report.parts_dir).name for report in reports}
    owned_done = {layout.done_file(report.unit_id).name for report in reports}
    for path in layout.shards.glob("*.tar"):
        if path.name not in owned_shards:
            path.unlink()
    for path in layout.shards.glob(".*.partial"):
        path.unlink()
    if layout.units.exists():
        for path in layout.units.iterdir():
            if path.is_dir() and path.name not in owned_parts:
                shutil.rmtree(path, ignore_errors=True)
            elif path.is_file() and path.name not in owned_done:
                path.unlink()


class ShardProblem(BaseModel):
    shard: str
    problem: str


def verify_shards(root: Path) -> list[ShardProblem]:
    """Re-hash every shard listed in the manifest; report missing, resized or altered files and strays."""
    layout = OutputLayout(root)
    listed = read_table("shards", layout.manifest("shards")).to_pylist()
    problems = []
    for row in listed:
        problem = file_problem(layout.shard(row["shard"]), row["sha256"], row["size_bytes"])
        if problem is not None:
            problems.append(ShardProblem(shard=row["shard"], problem=problem))
    names = {row["shard"] for row in listed}
    problems += [ShardProblem(shard=path.name, problem="not in the manifest")
                 for path in sorted(layout.shards.glob("*.tar")) if path.name not in names]
    return problems


def table_counts(root: Path) -> dict[str, int]:
    """Rows per manifest table (without reading the data)."""
    layout = OutputLayout(root)
    return {name: pq.ParquetFile(layout.manifest(name)).metadata.num_rows for name in TABLES
            if layout.manifest(name).exists()}


def failures_by_reason(root: Path) -> list[tuple[str, int]]:
    path = OutputLayout(root).manifest("failures")
    rows = read_table("failures", path).to_pylist() if path.exists() else []
    return Counter(failure_kind(row["failed_in"], row["reason"]) for row in rows).most_common()

