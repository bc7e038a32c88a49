"""Where a build's files live, and the summary a build writes: the one place that knows the output layout.

    DATASET/
      shards/<unit>-<fp>-NNNNN.tar        complete shards (partial ones are hidden `.partial` files)
      units/<unit>-<fp>/<table>.parquet   one unit's manifest rows, one file per table
      units/<unit>.done.json              the unit's `UnitReport`, written last: the unit is complete
      manifests/<table>.parquet           the build's merged manifests (`shards` written last)
      manifests/build.json                the `BuildSummary` of the last run
      card/README.md, card/*.png          the dataset card (counts, distributions, rejections)
      card/contact_sheet.png              a contact sheet of the first samples
      build.lock                          while a build runs: who runs it (one build per folder at a time)
      weights.json                        the content hash of each weight file, so it is hashed once, not per run
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, Field

from data_specs.units import UnitReport, WorkUnit


@dataclass(frozen=True)
class OutputLayout:
    """Paths under a build's output folder."""

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

    @property
    def summary_file(self) -> Path:
        return self.manifests / "build.json"

    @property
    def card(self) -> Path:
        return self.root / "card"

    @property
    def weights_cache(self) -> Path:
        """The content hashes of the weight files the config names, by path, size and times (`tasks.fingerprint`)."""
        return self.root / "weights.json"

    @property
    def lock_file(self) -> Path:
        """Held by the build writing this folder (`flows.build_lock`); names its holder."""
        return self.root / "build.lock"

    def manifest(self, table: str) -> Path:
        return self.manifests / f"{table}.parquet"

    def shard(self, name: str) -> Path:
        return self.shards / name

    def done_file(self, unit_id: str) -> Path:
        return self.units / f"{unit_id}.done.json"

    def parts_dir(self, unit: WorkUnit) -> Path:
        return self.units / f"{unit.unit_id}-{unit.fingerprint[:8]}"

    def part(self, report: UnitReport, table: str) -> Path:
        return self.root / report.parts_dir / f"{table}.parquet"

    def is_complete_build(self) -> bool:
        """A build completed here at least once (the shards manifest is written last)."""
        return self.manifest("shards").is_file()

    def read_report(self, unit_id: str) -> UnitReport | None:
        """The unit's last completed report, or None if it never completed."""
        done = self.done_file(unit_id)
        return UnitReport.model_validate_json(done.read_text()) if done.is_file() else None


class BuildSummary(BaseModel):
    """The outcome of one build; also written as `manifests/build.json`."""

    output_dir: str
    config_hash: str
    code_version: str
    units: int
    units_skipped: int
    units_failed: int
    videos: int
    videos_failed: int = Field(description="Videos with no sample at all (status 'failed').")
    videos_partial: int = Field(0, description="Videos whose decoding broke after some clips were written.")
    clips: int
    samples: int
    frames: int
    shards: int
    shard_bytes: int
    failures_by_reason: dict[str, int] = Field(default_factory=dict)
    work_span_s: float = Field(0.0, description="From the first unit's start to the last unit's end, this run.")
    work_s: float = Field(0.0, description="Sum of the time units took, this run.")
    units_per_node: dict[str, int] = Field(default_factory=dict, description="Units each Ray node ran, this run.")
    timeline: dict[str, float] = Field(
        default_factory=dict, description="Wall-clock times (epoch s) of the run's phases, for start-up benchmarks.")
