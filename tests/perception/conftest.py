"""Generated videos with ground truth, decoded once per session, for the perception tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from perception_testing import SIZE, Clip, decode

from tasks.synthetic import write_portrait_video


@pytest.fixture(scope="session")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[Clip]:
    """Two 24-frame generated portrait videos (every attribute), 128 x 128, different seeds."""
    folder = tmp_path_factory.mktemp("perception_videos")
    return [decode(write_portrait_video(folder / f"head_{seed}.mp4", seed=seed, num_frames=24, width=SIZE,
                                         height=SIZE)) for seed in (1, 2)]


@pytest.fixture(scope="session")
def wide_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 160 x 96 video with hair and a hat only: decoding changes its geometry (crop or pad to a square)."""
    return write_portrait_video(tmp_path_factory.mktemp("wide") / "wide.mp4", seed=5, num_frames=6, width=160,
                                height=96, attributes=("hair", "hat"))
