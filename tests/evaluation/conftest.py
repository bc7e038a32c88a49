"""Random checkpoints of every evaluation extractor in its official layout, written once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_specs.evaluation import ExtractorPaths
from tests.evaluation.evaluation_testing import TINY_ARCFACE, write_extractor_checkpoints


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_extractor_checkpoints(tmp_path_factory.mktemp("checkpoints"))


@pytest.fixture(scope="session")
def extractor_paths(checkpoints: dict[str, Path]) -> ExtractorPaths:
    """The evaluation config section pointing at those checkpoints."""
    return ExtractorPaths(inception=checkpoints["inception"], video=checkpoints["video"], lpips=checkpoints["alex"],
                          clip=str(checkpoints["clip"]), dino=str(checkpoints["dino"]),
                          arcface=checkpoints["arcface"], identity=TINY_ARCFACE)
