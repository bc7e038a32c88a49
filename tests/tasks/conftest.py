"""Videos shared by the media and synthetic tests, generated once per session (edge cases: tests/conftest.py)."""

from pathlib import Path

import pytest

from tasks.synthetic import write_portrait_video


@pytest.fixture(scope="session")
def portrait(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A landscape 96 x 64 portrait video: 24 frames at 24 fps (1 s)."""
    path = tmp_path_factory.mktemp("portrait") / "portrait.mp4"
    return write_portrait_video(path, seed=7, num_frames=24, width=96, height=64)
