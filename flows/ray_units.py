"""Units of work as Ray tasks and models as Ray actors, reported to the Prefect flow run that submitted them.

Models (`tasks.base.ModelSpec`) run in long-lived actors, created and set up once per
build with the resources they declare (GPUs included); unit tasks (CPU: decode, crop,
encode, shard) call them with whole clips of frames, so that many CPU units keep a GPU
model busy. A clip processor holds a `RayModel` per model: a proxy on which `detector.detect(frames,
refs)` runs `detect` on one of the model's actors (`ModelActor.call`) and returns its result.
Ray's `ActorPool` serves one caller; here every unit task is a caller, so each proxy spreads
its calls over the model's actors itself.

Lives apart from the flow module because Prefect may load a flow from its file path
(a deployment's entrypoint): what Ray ships to workers must be importable by its
package name.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import ray
from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from data_specs.config import BuildConfig
from data_specs.schemas import FailureRow
from data_specs.units import UnitReport, WorkUnit
from tasks.base import ModelSpec
from tasks.errors import DataError


class ModelLoadError(RuntimeError):
    """A model's actor could not build or set up its model (missing weights, bad checkpoint, no GPU)."""


class ModelActor:
    """One model for the whole build: built and set up once, then called with batches of frames."""

    def __init__(self, spec: ModelSpec) -> None:
        self.model = spec.factory()
        self.model.setup()

    def methods(self) -> list[str]:
        """The model's public methods (`__call__` when it is callable): what `RayModel` forwards as calls."""
        names = [name for name in dir(self.model) if not name.startswith("_")
                 and callable(getattr(type(self.model), name, None))]
        return names + ["__call__"] * callable(self.model)

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """`model.method(*args, **kwargs)`: the one entry `RayModel`'s method proxies go through."""
        return getattr(self.model, method)(*args, **kwargs)

    def get(self, attribute: str) -> Any:
        return getattr(self.model, attribute)


class RayModel:
    """A proxy of one model over its actors, as `tasks.build_processors.LocalModel` is in-process:
    `model.detect(x)` and `model(x)` run on the actors, in turn; `model.provenance` reads the attribute from an
    actor."""

    def __init__(self, actors: list, methods: list[str]) -> None:
        self.actors = actors
        self.methods = frozenset(methods)
        self._turn = itertools.count()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # no private or special attribute is forwarded (pickling probes them)
            raise AttributeError(name)
        if name in self.methods:
            return functools.partial(self._call, name)
        return ray.get(self.actors[0].get.remote(name))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("__call__", *args, **kwargs)

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        actor = self.actors[next(self._turn) % len(self.actors)]
        try:
            return ray.get(actor.call.remote(method, *args, **kwargs))
        except ray.exceptions.RayTaskError as err:
            # What a model raised on a clip (bad data, or a bug its content triggers) is the clip's: its own
            # exception, not the actor's traceback, so the unit records it for that video. Ray's own failures
            # (an actor dead beyond its restarts) stay Ray's and fail the unit.
            if not isinstance(err.cause, ray.exceptions.RayError):
                raise err.cause from None
            raise

    def __reduce__(self) -> tuple:  # a fresh turn counter in each unit task
        return RayModel, (self.actors, sorted(self.methods))


def check_capacity(specs: dict[str, ModelSpec], config: BuildConfig) -> None:
    """Refuse, before any work, a build whose model actors and one unit do not fit the Ray cluster."""
    available = ray.cluster_resources()
    cpus = sum(spec.resources.cpus * spec.replicas for spec in specs.values()) + config.execution.cpus_per_unit
    gpus = sum(spec.resources.gpus * spec.replicas for spec in specs.values())
    if cpus > available.get("CPU", 0) or gpus > available.get("GPU", 0):
        wanted = ", ".join(f"{name}: {spec.replicas} x {spec.resources.cpus:g} CPU + {spec.resources.gpus:g} GPU"
                           for name, spec in specs.items())
        raise ModelLoadError(
            f"the models ({wanted}) and one unit (execution.cpus_per_unit={config.execution.cpus_per_unit:g}) "
            f"need {cpus:g} CPUs and {gpus:g} GPUs; the Ray cluster has {available.get('CPU', 0):g} and "
            f"{available.get('GPU', 0):g}: lower perception.*.runtime.cpus/gpus/replicas or add machines")


@contextlib.contextmanager
def model_actors(specs: dict[str, ModelSpec], config: BuildConfig) -> Iterator[dict[str, RayModel]]:
    """The actors of every model for the duration of the block, each set up once; a model that cannot
    load stops the build here, before any unit runs."""
    check_capacity(specs, config)
    # An actor whose process dies (OOM, a crash, a lost node) is restarted and set up again, and the calls it
    # was serving are retried on it: one crash must not fail every unit still to come.
    restarts = config.execution.actor_restarts
    actors = {name: [ray.remote(ModelActor).options(name=f"model-{name}-{index}-{uuid.uuid4().hex[:6]}",
                                                    num_cpus=spec.resources.cpus, num_gpus=spec.resources.gpus,
                                                    max_restarts=restarts, max_task_retries=restarts)
                     .remote(spec) for index in range(spec.replicas)]
              for name, spec in specs.items()}
    methods = {}
    try:
        for name, handles in actors.items():
            try:
                methods[name] = ray.get([handle.methods.remote() for handle in handles])[0]
            except ray.exceptions.RayError as err:
                cause = getattr(err, "cause", None) or err
                raise ModelLoadError(f"model {name!r} could not be set up: {type(cause).__name__}: "
                                     f"{str(cause).strip().splitlines()[-1]}") from err
        yield {name: RayModel(handles, methods[name]) for name, handles in actors.items()}
    finally:
        for handle in itertools.chain.from_iterable(actors.values()):
            ray.kill(handle)


@dataclass
class UnitOutcome:
    """What a unit's Ray task hands back: its report and where it ran, or the bad-data error that
    stops a build with `on_error="raise"` (a value, so that Ray does not retry it)."""

    report: UnitReport | None
    node_id: str
    data_error: DataError | None = None


def _run_unit(unit: WorkUnit, config: BuildConfig, models: dict[str, RayModel], build_id: str) -> UnitOutcome:
    from tasks.build_processors import processors_for
    from tasks.unit import run_unit

    node_id = ray.get_runtime_context().get_node_id()
    try:
        return UnitOutcome(run_unit(unit, config, processors_for(config, models, build_id)), node_id)
    except DataError as err:  # only raised with on_error="raise"
        return UnitOutcome(None, node_id, err)


def run_units(units: list[WorkUnit], config: BuildConfig,
              models: dict[str, RayModel]) -> tuple[list[UnitReport], list[FailureRow], dict]:
    """Run units as Ray tasks calling `models`, logging and updating a progress artifact as each one ends.

    Returns the reports of the units that completed, failure rows for those that did
    not, and how many units each Ray node ran.
    """
    from tasks.manifests import unit_failure_rows

    logger = get_run_logger()
    execution = config.execution
    progress = create_progress_artifact(progress=0.0, key="build-dataset-progress",
                                        description=f"Units of work done, of {len(units)}")
    remote = ray.remote(_run_unit).options(name="process-unit", num_cpus=execution.cpus_per_unit,
                                           max_retries=execution.retries, retry_exceptions=True)
    config_ref, build_id = ray.put(config), uuid.uuid4().hex
    pending = {remote.remote(unit, config_ref, models, build_id): unit for unit in units}
    reports, failures, per_node = [], [], {}
    while pending:
        [ref], _ = ray.wait(list(pending), num_returns=1)
        unit = pending.pop(ref)
        finished = len(units) - len(pending)
        try:
            outcome: UnitOutcome = ray.get(ref)
        except ray.exceptions.RayError as err:
            if execution.on_error == "raise":
                raise
            cause = err.cause if isinstance(err, ray.exceptions.RayTaskError) else err
            reason = (f"unit failed on all {execution.retries + 1} attempt(s) (execution.retries = "
                      f"{execution.retries}); last: {type(cause).__name__}: {str(cause).strip().splitlines()[-1]}")
            logger.error("[%d/%d] unit %s: %s", finished, len(units), unit.unit_id, reason)
            failures += unit_failure_rows(unit, config, reason[:500])
        else:
            if outcome.data_error is not None:
                for other in pending:
                    ray.cancel(other)
                raise outcome.data_error
            report = outcome.report
            reports.append(report)
            per_node[outcome.node_id] = per_node.get(outcome.node_id, 0) + 1
            logger.info("[%d/%d] unit %s: %d videos, %d samples, %d failures in %.1fs", finished, len(units),
                        unit.unit_id, report.videos, report.samples, sum(report.failures_by_reason.values()),
                        report.seconds)
        update_progress_artifact(progress, progress=100.0 * finished / len(units))
    return reports, failures, per_node
