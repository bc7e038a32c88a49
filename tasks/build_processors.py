"""The clip processors a build runs, composed from its config in one place, and their models wired by name.

`build_processors` lists them in order: perception (if configured), the `processors:` entries, then
the training samples (if configured); it checks that every model a processor `requires` is defined by
a processor (`ClipProcessor.models`). `processors_for` builds and sets them up once per worker process
and build, each with the proxies of the models it defines and requires: Ray actors' (`flows.ray_units.RayModel`)
or, without Ray, `LocalModel`s run in this process.

A `processors:` entry names code to run, and build parameters can be edited in the Prefect UI, so
entries are looked up, never imported blindly: a processor loads only when an installed package
declares it in the `durian.clip_processors` entry-point group, or when the machine's allow-list file
(named by the environment variable `DURIAN_PROCESSOR_ALLOWLIST`, one `module:attribute` per line)
lists it; and the object must be a class implementing `ClipProcessor` before anything of it is called.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from data_specs.config import BuildConfig, ProcessorSpec
from tasks.base import ClipProcessor, ModelSpec
from tasks.perception.processor import PerceptionProcessor
from tasks.samples.processor import TrainingSampleProcessor

__all__ = ["PROCESSOR_ALLOWLIST_VAR", "PROCESSOR_ENTRY_POINTS", "LocalModel", "ProcessorNotAllowedError",
           "build_processors", "local_models", "model_specs", "models_for", "processors_for"]

PROCESSOR_ENTRY_POINTS = "durian.clip_processors"  # the entry-point group a package declares its clip processors in
PROCESSOR_ALLOWLIST_VAR = "DURIAN_PROCESSOR_ALLOWLIST"  # path of this machine's list of further allowed processors


def build_processors(config: BuildConfig) -> list[ClipProcessor]:
    """The configured processors, in order: perception (if configured), `processors` (entry points or the
    allow-list), then the training samples (if configured). `ValueError` when a processor requires a model no
    processor defines."""
    processors: list[ClipProcessor] = []
    if config.perception is not None:
        processors.append(PerceptionProcessor(config.perception, config.decode))
    processors += [_import_processor(spec) for spec in config.processors]
    if config.training_samples is not None:
        processors.append(TrainingSampleProcessor(config.training_samples))
    defined = model_specs(processors)
    for processor in processors:
        missing = [name for name in processor.requires if name not in defined]
        if missing:
            raise ValueError(f"processor {processor.name!r} calls the model(s) {', '.join(map(repr, missing))}, "
                             "which no configured processor defines "
                             f"(defined: {', '.join(map(repr, defined)) or 'none'})")
    return processors


def model_specs(processors: Sequence[ClipProcessor]) -> dict[str, ModelSpec]:
    """Every model the processors define, by name; two processors defining one name must agree on it."""
    specs: dict[str, ModelSpec] = {}
    for processor in processors:
        for spec in processor.models:
            if specs.setdefault(spec.name, spec) != spec:
                raise ValueError(f"two processors define the model {spec.name!r} differently")
    return specs


def models_for(processor: ClipProcessor, models: Mapping[str, Any]) -> dict[str, Any]:
    """The proxies `processor.setup` takes: those of the models it defines and of those it requires."""
    return {name: models[name] for name in [spec.name for spec in processor.models] + list(processor.requires)}


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


def local_models(processors: Sequence[ClipProcessor]) -> dict[str, LocalModel]:
    """A `LocalModel` for every model the processors define."""
    return {name: LocalModel(spec) for name, spec in model_specs(processors).items()}


_WORKER_PROCESSORS: dict[str, list[ClipProcessor]] = {}


def processors_for(config: BuildConfig, models: Mapping[str, Any] | None = None,
                   build_id: str = "") -> list[ClipProcessor]:
    """The processors of `config`, built and set up once per process for each build (`build_id`).

    A Ray worker process runs many units; its processors (and their model proxies) are kept
    between them, so a processor's `setup()` runs once per worker, not once per unit.
    models None: every model runs in this process (`LocalModel`).
    """
    key = json.dumps([build_id, config.model_dump(mode="json", include={"decode", "perception", "processors",
                                                                          "training_samples"})],
                     sort_keys=True)
    if key not in _WORKER_PROCESSORS:
        processors = build_processors(config)
        if models is None:
            models = local_models(processors)
        for processor in processors:
            processor.setup(models_for(processor, models))
        _WORKER_PROCESSORS.clear()  # a worker serves one build at a time
        _WORKER_PROCESSORS[key] = processors
    return _WORKER_PROCESSORS[key]


class ProcessorNotAllowedError(ValueError):
    """A `processors:` entry that no installed package declares and the machine's allow-list does not name."""


def _import_processor(spec: ProcessorSpec) -> ClipProcessor:
    factory = _allowed_factory(spec.target)
    # Check before calling: `subprocess:run` or any other callable must not run with the entry's params.
    if not (isinstance(factory, type) and callable(getattr(factory, "setup", None))
            and any("__call__" in vars(klass) for klass in factory.__mro__[:-1])):
        raise TypeError(f"processors: {spec.target!r} is not a ClipProcessor class (name, resources, models, "
                        "requires, setup, __call__); it was not called")
    processor = factory(**spec.params)
    if not isinstance(processor, ClipProcessor):
        raise TypeError(f"processors: {spec.target!r} did not build a ClipProcessor (name, resources, models, "
                        "requires, setup, __call__)")
    return processor


def _allowed_factory(target: str) -> Any:
    """The object a `processors:` target names, if an entry point or the allow-list allows it."""
    declared = {entry.name: entry for entry in metadata.entry_points(group=PROCESSOR_ENTRY_POINTS)}
    if target in declared:
        return declared[target].load()
    allowed = {entry.value for entry in declared.values()} | _allow_listed()
    if target not in allowed:
        listing = os.environ.get(PROCESSOR_ALLOWLIST_VAR) or "not set"
        raise ProcessorNotAllowedError(
            f"processors: {target!r} is not an allowed processor. Processors load only from the "
            f"{PROCESSOR_ENTRY_POINTS!r} entry points of installed packages "
            f"({', '.join(sorted(declared)) or 'none installed'}) or from this machine's allow-list file "
            f"(${PROCESSOR_ALLOWLIST_VAR}: {listing}); build parameters cannot add one")
    module_name, _, attribute = target.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"processors: cannot import {target!r}: {err}") from err


def _allow_listed() -> set[str]:
    """The `module:attribute` lines of the file `$DURIAN_PROCESSOR_ALLOWLIST` names (none when unset)."""
    listing = os.environ.get(PROCESSOR_ALLOWLIST_VAR)
    if not listing:
        return set()
    try:
        lines = Path(listing).read_text().splitlines()
    except OSError as err:
        raise ProcessorNotAllowedError(f"${PROCESSOR_ALLOWLIST_VAR}={listing} cannot be read: {err}") from err
    return {line.split("#", 1)[0].strip() for line in lines} - {""}
