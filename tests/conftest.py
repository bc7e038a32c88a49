"""Fixtures shared by the suite: generated videos (never fetched) and one Prefect test server."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from data_specs.config import BuildConfig, parse_config

# The test server's telemetry service writes to SQLite at start-up, racing the flows ("database is locked").
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
# The test processors (tests/processors.py) that flow tests name in `processors:`; Ray workers and CLI runs inherit it.
os.environ["DURIAN_PROCESSOR_ALLOWLIST"] = str(Path(__file__).with_name("allowed_processors.txt"))

# Small enough for 2 cores: 96 px sources, 24 frames at 24 fps, decoded at 12 fps to 64 px, 4-frame clips.
SMALL_BUILD = {
    "decode": {"fps": 12, "size": 64},
    "clips": {"length": 4, "stride": 4},
    "shards": {"samples_per_shard": 5},
    "execution": {"videos_per_unit": 3, "retries": 1},
}


@pytest.fixture(scope="session")
def video_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Good synthetic portrait videos plus every awkward input, generated once per session."""
    from tasks.synthetic import write_dataset, write_edge_case_videos

    root = tmp_path_factory.mktemp("library")
    write_dataset(root / "good", count=5, seed=0, num_frames=24, width=96, height=96)
    write_edge_case_videos(root / "edge")
    return root


@pytest.fixture(scope="session")
def edge_cases(video_library: Path) -> dict[str, Path]:
    """The broken and awkward inputs of the library, by name."""
    return {path.stem: path for path in (video_library / "edge").iterdir() if not path.name.endswith(".truth.npz")}


@pytest.fixture
def videos(video_library: Path, tmp_path: Path) -> Path:
    """A private copy of the library (tests may touch or delete files)."""
    target = tmp_path / "videos"
    shutil.copytree(video_library, target)
    return target


def small_config(source: Path | str, output: Path, **overrides: dict) -> BuildConfig:
    sections = {key: {**value, **overrides.pop(key, {})} for key, value in SMALL_BUILD.items()}
    return parse_config({"inputs": {"source": str(source)}, "output_dir": str(output), **sections, **overrides})


@pytest.fixture(scope="session")
def local_ray():
    """One local Ray for every flow test in the session (a flow reuses a Ray already running)."""
    import ray

    from data_specs.config import ExecutionConfig
    from flows.ray_runtime import connect

    connect(ExecutionConfig(local_ray_cpus=2))
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def prefect_server():
    """One temporary Prefect API for every flow test in the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
