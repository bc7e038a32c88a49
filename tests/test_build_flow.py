"""The real `build-dataset` flow: Prefect (test server) + local Ray, on generated and broken videos."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import webdataset as wds

from data_specs.sample import decode_sample
from data_specs.schemas import read_table
from tasks.errors import DataError
from tasks.manifests import verify_shards
from tests.conftest import small_config
from tests.test_unit import EXPECTED_FAILURES

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server", "local_ray")]
REPO = Path(__file__).resolve().parent.parent


def manifest(output: Path, name: str) -> list[dict]:
    return read_table(name, output / "manifests" / f"{name}.parquet").to_pylist()


def shard_digests(output: Path) -> dict[str, str]:
    return {row["shard"]: row["sha256"] for row in manifest(output, "shards")}


def test_flow_builds_shards_and_manifests_from_good_and_bad_videos(videos: Path, tmp_path: Path):
    from prefect.artifacts import Artifact

    from flows.build_dataset import build_dataset

    output = tmp_path / "out"
    summary = build_dataset(small_config(videos, output))

    failures = manifest(output, "failures")
    assert {Path(row["source_path"]).stem for row in failures} == set(EXPECTED_FAILURES)
    assert all(row["reason"] and row["config_hash"] and row["code_version"] for row in failures)
    samples = manifest(output, "samples")
    assert summary.samples == len(samples) == 15 + 3 + 3 + 3  # portraits, VFR, rotated, odd name
    assert summary.videos == 15 and summary.videos_failed == len(EXPECTED_FAILURES)
    assert verify_shards(output) == []

    shards = sorted(str(output / "shards" / row["shard"]) for row in manifest(output, "shards"))
    read_back = [decode_sample(raw) for raw in wds.WebDataset(shards, shardshuffle=False)]
    assert sorted(s.key for s in read_back) == sorted(row["sample_key"] for row in samples)
    assert all(s.frames.shape == (4, 64, 64, 3) for s in read_back)
    for shard in shards:
        listing = subprocess.run(["tar", "-tf", shard], capture_output=True, text=True, check=True).stdout.split()
        assert listing and all(name.count(".") >= 2 for name in listing)

    summary_artifact = Artifact.get("build-dataset-summary")
    assert "## Failures by reason" in summary_artifact.data and "probe: file is empty | 1" in summary_artifact.data
    assert "videos (failed / partial)" in str(Artifact.get("build-dataset-counts").data)
    assert float(Artifact.get("build-dataset-progress").data) == 100.0


def test_rerun_skips_everything_and_a_changed_video_is_redone(videos: Path, tmp_path: Path):
    from flows.build_dataset import build_dataset
    from tasks.synthetic import write_portrait_video

    config = small_config(videos / "good", tmp_path / "out")
    first = build_dataset(config)
    digests = shard_digests(config.output_path)
    second = build_dataset(config)
    assert second.units_skipped == second.units == first.units
    assert shard_digests(config.output_path) == digests

    changed = videos / "good" / "portrait_0003.mp4"
    write_portrait_video(changed, seed=99, num_frames=36, width=96, height=96)
    third = build_dataset(config)
    assert third.units - third.units_skipped == 1
    samples = manifest(config.output_path, "samples")
    assert sum(row["source_path"] == str(changed) for row in samples) == 4  # 36 frames -> 18 at 12 fps -> 4 clips
    assert len({row["sample_key"] for row in samples}) == len(samples) == 16
    assert verify_shards(config.output_path) == []


def test_two_identical_runs_give_byte_identical_shards(videos: Path, tmp_path: Path):
    from flows.build_dataset import build_dataset

    build_dataset(small_config(videos / "good", tmp_path / "a"))
    build_dataset(small_config(videos / "good", tmp_path / "b"))
    first, second = shard_digests(tmp_path / "a"), shard_digests(tmp_path / "b")
    assert first == second and first
    for name in first:
        assert (tmp_path / "a" / "shards" / name).read_bytes() == (tmp_path / "b" / "shards" / name).read_bytes()


def test_a_killed_worker_is_retried_and_nothing_is_lost(videos: Path, tmp_path: Path):
    from flows.build_dataset import build_dataset

    deaths = tmp_path / "deaths"
    killer = {"target": "tests.processors:KillWorker",
              "params": {"marker_dir": str(deaths), "video_prefix": "portrait_0001"}}
    summary = build_dataset(small_config(videos / "good", tmp_path / "out", processors=[killer]))
    assert len(list(deaths.iterdir())) == 1, "the processor never killed its worker"
    assert summary.units_failed == 0 and summary.samples == 15
    assert manifest(tmp_path / "out", "failures") == []


def test_a_unit_that_keeps_failing_becomes_failure_rows(videos: Path, tmp_path: Path):
    from flows.build_dataset import build_dataset

    deaths = tmp_path / "deaths"
    killer = {"target": "tests.processors:KillWorker",
              "params": {"marker_dir": str(deaths), "video_prefix": "portrait_0004", "times": 100}}
    summary = build_dataset(small_config(videos / "good", tmp_path / "out", processors=[killer]))
    assert len(list(deaths.iterdir())) == 2  # the first attempt and one retry (execution.retries = 1)
    assert summary.units_failed == 1
    failures = manifest(tmp_path / "out", "failures")
    assert any(Path(row["source_path"]).name == "portrait_0004.mp4" for row in failures)
    assert all(row["failed_in"] == "unit" and "attempt" in row["reason"] for row in failures)
    failed_videos = [row for row in manifest(tmp_path / "out", "videos") if row["status"] == "failed"]
    assert sorted(row["video_id"] for row in failed_videos) == sorted(row["item_id"] for row in failures)
    assert summary.videos == 5 and summary.videos_failed == len(failures)
    assert summary.samples == 15 - 3 * len(failures)
    assert verify_shards(tmp_path / "out") == []


def descendants(root: int) -> set[tuple[int, str]]:
    """(pid, start time) of every live process below `root`, found through /proc parent links."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry.name)] = (int(fields[1]), fields[19])  # ppid, start time
    found, frontier = set(), {root}
    while frontier:
        children = {pid for pid, (ppid, _) in parents.items() if ppid in frontier}
        found |= {(pid, parents[pid][1]) for pid in children}
        frontier = children
    return found


def still_alive(processes: set[tuple[int, str]]) -> set[tuple[int, str]]:
    alive = set()
    for pid, started in processes:
        try:
            if (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[19] == started:
                alive.add((pid, started))
        except OSError:
            continue
    return alive


def test_a_killed_run_leaves_no_process_and_no_partial_shard_and_a_rerun_completes(videos: Path, tmp_path: Path):
    from flows.build_dataset import build_dataset

    output = tmp_path / "out"
    slow = '[{"target": "tests.processors:Slow", "params": {"seconds": 0.3}}]'
    command = [sys.executable, "-m", "flows.cli", "build-dataset", "-i", str(videos / "good"), "-o", str(output),
               "--set", "decode.fps=12", "--set", "decode.size=64", "--set", "clips.length=4",
               "--set", "clips.stride=4", "--set", "shards.samples_per_shard=1", "--set", "execution.videos_per_unit=1",
               "--set", f"processors={slow}"]
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PYTHONPATH": str(REPO)}
    env.pop("PREFECT_API_URL", None)
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not list((output / "shards").glob("*.tar")):
        time.sleep(0.1)
    started = descendants(process.pid)  # the Prefect server, Ray's processes and workers
    os.kill(process.pid, signal.SIGKILL)  # as `kill -9 PID` does: nothing of the CLI runs after this
    process.wait()
    assert len(started) >= 4
    deadline = time.monotonic() + 30
    while still_alive(started) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not still_alive(started), "processes of the killed run are still running"

    published = list((output / "shards").glob("*.tar"))
    assert published, "the run was killed before it wrote any shard"
    assert not (output / "manifests" / "shards.parquet").exists()
    for shard in published:  # every visible shard is whole
        with tarfile.open(shard) as tar:
            assert len(tar.getmembers()) == 5  # meta + 4 frames

    config = small_config(videos / "good", output, shards={"samples_per_shard": 1}, execution={"videos_per_unit": 1},
                          processors=[{"target": "tests.processors:Slow", "params": {"seconds": 0.3}}])
    summary = build_dataset(config)
    samples = manifest(output, "samples")
    assert summary.samples == len(samples) == 15 and len({row["sample_key"] for row in samples}) == 15
    assert verify_shards(output) == []
    assert sorted(p.name for p in (output / "shards").glob("*.tar")) == sorted(shard_digests(output))
    assert not list((output / "shards").glob(".*.partial"))


def test_on_error_raise_fails_the_flow_at_a_bad_video(videos: Path, tmp_path: Path):
    from flows.build_dataset import build_dataset

    config = small_config(videos / "edge", tmp_path / "out", execution={"on_error": "raise", "retries": 0})
    with pytest.raises(DataError):  # whichever bad video a worker reaches first
        build_dataset(config)
    assert not (tmp_path / "out" / "manifests" / "shards.parquet").exists()
