"""Rebuild skipping that never lies: weight contents, the code of model/ and the pixel libraries are fingerprinted."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import torch

from data_specs.config import BuildConfig
from data_specs.layout import OutputLayout
from data_specs.lineage import OUTPUT_PACKAGES, library_versions, source_digest
from tasks.build_processors import processors_for
from tasks.fingerprint import build_identity, ffmpeg_version, weight_files
from tasks.manifests import publish_manifests
from tasks.sources import plan_build
from tasks.unit import run_unit
from tests.conftest import small_config


def build(config: BuildConfig) -> list[str]:
    """Plan and run in process, as the flow does; the unit ids that ran."""
    plan = plan_build(config)
    processors = processors_for(config, build_id=uuid.uuid4().hex)  # set up afresh: reads the weights as they are now
    publish_manifests(config, [*plan.done, *(run_unit(unit, config, processors) for unit in plan.todo)], [])
    return sorted(unit.unit_id for unit in plan.todo)


def shard_bytes(output: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted((output / "shards").glob("*.tar"))}


def test_a_weight_file_swapped_in_place_rebuilds_every_unit_it_feeds_and_nothing_else_does(videos: Path,
                                                                                           tmp_path: Path):
    weights = tmp_path / "models" / "gain.npy"
    weights.parent.mkdir()
    np.save(weights, np.float32(0.5))
    scaler = {"target": "tests.processors:ScaleByWeights", "params": {"weights": str(weights)}}
    config = small_config(videos / "good", tmp_path / "out", processors=[scaler], execution={"videos_per_unit": 1})
    assert weight_files(config) == [weights.resolve()]
    every_unit = build(config)
    assert len(every_unit) == 5
    cache = OutputLayout(config.output_path).weights_cache
    cached_at = cache.stat().st_mtime_ns
    first = shard_bytes(config.output_path)

    assert build(config) == [] and cache.stat().st_mtime_ns == cached_at  # the hash came from the cache
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))  # touched only
    (weights.parent / "notes.txt").write_text("a file the config does not name")
    assert build(config) == [] and shard_bytes(config.output_path) == first

    # Another checkpoint copied over the same path, size and mtime kept (as `cp -p` of a same-sized file does).
    mtime = weights.stat().st_mtime_ns
    np.save(weights, np.float32(0.25))
    os.utime(weights, ns=(mtime, mtime))
    assert build(config) == every_unit
    rebuilt = shard_bytes(config.output_path)
    assert len(rebuilt) == len(first) and set(rebuilt).isdisjoint(first)  # new fingerprints, new bytes
    assert build(config) == []


def test_the_code_version_covers_model_sources_and_the_pixel_libraries(tmp_path: Path):
    assert OUTPUT_PACKAGES == ("data_specs", "tasks", "model")
    for package in OUTPUT_PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "code.py").write_text("x = 1\n")
    before = source_digest(tmp_path, OUTPUT_PACKAGES)
    (tmp_path / "model" / "code.py").write_text("x = 2\n")
    assert source_digest(tmp_path, OUTPUT_PACKAGES) != before
    versions = library_versions()
    assert versions["torch"] == torch.__version__.split("+")[0]
    assert {"opencv-python", "timm", "facexlib", "diffusers", "scenedetect"} <= set(versions)


def test_the_build_identity_covers_ffmpeg_and_the_split(tmp_path: Path):
    assert ffmpeg_version().startswith("ffmpeg version ")
    config = small_config(tmp_path, tmp_path / "out")
    reseeded = small_config(tmp_path, tmp_path / "out", split={"seed": 7})
    assert build_identity(config) != build_identity(reseeded)  # the split column would change
    assert build_identity(config) == build_identity(small_config(tmp_path, tmp_path / "out",
                                                                 execution={"retries": 0}))
