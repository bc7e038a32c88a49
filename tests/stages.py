"""Clip stages used by the flow tests to simulate infrastructure trouble on Ray workers."""

from __future__ import annotations

import os
import time
from pathlib import Path

from data_specs.sample import ClipSample
from tasks.base import Resources


class KillWorker:
    """Kills its worker process (as the OOM killer would) on clips of `video_prefix`, `times` times in all.

    Deaths are counted as files in `marker_dir`, which outlives the killed processes.
    """

    name = "kill-worker"
    resources = Resources()

    def __init__(self, marker_dir: str, video_prefix: str, times: int = 1) -> None:
        self.marker_dir = Path(marker_dir)
        self.video_prefix = video_prefix
        self.times = times

    def setup(self) -> None:
        self.marker_dir.mkdir(parents=True, exist_ok=True)

    def __call__(self, sample: ClipSample) -> ClipSample:
        deaths = len(list(self.marker_dir.iterdir()))
        if sample.meta.video_id.startswith(self.video_prefix) and deaths < self.times:
            (self.marker_dir / f"death-{deaths}").write_text(str(os.getpid()))
            os._exit(137)
        return sample


class Slow:
    """Sleeps on every clip, so that a test can stop a run in the middle."""

    name = "slow"
    resources = Resources()

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def setup(self) -> None:
        pass

    def __call__(self, sample: ClipSample) -> ClipSample:
        time.sleep(self.seconds)
        return sample
