"""The one interface every per-clip processing stage implements.

A stage is cheap to construct, loads its models in `setup()` on the worker that
runs it, and maps one `ClipSample` to one `ClipSample`. A problem with the clip's
data is raised as `DataError`: the unit runner records it as a failure row for
that clip and carries on; any other exception is infrastructure and propagates.
Stages are named in `BuildConfig.stages` by import path, so the perception stages
(face crop, keypoints, attribute masks) attach without touching the runner or flow.
"""

from __future__ import annotations

import importlib
from typing import Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from data_specs.config import StageSpec
from data_specs.sample import ClipSample


class Resources(BaseModel):
    """What one instance of a stage needs on its worker."""

    model_config = ConfigDict(frozen=True)

    cpus: float = Field(1.0, ge=0)
    gpus: float = Field(0.0, ge=0)


@runtime_checkable
class ClipStage(Protocol):
    name: str
    resources: Resources

    def setup(self) -> None:
        """Load weights and other heavy state; called once per worker before the first clip."""

    def __call__(self, sample: ClipSample) -> ClipSample:
        """Process one clip; raise `DataError` when the clip's data is at fault."""


def build_stages(specs: tuple[StageSpec, ...]) -> list[ClipStage]:
    """Instantiate the configured stages, in order, failing loudly on a bad import path."""
    stages = []
    for spec in specs:
        module_name, _, attribute = spec.target.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"stages: cannot import {spec.target!r}: {err}") from err
        stage = factory(**spec.params)
        if not isinstance(stage, ClipStage):
            raise TypeError(f"stages: {spec.target!r} did not build a ClipStage (name, resources, setup, __call__)")
        stages.append(stage)
    return stages
