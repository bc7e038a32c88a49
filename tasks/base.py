"""The interface of per-clip work: CPU stages inside the unit task, models in long-lived actors.

A *clip stage* (`ClipStage`) maps one sample to a list of samples inside the unit task, on
the CPU that decodes and encodes: records in, records out. Most stages return one sample
(perception crops a clip); the training-sample stage returns a clip's K pairs; an empty list
drops the record. A problem with the record's data is raised as `DataError`: the unit
runner records it as a failure row for that record and carries on. Any other exception
ends the record's video, as one failure row naming the error (the unit's other videos are
kept), unless it is infrastructure (I/O, memory, Ray: `tasks.errors.is_infrastructure`),
which propagates, and Ray retries the unit.

A *model* (`ModelSpec`) is whatever a stage needs that is costly to load or wants a GPU:
an object with `setup()` (load the weights) and batched methods over frames. The flow
runs each model in long-lived Ray actors, created and set up once per build and sized
from the model's `Resources` (so a GPU model gets a GPU); the unit tasks call them with
whole clips of frames through `ModelClient`s, so several CPU units feed one GPU. Without
Ray (tests, `LocalModel`) the same object runs in-process, set up on first use.

Stages are built from the config and set up once per worker process and build
(`stages_for`), not once per unit. Without Prefect or Ray imports here: the flow wires
the clients in.

A `stages:` entry names code to run, and build parameters can be edited in the Prefect UI, so
entries are looked up, never imported blindly: a stage loads only when an installed package
declares it in the `durian.clip_stages` entry-point group, or when the machine's allow-list file
(named by the environment variable `DURIAN_STAGE_ALLOWLIST`, one `module:attribute` per line)
lists it; and the object must be a class implementing `ClipStage` before anything of it is called.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from data_specs.config import BuildConfig, StageSpec
from data_specs.sample import Sample
from data_specs.spec import Resources

__all__ = ["STAGE_ALLOWLIST_VAR", "STAGE_ENTRY_POINTS", "ClipStage", "LocalModel", "ModelClient", "ModelSpec",
           "Resources", "StageNotAllowedError", "build_stages", "model_specs", "stages_for"]

STAGE_ENTRY_POINTS = "durian.clip_stages"  # the entry-point group a package declares its clip stages in
STAGE_ALLOWLIST_VAR = "DURIAN_STAGE_ALLOWLIST"  # path of this machine's list of further allowed stages


@dataclass(frozen=True)
class ModelSpec:
    """A model a stage calls: how to build it (a picklable factory; `setup()` loads it) and what it needs."""

    name: str
    factory: Callable[[], Any]
    resources: Resources
    replicas: int = 1


class ModelClient(Protocol):
    """A stage's handle on a model, wherever it runs."""

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """`model.method(*args, **kwargs)`."""

    def get(self, attribute: str) -> Any:
        """`model.attribute`."""


class LocalModel:
    """A model run in this process, built and set up on first use (tests, a single machine without Ray)."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self._model: Any = None

    def _ready(self) -> Any:
        if self._model is None:
            self._model = self.spec.factory()
            self._model.setup()
        return self._model

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self._ready(), method)(*args, **kwargs)

    def get(self, attribute: str) -> Any:
        return getattr(self._ready(), attribute)


@runtime_checkable
class ClipStage(Protocol):
    name: str
    resources: Resources
    models: tuple[ModelSpec, ...]  # the models this stage calls, by `ModelSpec.name`

    def setup(self, models: Mapping[str, ModelClient]) -> None:
        """Keep the model clients, load light state; called once per worker process and build."""

    def __call__(self, sample: Sample) -> list[Sample]:
        """Process one record; raise `DataError` when its data is at fault."""


def build_stages(config: BuildConfig) -> list[ClipStage]:
    """The configured stages, in order: perception (if configured), `stages` by import path, then the
    training samples (if configured)."""
    stages: list[ClipStage] = []
    if config.perception is not None:
        from tasks.perception.stage import PerceptionStage

        perception = PerceptionStage(config.perception, config.decode)
        stages.append(perception)
    for spec in config.stages:
        stages.append(_import_stage(spec))
    if config.training_samples is not None:
        from tasks.samples.stage import TrainingSampleStage

        stages.append(TrainingSampleStage(config.training_samples, perception.segmenter))
    return stages


class StageNotAllowedError(ValueError):
    """A `stages:` entry that no installed package declares and the machine's allow-list does not name."""


def _import_stage(spec: StageSpec) -> ClipStage:
    factory = _allowed_factory(spec.target)
    # Check before calling: `subprocess:run` or any other callable must not run with the entry's params.
    if not (isinstance(factory, type) and callable(getattr(factory, "setup", None))
            and any("__call__" in vars(klass) for klass in factory.__mro__[:-1])):
        raise TypeError(f"stages: {spec.target!r} is not a ClipStage class (name, resources, models, setup, "
                        "__call__); it was not called")
    stage = factory(**spec.params)
    if not isinstance(stage, ClipStage):
        raise TypeError(f"stages: {spec.target!r} did not build a ClipStage (name, resources, models, setup, "
                        "__call__)")
    return stage


def _allowed_factory(target: str) -> Any:
    """The object a `stages:` target names, if an entry point or the allow-list allows it."""
    declared = {entry.name: entry for entry in metadata.entry_points(group=STAGE_ENTRY_POINTS)}
    if target in declared:
        return declared[target].load()
    allowed = {entry.value for entry in declared.values()} | _allow_listed()
    if target not in allowed:
        listing = os.environ.get(STAGE_ALLOWLIST_VAR) or "not set"
        raise StageNotAllowedError(
            f"stages: {target!r} is not an allowed stage. Stages load only from the {STAGE_ENTRY_POINTS!r} entry "
            f"points of installed packages ({', '.join(sorted(declared)) or 'none installed'}) or from this "
            f"machine's allow-list file (${STAGE_ALLOWLIST_VAR}: {listing}); build parameters cannot add one")
    module_name, _, attribute = target.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"stages: cannot import {target!r}: {err}") from err


def _allow_listed() -> set[str]:
    """The `module:attribute` lines of the file `$DURIAN_STAGE_ALLOWLIST` names (none when unset)."""
    listing = os.environ.get(STAGE_ALLOWLIST_VAR)
    if not listing:
        return set()
    try:
        lines = Path(listing).read_text().splitlines()
    except OSError as err:
        raise StageNotAllowedError(f"${STAGE_ALLOWLIST_VAR}={listing} cannot be read: {err}") from err
    return {line.split("#", 1)[0].strip() for line in lines} - {""}


def model_specs(stages: Sequence[ClipStage]) -> dict[str, ModelSpec]:
    """Every model the stages call, by name; two stages naming one model must agree on it."""
    specs: dict[str, ModelSpec] = {}
    for stage in stages:
        for spec in stage.models:
            if specs.setdefault(spec.name, spec) != spec:
                raise ValueError(f"two stages define the model {spec.name!r} differently")
    return specs


_WORKER_STAGES: dict[str, list[ClipStage]] = {}


def stages_for(config: BuildConfig, models: Mapping[str, ModelClient] | None = None,
               build_id: str = "") -> list[ClipStage]:
    """The stages of `config`, built and set up once per process for each build (`build_id`).

    A Ray worker process runs many units; its stages (and their model clients) are kept
    between them, so a stage's `setup()` runs once per worker, not once per unit.
    models None: every model runs in this process (`LocalModel`).
    """
    key = json.dumps([build_id, config.model_dump(mode="json", include={"decode", "perception", "stages",
                                                                              "training_samples"})],
                     sort_keys=True)
    if key not in _WORKER_STAGES:
        stages = build_stages(config)
        if models is None:
            models = {name: LocalModel(spec) for name, spec in model_specs(stages).items()}
        for stage in stages:
            stage.setup({spec.name: models[spec.name] for spec in stage.models})
        _WORKER_STAGES.clear()  # a worker serves one build at a time
        _WORKER_STAGES[key] = stages
    return _WORKER_STAGES[key]
