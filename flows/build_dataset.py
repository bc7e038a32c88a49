"""The Prefect flow `build-dataset`: videos -> units of work on Ray -> shards and manifests.

The flow only wires tasks. It plans (in the flow process), runs every unit that is
not already complete as a Ray task, publishes the manifests and reports to Prefect
(logs, a progress artifact, a table and a summary).

Ray executes; Prefect orchestrates and shows. Units are plain Ray tasks rather than
Prefect tasks on prefect-ray's `RayTaskRunner`: a Ray worker then imports only the
data path (no Prefect client, no second retry layer), which removes seconds of
start-up per worker, and retries live in one place: Ray re-runs a unit whose worker
died or raised `retries` times. A bad video is data, not a failure: it becomes a
failure row inside the unit and is never retried. A unit that fails on every attempt
becomes failure rows for its videos; the rest of the build completes.
"""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from data_specs.config import BuildConfig
from data_specs.layout import BuildSummary, OutputLayout
from flows.artifacts import (
    build_counts_table,
    build_rejections_table,
    build_summary_markdown,
    image_markdown,
    inline_images,
)
from flows.build_lock import BuildLock
from flows.ray_runtime import ray_session
from flows.ray_units import model_actors, run_units
from tasks.build_processors import build_processors, model_specs


@flow(name="build-dataset", log_prints=True)
def build_dataset(config: BuildConfig) -> BuildSummary:
    """Build WebDataset shards and Parquet manifests from the configured videos.

    One build per output folder at a time (`flows.build_lock`): a second run on the same folder
    waits `execution.lock_wait_s`, then refuses, naming the first.
    """
    from prefect.runtime import flow_run

    with BuildLock(config.output_path, flow_run.id, config.execution):
        return _build(config)


def _build(config: BuildConfig) -> BuildSummary:
    from tasks.card import write_dataset_card
    from tasks.manifests import publish_manifests
    from tasks.preview import contact_sheet
    from tasks.sources import plan_build

    logger = get_run_logger()
    timeline = {"flow_started": time.time()}
    # 1. List and plan: cheap, and fails before any work on a missing input.
    plan = plan_build(config)
    logger.info("%d units: %d to run, %d unchanged since the last build", len(plan.units), len(plan.todo),
                len(plan.done))

    # 2. Run the units that changed on Ray, with the models their processors call in actors set up once.
    reports, failures, per_node = list(plan.done), [], {}
    if plan.todo:
        with ray_session(config.execution):
            timeline["ray_ready"] = time.time()
            with model_actors(model_specs(build_processors(config)), config) as models:
                timeline["models_ready"] = time.time()
                ran, failures, per_node = run_units(plan.todo, config, models)
            reports += ran
            timeline["units_done"] = time.time()

    # 3. Publish the manifests and tell people what happened.
    summary = publish_manifests(config, reports, failures, timeline, per_node)
    _publish_artifacts(summary)
    summary.timeline["published"] = time.time()
    layout = OutputLayout(config.output_path)
    logger.info("shards: %s\nmanifests: %s", layout.shards, layout.manifests)

    # 4. A look at the data: the dataset card and a contact sheet, on disk and in the UI.
    card = write_dataset_card(config.output_path)
    shards = sorted(shard for report in reports for shard in report.shards)
    sheet = contact_sheet([layout.shard(s) for s in shards], layout.card / "contact_sheet.png", max_samples=6) \
        if summary.samples else None
    _publish_card(card.markdown, layout.card, sheet)
    logger.info("dataset card: %s", card.markdown_path)
    return summary


def _publish_card(markdown: str, folder: Path, sheet: Path | None) -> None:
    create_markdown_artifact(key="build-dataset-card", markdown=inline_images(markdown, folder),
                             description=f"Dataset card ({folder / 'README.md'})")
    if sheet is not None:
        create_markdown_artifact(
            key="build-dataset-preview", description=f"Contact sheet of the first samples ({sheet})",
            markdown=image_markdown("Contact sheet", sheet))


def _publish_artifacts(summary: BuildSummary) -> None:
    create_table_artifact(key="build-dataset-counts", table=build_counts_table(summary),
                          description="Counts and failures by reason")
    create_table_artifact(
        key="build-dataset-rejections", table=build_rejections_table(summary),
        description="Where videos or clips failed (a step of the unit or a clip processor), how many, and why")
    create_markdown_artifact(key="build-dataset-summary", description="Where the dataset is and what it holds",
                             markdown=build_summary_markdown(summary))
