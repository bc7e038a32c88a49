"""The Prefect flow `evaluate-durian`: a saved DurianPipeline measured on a dataset's evaluation split, on Ray.

The flow only wires: it plans in its own process (every refusal happens there, before Ray starts), starts
`execution.workers` Ray actors that each load the pipeline and the extractors once (a GPU each when asked),
hands them chunks of clips, summarises, writes the report and publishes it: a progress artifact, the
per-attribute table beside the paper's figures, and links to the per-clip table and the video grid.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from data_specs.evaluation import EvalConfig
from flows.ray_runtime import ray_session


@flow(name="evaluate-durian", log_prints=True)
def evaluate_durian(config: EvalConfig) -> dict:
    """Generate every evaluation clip (self and cross transfer) on Ray actors and publish the metrics."""
    import ray

    from training.evaluation import failed, plan_evaluation, summarise, write_report

    logger = get_run_logger()
    plan = plan_evaluation(config)
    execution = config.execution
    logger.info("%d clips to generate (%s) with %d worker(s)", len(plan.items), ", ".join(plan.attributes),
                execution.workers)
    progress = create_progress_artifact(progress=0.0, key="evaluate-durian-progress",
                                        description=f"Clips generated of {len(plan.items)}")
    chunks = [plan.items[i:i + execution.clips_per_task] for i in range(0, len(plan.items),
                                                                         execution.clips_per_task)]
    results = []
    with ray_session(execution):
        actor = ray.remote(_EvaluationActor).options(
            num_cpus=execution.cpus_per_worker, num_gpus=execution.gpus_per_worker, max_restarts=1,
            max_task_retries=1)
        workers = [actor.remote(config.model_dump(mode="json"), plan.index)
                   for _ in range(min(execution.workers, len(chunks)))]
        waiting, running = list(chunks), {}

        def submit(worker: object) -> None:  # one chunk per worker at a time; the next when it is done
            chunk = waiting.pop(0)
            running[worker.evaluate.remote(chunk)] = (worker, chunk)

        for worker in workers:
            submit(worker)
        while running:
            (done,), _ = ray.wait(list(running), num_returns=1)
            worker, chunk = running.pop(done)
            try:
                results += ray.get(done)
            except ray.exceptions.RayError as err:  # the worker died twice, or could not load: its clips fail
                reason = f"evaluation worker failed: {str(err).splitlines()[0]}"
                logger.warning("%d clips failed: %s", len(chunk), reason)
                results += [failed(item, reason) for item in chunk]
            update_progress_artifact(progress, 100.0 * len(results) / len(plan.items))
            if waiting:
                submit(worker)
    report = summarise(config, plan, results)
    paths = write_report(config, report)
    _publish(config, report, paths)
    failures = sum(r["status"] != "ok" for r in report.rows)
    logger.info("evaluation written to %s (%d clips, %d failed)", config.output_dir, len(report.rows), failures)
    return {"output_dir": config.output_dir, "clips": len(report.rows), "failed": failures,
            "per_attribute": report.per_attribute, **{name: str(path) for name, path in paths.items()}}


class _EvaluationActor:
    """A Ray actor: one `Evaluator` (pipeline and extractors loaded once)."""

    def __init__(self, config: dict, index: object) -> None:
        from training.evaluation import Evaluator

        self.evaluator = Evaluator(EvalConfig.model_validate(config), index)

    def evaluate(self, items: list) -> list:
        return self.evaluator.evaluate(items)


def _publish(config: EvalConfig, report, paths: dict) -> None:
    from training.evaluation import summary_markdown

    create_markdown_artifact(key="evaluate-durian-summary", markdown=summary_markdown(config, report),
                             description="Per-attribute metrics beside the paper's published figures")
    create_table_artifact(key="evaluate-durian-per-attribute", description="Per attribute and transfer",
                          table=[{k: ("" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v))
                                  for k, v in entry.items()} for entry in report.per_attribute])
    create_link_artifact(key="evaluate-durian-table", link=paths["table"].resolve().as_uri(),
                         description="Per-clip metrics (Parquet), failures with their reasons")
    if "grid" in paths:
        create_link_artifact(key="evaluate-durian-grid", link=paths["grid"].resolve().as_uri(),
                             description="The worst and best clips by L1, side by side with the real frames")
