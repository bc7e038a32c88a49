"""Failures stay small: a processor's crash on one clip costs its video, not its unit; the machine's trouble still fails
the unit (so that Ray retries it)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from data_specs.layout import OutputLayout
from data_specs.sample import ClipSample
from data_specs.units import WorkUnit
from tasks.base import Resources
from tasks.sources import list_videos
from tasks.unit import run_unit
from tests.conftest import small_config


class CrashOn:
    """A clip processor with a bug that one video's content triggers (here: its second clip)."""

    name = "fragile"
    resources = Resources()
    models = ()
    requires = ()

    def __init__(self, video_prefix: str, error: Exception) -> None:
        self.video_prefix = video_prefix
        self.error = error

    def setup(self, models) -> None:
        pass

    def __call__(self, sample: ClipSample) -> list[ClipSample]:
        if sample.meta.video_id.startswith(self.video_prefix) and sample.meta.clip_index == 1:
            raise self.error
        return [sample]


def one_unit(config) -> WorkUnit:
    return WorkUnit(unit_id="all", fingerprint="0" * 16, videos=tuple(list_videos(config.inputs)))


def rows(output: Path, report, table: str) -> list[dict]:
    return pq.read_table(output / report.parts_dir / f"{table}.parquet").to_pylist()


def test_a_processor_crash_on_one_clip_costs_its_video_and_keeps_the_units_others(videos: Path, tmp_path: Path):
    config = small_config(videos / "good", tmp_path / "out", execution={"videos_per_unit": 100})
    unit = one_unit(config)
    report = run_unit(unit, config, [CrashOn("portrait_0002", ZeroDivisionError("division by zero"))])
    (failure,) = rows(config.output_path, report, "failures")
    crashed = next(video.video_id for video in unit.videos if video.video_id.startswith("portrait_0002"))
    assert failure["item_id"] == crashed and failure["failed_in"] == "fragile"
    assert failure["reason"] == "ZeroDivisionError: division by zero"
    assert report.failures_by_reason == {"fragile: ZeroDivisionError": 1}
    status = {row["video_id"]: row["status"] for row in rows(config.output_path, report, "videos")}
    assert status.pop(crashed) == "partial" and set(status.values()) == {"ok"} and len(status) == 4
    # The other four videos' clips, and the crashed video's clip before the crash.
    samples = rows(config.output_path, report, "samples")
    assert len(samples) == 4 * 3 + 1 and {row["video_id"] for row in samples} == {crashed, *status}


@pytest.mark.parametrize("on_error", ["raise", "record"])
def test_infrastructure_errors_and_on_error_raise_still_fail_the_unit(videos: Path, tmp_path: Path, on_error: str):
    config = small_config(videos / "good", tmp_path / "out", execution={"videos_per_unit": 100, "on_error": on_error})
    error = ZeroDivisionError("division by zero") if on_error == "raise" else OSError(28, "No space left on device")
    with pytest.raises(type(error)):
        run_unit(one_unit(config), config, [CrashOn("portrait_0002", error)])
    assert OutputLayout(config.output_path).read_report("all") is None  # nothing published: Ray retries the unit


def test_what_counts_as_the_machines_trouble():
    import ray.exceptions

    from tasks.errors import is_infrastructure

    assert is_infrastructure(OSError(5, "Input/output error")) and is_infrastructure(MemoryError())
    assert is_infrastructure(ray.exceptions.RayActorError())  # a model actor dead beyond its restarts
    assert not is_infrastructure(ZeroDivisionError()) and not is_infrastructure(ValueError("bad shape"))
