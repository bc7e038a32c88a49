"""The Prefect flow `build-dataset`: videos -> units of work on Ray -> shards and manifests.

The flow only wires tasks: it lists and plans (in the flow process), runs every
unit that is not already complete as a Prefect task on Ray (a subflow whose task
runner is prefect-ray's `RayTaskRunner`), then publishes the manifests. A unit
whose worker keeps failing becomes failure rows; the rest of the build completes.
"""

from __future__ import annotations

import os

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NONE as NO_CACHE
from prefect.client.orchestration import get_client
from prefect.futures import as_completed
from prefect_ray import RayTaskRunner
from prefect_ray.context import remote_options

from data_specs.config import BuildConfig, ExecutionConfig
from data_specs.units import UnitReport, WorkUnit
from tasks.base import build_stages
from tasks.manifests import BuildSummary, publish_manifests, unit_failure_rows
from tasks.sources import list_videos, plan_units
from tasks.unit import OutputLayout, is_complete, read_report, run_unit


@task(name="process-unit", cache_policy=NO_CACHE, persist_result=False)
def process_unit(unit: WorkUnit, config: BuildConfig) -> UnitReport:
    """One unit of work on one Ray worker (see `tasks.unit.run_unit`)."""
    return run_unit(unit, config, build_stages(config.stages))


@flow(name="process-units", log_prints=True)
def process_units(units: list[WorkUnit], config: BuildConfig) -> tuple[list[UnitReport], list[dict]]:
    """Run units on Ray, updating a progress artifact as each one ends.

    Returns the reports of the units that completed and failure rows for those that did not.
    """
    logger = get_run_logger()
    progress = create_progress_artifact(progress=0.0, key="build-dataset-progress",
                                        description=f"Units of work done, of {len(units)}")
    task_with_retries = process_unit.with_options(retries=config.execution.retries, retry_delay_seconds=1)
    # Ray re-runs a task whose worker process died; Prefect retries a task that raised.
    with remote_options(num_cpus=config.execution.cpus_per_unit, max_retries=config.execution.retries):
        futures = {task_with_retries.submit(unit, config): unit for unit in units}
    reports, failures = [], []
    for finished, future in enumerate(as_completed(list(futures)), start=1):
        unit = futures[future]
        try:
            report = future.result()
        except Exception as err:  # noqa: BLE001 - any worker failure becomes failure rows for its videos
            if config.execution.on_error == "raise":
                raise
            reason = f"unit failed after {config.execution.retries + 1} attempt(s): {type(err).__name__}: {err}"
            logger.error("[%d/%d] unit %s: %s", finished, len(units), unit.unit_id, reason)
            failures += unit_failure_rows(unit, config, reason[:500])
        else:
            reports.append(report)
            logger.info("[%d/%d] unit %s: %d videos, %d samples, %d failures in %.1fs", finished, len(units),
                        unit.unit_id, report.videos, report.samples, sum(report.failures_by_reason.values()),
                        report.seconds)
        update_progress_artifact(progress, progress=100.0 * finished / len(units))
    return reports, failures


@flow(name="build-dataset", log_prints=True)
def build_dataset(config: BuildConfig) -> BuildSummary:
    """Build WebDataset shards and Parquet manifests from the configured videos."""
    logger = get_run_logger()
    # 1. List and plan: cheap, and fails before any work on a missing input.
    videos = list_videos(config.inputs)
    units = plan_units(videos, config)
    layout = OutputLayout(config.output_path)
    todo = [unit for unit in units if not is_complete(layout, unit)]
    logger.info("%d videos in %d units: %d to run, %d unchanged since the last build", len(videos), len(units),
                len(todo), len(units) - len(todo))

    # 2. Run the units that changed, on Ray.
    reports, failures = [], []
    if todo:
        runner = process_units.with_options(task_runner=ray_task_runner(config.execution))
        reports, failures = runner(todo, config)
    done_ids = {report.unit_id for report in reports}
    for unit in units:
        if unit.unit_id not in done_ids and is_complete(layout, unit):
            reports.append(read_report(layout, unit.unit_id).model_copy(update={"skipped": True}))

    # 3. Publish the manifests and tell people what happened.
    summary = publish_manifests(config, reports, failures)
    _publish_artifacts(summary)
    logger.info("shards: %s\nmanifests: %s", layout.shards, layout.manifests)
    return summary


def ray_task_runner(execution: ExecutionConfig) -> RayTaskRunner:
    """A `RayTaskRunner` whose workers report to this flow's Prefect API.

    Workers are separate processes: without the API URL each would start its own
    temporary Prefect server, so it is handed over in the Ray runtime environment.
    """
    with get_client(sync_client=True) as client:
        api_url = str(client.api_url)
    env_vars = {"PREFECT_API_URL": api_url}
    if "PYTHONPATH" in os.environ:
        env_vars["PYTHONPATH"] = os.environ["PYTHONPATH"]
    init_kwargs: dict = {"runtime_env": {"env_vars": env_vars}}
    if execution.ray_address is None:  # starting a local Ray: size it; a cluster is sized by its own config
        init_kwargs["include_dashboard"] = False
        if execution.local_ray_cpus is not None:
            init_kwargs["num_cpus"] = execution.local_ray_cpus
    return RayTaskRunner(address=execution.ray_address, init_kwargs=init_kwargs)


def _publish_artifacts(summary: BuildSummary) -> None:
    counts = [
        {"what": "units (skipped / failed)", "count": f"{summary.units} ({summary.units_skipped} / {summary.units_failed})"},
        {"what": "videos (failed)", "count": f"{summary.videos} ({summary.videos_failed})"},
        {"what": "clips", "count": str(summary.clips)},
        {"what": "samples", "count": str(summary.samples)},
        {"what": "frames decoded", "count": str(summary.frames)},
        {"what": "shards", "count": f"{summary.shards} ({summary.shard_bytes / 1e6:.1f} MB)"},
    ] + [{"what": f"failed - {reason}", "count": str(count)} for reason, count in summary.failures_by_reason.items()]
    create_table_artifact(key="build-dataset-counts", table=counts, description="Counts and failures by reason")
    failures = "\n".join(f"| {reason} | {count} |" for reason, count in summary.failures_by_reason.items())
    create_markdown_artifact(
        key="build-dataset-summary",
        description="Where the dataset is and what it holds",
        markdown=(
            f"# Dataset build\n\n"
            f"- output: `{summary.output_dir}`\n"
            f"- {summary.samples} samples from {summary.videos - summary.videos_failed} of {summary.videos} videos, "
            f"in {summary.shards} shards ({summary.shard_bytes / 1e6:.1f} MB)\n"
            f"- units: {summary.units} ({summary.units_skipped} unchanged and skipped, {summary.units_failed} failed)\n"
            f"- config hash `{summary.config_hash}`, code version `{summary.code_version}`\n\n"
            + (f"## Failures by reason\n\n| reason | count |\n|---|---|\n{failures}\n" if failures else "No failures.\n")
        ),
    )
