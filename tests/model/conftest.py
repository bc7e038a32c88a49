"""Tiny Durian components shared by the model tests (CPU, seconds)."""

from __future__ import annotations

import pytest

from data_specs.model import ModelFlavour, model_flavour
from model.builders import DurianComponents, random_components
from model.durian import DurianModel


@pytest.fixture(scope="session")
def tiny() -> ModelFlavour:
    return model_flavour("tiny")


@pytest.fixture
def components(tiny: ModelFlavour) -> DurianComponents:
    """Fresh random components (tests may change weights or flags)."""
    return random_components(tiny, seed=0)


@pytest.fixture
def model(components: DurianComponents) -> DurianModel:
    return components.model
