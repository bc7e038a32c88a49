"""Clip processors used by the flow tests to simulate infrastructure trouble on Ray workers."""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from data_specs.sample import ClipSample
from tasks.base import ModelSpec, Resources


class KillWorker:
    """Kills its worker process (as the OOM killer would) on clips of `video_prefix`, `times` times in all.

    Deaths are counted as files in `marker_dir`, which outlives the killed processes.
    """

    name = "kill-worker"
    resources = Resources()
    models = ()
    requires = ()

    def __init__(self, marker_dir: str, video_prefix: str, times: int = 1) -> None:
        self.marker_dir = Path(marker_dir)
        self.video_prefix = video_prefix
        self.times = times

    def setup(self, models: Mapping[str, Any]) -> None:
        self.marker_dir.mkdir(parents=True, exist_ok=True)

    def __call__(self, sample: ClipSample) -> list[ClipSample]:
        deaths = len(list(self.marker_dir.iterdir()))
        if sample.meta.video_id.startswith(self.video_prefix) and deaths < self.times:
            (self.marker_dir / f"death-{deaths}").write_text(str(os.getpid()))
            os._exit(137)
        return [sample]


class Slow:
    """Sleeps on every clip, so that a test can stop a run in the middle."""

    name = "slow"
    resources = Resources()
    models = ()
    requires = ()

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def setup(self, models: Mapping[str, Any]) -> None:
        pass

    def __call__(self, sample: ClipSample) -> list[ClipSample]:
        time.sleep(self.seconds)
        return [sample]


class CountingModel:
    """A model that leaves a file per `setup()` and per call, so a test can count both across processes."""

    provenance = "counting test model"

    def __init__(self, marker_dir: str) -> None:
        self.marker_dir = Path(marker_dir)

    def setup(self) -> None:
        self.marker_dir.mkdir(parents=True, exist_ok=True)
        (self.marker_dir / f"setup-{os.getpid()}-{time.time_ns()}").touch()

    def mean(self, frames: np.ndarray) -> float:
        (self.marker_dir / f"batch-{len(frames)}-{time.time_ns()}").touch()
        return float(frames.mean())


class UsesCountingModel:
    """A clip processor that calls `CountingModel` once per clip with all of the clip's frames."""

    name = "uses-counting-model"
    resources = Resources()

    def __init__(self, marker_dir: str) -> None:
        self.models = (ModelSpec("counter", functools.partial(CountingModel, marker_dir), Resources(cpus=0.5)),)
        self.requires = ()

    def setup(self, models: Mapping[str, Any]) -> None:
        self.counter: CountingModel = models["counter"]

    def __call__(self, sample: ClipSample) -> list[ClipSample]:
        assert self.counter.mean(sample.frames) >= 0
        return [sample]


class ScaleByWeights:
    """A processor whose output depends on a weight file: frames times the gain stored in `weights` (.npy)."""

    name = "scale-by-weights"
    resources = Resources()
    models = ()
    requires = ()

    def __init__(self, weights: str) -> None:
        self.weights = weights

    def setup(self, models: Mapping[str, Any]) -> None:
        self.gain = float(np.load(self.weights))

    def __call__(self, sample: ClipSample) -> list[ClipSample]:
        sample.frames = np.clip(sample.frames * self.gain, 0, 255).astype(np.uint8)
        return [sample]


class MasksHair:
    """A processor that calls perception's segmenter by name, as a plugin would: it keeps the hair mask's area."""

    name = "masks-hair"
    resources = Resources()
    models = ()
    requires = ("segmenter",)

    def setup(self, models: Mapping[str, Any]) -> None:
        from tasks.perception import Segmenter

        self.segmenter: Segmenter = models["segmenter"]

    def __call__(self, sample: ClipSample) -> list[ClipSample]:
        self.hair_area = float(self.segmenter(sample.frames)["hair"].mean())
        return [sample]
