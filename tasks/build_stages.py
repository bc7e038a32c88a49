"""The clip stages a build runs, composed from its config in one place, and their models wired by name.

`build_stages` lists them in order: perception (if configured), the `stages:` entries, then the
training samples (if configured); it checks that every model a stage `requires` is defined by a
stage (`ClipStage.models`). `stages_for` builds and sets them up once per worker process and build,
each with the proxies of the models it defines and requires: Ray actors' (`flows.ray_units.RayModel`)
or, without Ray, `LocalModel`s run in this process.

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
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from data_specs.config import BuildConfig, StageSpec
from tasks.base import ClipStage, ModelSpec
from tasks.perception.stage import PerceptionStage
from tasks.samples.stage import TrainingSampleStage

__all__ = ["STAGE_ALLOWLIST_VAR", "STAGE_ENTRY_POINTS", "LocalModel", "StageNotAllowedError", "build_stages",
           "local_models", "model_specs", "models_for", "stages_for"]

STAGE_ENTRY_POINTS = "durian.clip_stages"  # the entry-point group a package declares its clip stages in
STAGE_ALLOWLIST_VAR = "DURIAN_STAGE_ALLOWLIST"  # path of this machine's list of further allowed stages


def build_stages(config: BuildConfig) -> list[ClipStage]:
    """The configured stages, in order: perception (if configured), `stages` (entry points or the allow-list),
    then the training samples (if configured). `ValueError` when a stage requires a model no stage defines."""
    stages: list[ClipStage] = []
    if config.perception is not None:
        stages.append(PerceptionStage(config.perception, config.decode))
    stages += [_import_stage(spec) for spec in config.stages]
    if config.training_samples is not None:
        stages.append(TrainingSampleStage(config.training_samples))
    defined = model_specs(stages)
    for stage in stages:
        missing = [name for name in stage.requires if name not in defined]
        if missing:
            raise ValueError(f"stage {stage.name!r} calls the model(s) {', '.join(map(repr, missing))}, which no "
                             f"configured stage defines (defined: {', '.join(map(repr, defined)) or 'none'})")
    return stages


def model_specs(stages: Sequence[ClipStage]) -> dict[str, ModelSpec]:
    """Every model the stages define, by name; two stages defining one name must agree on it."""
    specs: dict[str, ModelSpec] = {}
    for stage in stages:
        for spec in stage.models:
            if specs.setdefault(spec.name, spec) != spec:
                raise ValueError(f"two stages define the model {spec.name!r} differently")
    return specs


def models_for(stage: ClipStage, models: Mapping[str, Any]) -> dict[str, Any]:
    """The proxies `stage.setup` takes: those of the models it defines and of those it requires."""
    return {name: models[name] for name in [spec.name for spec in stage.models] + list(stage.requires)}


class LocalModel:
    """A model run in this process, built and set up on first use (tests, a single machine without Ray).

    A proxy: `local.detect(frames)` is `model.detect(frames)`, `local(crops)` is `model(crops)` and
    `local.provenance` is `model.provenance`.
    """

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self._model: Any = None

    def _ready(self) -> Any:
        if self._model is None:
            self._model = self.spec.factory()
            self._model.setup()
        return self._model

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # no private or special attribute is forwarded (pickling and copying probe them)
            raise AttributeError(name)
        return getattr(self._ready(), name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._ready()(*args, **kwargs)


def local_models(stages: Sequence[ClipStage]) -> dict[str, LocalModel]:
    """A `LocalModel` for every model the stages define."""
    return {name: LocalModel(spec) for name, spec in model_specs(stages).items()}


_WORKER_STAGES: dict[str, list[ClipStage]] = {}


def stages_for(config: BuildConfig, models: Mapping[str, Any] | None = None,
               build_id: str = "") -> list[ClipStage]:
    """The stages of `config`, built and set up once per process for each build (`build_id`).

    A Ray worker process runs many units; its stages (and their model proxies) are kept
    between them, so a stage's `setup()` runs once per worker, not once per unit.
    models None: every model runs in this process (`LocalModel`).
    """
    key = json.dumps([build_id, config.model_dump(mode="json", include={"decode", "perception", "stages",
                                                                              "training_samples"})],
                     sort_keys=True)
    if key not in _WORKER_STAGES:
        stages = build_stages(config)
        if models is None:
            models = local_models(stages)
        for stage in stages:
            stage.setup(models_for(stage, models))
        _WORKER_STAGES.clear()  # a worker serves one build at a time
        _WORKER_STAGES[key] = stages
    return _WORKER_STAGES[key]


class StageNotAllowedError(ValueError):
    """A `stages:` entry that no installed package declares and the machine's allow-list does not name."""


def _import_stage(spec: StageSpec) -> ClipStage:
    factory = _allowed_factory(spec.target)
    # Check before calling: `subprocess:run` or any other callable must not run with the entry's params.
    if not (isinstance(factory, type) and callable(getattr(factory, "setup", None))
            and any("__call__" in vars(klass) for klass in factory.__mro__[:-1])):
        raise TypeError(f"stages: {spec.target!r} is not a ClipStage class (name, resources, models, requires, "
                        "setup, __call__); it was not called")
    stage = factory(**spec.params)
    if not isinstance(stage, ClipStage):
        raise TypeError(f"stages: {spec.target!r} did not build a ClipStage (name, resources, models, requires, "
                        "setup, __call__)")
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
