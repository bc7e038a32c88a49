"""The Prefect flow `evaluate-durian`: a saved DurianPipeline measured on a dataset's evaluation split, on Ray.

The flow only wires: it plans in its own process (every refusal happens there, before Ray starts), starts
`execution.workers` Ray actors that each load the pipeline and the extractors once (a GPU each when asked),
hands them chunks of clips through Ray's `ActorPool` (`evaluate_chunks`), summarises, writes the report and
publishes it (`flows.artifacts`): a progress artifact, the per-attribute table beside the paper's figures, and
links to the per-clip table and the video grid.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from data_specs.evaluation import ClipResult, EvalConfig
from flows.artifacts import table_rows
from flows.ray_runtime import ray_session

if TYPE_CHECKING:
    from ray.actor import ActorHandle

    from training.evaluation.plan import EvalItem
    from training.evaluation.report import EvalReport

# A worker whose process dies is restarted once (loading its models again) and its call retried once; a second
# death fails the chunk it held.
WORKER_OPTIONS = {"max_restarts": 1, "max_task_retries": 1}


@flow(name="evaluate-durian", log_prints=True)
def evaluate_durian(config: EvalConfig) -> dict:
    """Generate every evaluation clip (self and cross transfer) on Ray actors and publish the metrics."""
    import ray

    from training.evaluation.plan import plan_evaluation
    from training.evaluation.report import summarise, write_report

    logger = get_run_logger()
    plan = plan_evaluation(config)
    execution = config.execution
    logger.info("%d clips to generate (%s) with %d worker(s)", len(plan.items), ", ".join(plan.attributes),
                execution.workers)
    progress = create_progress_artifact(progress=0.0, key="evaluate-durian-progress",
                                        description=f"Clips generated of {len(plan.items)}")
    chunks = [plan.items[i:i + execution.clips_per_task] for i in range(0, len(plan.items),
                                                                         execution.clips_per_task)]
    with ray_session(execution):
        actor = ray.remote(_EvaluationActor).options(
            num_cpus=execution.cpus_per_worker, num_gpus=execution.gpus_per_worker, **WORKER_OPTIONS)
        workers = [actor.remote(config.model_dump(mode="json"), plan.index)
                   for _ in range(min(execution.workers, len(chunks)))]
        results = evaluate_chunks(workers, chunks, lambda share: update_progress_artifact(progress, 100.0 * share))
    failures = sum(r.row.status != "ok" for r in results)
    if failures:
        logger.warning("%d of %d clips failed (their reasons are in the table)", failures, len(results))
    report = summarise(config, plan, results)
    paths = write_report(config, report)
    _publish(config, report, paths)
    logger.info("evaluation written to %s (%d clips, %d failed)", config.output_dir, len(report.rows), failures)
    return {"output_dir": config.output_dir, "clips": len(report.rows), "failed": failures,
            "per_attribute": report.per_attribute, **{name: str(path) for name, path in paths.items()}}


def evaluate_chunks(workers: list[ActorHandle], chunks: list[list[EvalItem]],
                    on_progress: Callable[[float], object]) -> list[ClipResult]:
    """Every chunk evaluated by Ray's `ActorPool` over `workers` (actors with `evaluate(index, items) -> (index,
    results)`), the next chunk to whichever worker is free; `on_progress(share of chunks settled)` after each.

    A chunk whose call failed (its worker died again after the restart, or could not load its models) becomes
    failure rows naming the error, and so do the chunks still waiting when every worker has failed; the others
    complete. The pool does not say which chunk an error belongs to: each chunk carries its index, and the
    chunks that never came back are the failed ones.
    """
    from ray.exceptions import RayError
    from ray.util import ActorPool

    from training.evaluation.evaluator import failed

    pool, started = ActorPool(workers), set()

    def call(worker: ActorHandle, numbered: tuple[int, list[EvalItem]]) -> object:
        started.add(numbered[0])  # the pool calls this when a worker takes the chunk
        return worker.evaluate.remote(*numbered)

    for numbered in enumerate(chunks):
        pool.submit(call, numbered)
    returned: dict[int, list[ClipResult]] = {}
    errors: list[str] = []
    while pool.has_next():
        try:
            index, results = pool.get_next_unordered()
            returned[index] = results
        except RayError as err:
            errors.append(f"{type(err).__name__}: {str(err).strip().splitlines()[0]}")
        on_progress((len(returned) + len(errors)) / len(chunks))
    error = "; ".join(dict.fromkeys(errors))
    results = []
    for index, chunk in enumerate(chunks):
        if index in returned:
            results += returned[index]
        else:
            reason = (f"evaluation worker failed: {error}" if index in started
                      else f"no evaluation worker left to run it (every worker failed: {error})")
            results += [failed(item, reason) for item in chunk]
    return results


class _EvaluationActor:
    """A Ray actor: one `Evaluator` (pipeline and extractors loaded once)."""

    def __init__(self, config: dict, index: object) -> None:
        from training.evaluation.evaluator import Evaluator

        self.evaluator = Evaluator(EvalConfig.model_validate(config), index)

    def evaluate(self, index: int, items: list[EvalItem]) -> tuple[int, list[ClipResult]]:
        return index, self.evaluator.evaluate(items)


def _publish(config: EvalConfig, report: EvalReport, paths: dict) -> None:
    from training.evaluation.report import summary_markdown

    create_markdown_artifact(key="evaluate-durian-summary", markdown=summary_markdown(config, report),
                             description="Per-attribute metrics beside the paper's published figures")
    create_table_artifact(key="evaluate-durian-per-attribute", description="Per attribute and transfer",
                          table=table_rows(report.per_attribute))
    create_link_artifact(key="evaluate-durian-table", link=paths["table"].resolve().as_uri(),
                         description="Per-clip metrics (Parquet), failures with their reasons")
    if "grid" in paths:
        create_link_artifact(key="evaluate-durian-grid", link=paths["grid"].resolve().as_uri(),
                             description="The worst and best clips by L1, side by side with the real frames")
