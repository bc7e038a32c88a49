"""Units of work as Ray tasks, reported to the Prefect flow run that submitted them.

Lives apart from the flow module because Prefect may load a flow from its file path
(a deployment's entrypoint): what Ray ships to workers must be importable by its
package name.
"""

from __future__ import annotations

from dataclasses import dataclass

import ray
from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from data_specs.config import BuildConfig
from data_specs.schemas import FailureRow
from data_specs.units import UnitReport, WorkUnit
from tasks.errors import DataError


@dataclass
class UnitOutcome:
    """What a unit's Ray task hands back: its report and where it ran, or the bad-data error that
    stops a build with `on_error="raise"` (a value, so that Ray does not retry it)."""

    report: UnitReport | None
    node_id: str
    data_error: DataError | None = None


def _run_unit(unit: WorkUnit, config: BuildConfig) -> UnitOutcome:
    from tasks.base import build_stages
    from tasks.unit import run_unit

    node_id = ray.get_runtime_context().get_node_id()
    try:
        return UnitOutcome(run_unit(unit, config, build_stages(config.stages)), node_id)
    except DataError as err:  # only raised with on_error="raise"
        return UnitOutcome(None, node_id, err)


def run_units(units: list[WorkUnit], config: BuildConfig) -> tuple[list[UnitReport], list[FailureRow], dict]:
    """Run units as Ray tasks, logging and updating a progress artifact as each one ends.

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
    config_ref = ray.put(config)
    pending = {remote.remote(unit, config_ref): unit for unit in units}
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
