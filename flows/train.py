"""The Prefect flow `train-durian`: Ray Train workers train Durian from `build-dataset`'s shards.

The flow only wires: it connects to Ray (a private local Ray by default), launches the trainer
(`training.ray_train.launch`), follows its progress from the run's `metrics.jsonl` while it runs
(a progress artifact, and a line in the run's log every `progress_log_every` steps and for each
validation pass), and reports to Prefect at the end: a loss table, a loss plot, and where the
checkpoints, the trained pipeline and the sample videos are.
"""

from __future__ import annotations

import logging
import threading

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from data_specs.training import TrainConfig
from flows.artifacts import image_markdown, table_rows, training_summary_markdown
from flows.ray_runtime import ray_session


@flow(name="train-durian", log_prints=True)
def train_durian(config: TrainConfig) -> dict:
    """Train the configured stages on Ray Train and publish the losses, the plot and the trained pipeline.

    `config.execution.ray_address`: None starts a private local Ray; 'auto' or HOST:PORT joins a cluster.
    """
    from training.monitoring import loss_plot, read_metrics
    from training.ray_train import check_before_launch, launch
    from training.validation import sample_videos

    logger = get_run_logger()
    check_before_launch(config)  # a missing dataset or a misfit config fails here, before any worker
    total = sum(run.steps for run in config.stages)
    progress = create_progress_artifact(progress=0.0, key="train-durian-progress",
                                        description=f"Steps done of {total}")
    stop = threading.Event()
    follower = threading.Thread(target=_follow, args=(config, progress, stop, logger), daemon=True)
    follower.start()
    try:
        with ray_session(config.execution):
            launch(config)  # raises when training fails beyond scaling.max_failures
    finally:
        stop.set()
        follower.join()
    update_progress_artifact(progress, 100.0)

    records = read_metrics(config.run_dir)
    plot = loss_plot(records, config.run_dir / "loss.png")
    steps = [r for r in records if r["kind"] == "train"]
    shown = steps[::max(1, len(steps) // 20)]
    if shown[-1] is not steps[-1]:
        shown.append(steps[-1])
    create_table_artifact(key="train-durian-losses", table=table_rows(shown),
                          description="Loss, learning rate and throughput (every few steps)")
    if validation := [r for r in records if r["kind"] == "validation"]:
        create_table_artifact(key="train-durian-validation", description="Held-out self-reconstruction: L1, PSNR "
                              "(dB) and SSIM against the real frames, and the sample video of each pass",
                              table=table_rows(validation))
    create_markdown_artifact(key="train-durian-loss-plot", description=str(plot),
                             markdown=image_markdown("Training loss", plot))
    pipeline = config.run_dir / "pipeline"
    create_link_artifact(key="train-durian-pipeline", link=pipeline.resolve().as_uri(),
                         description="The trained DurianPipeline (`durian sample --model` loads it)")
    videos = sample_videos(config.run_dir)
    if videos:
        create_link_artifact(key="train-durian-sample-video", link=videos[-1].resolve().as_uri(),
                             description="The last validation video: portrait, attribute, guidance, result, real")
    create_markdown_artifact(key="train-durian-summary", description="Where the run's outputs are",
                             markdown=training_summary_markdown(config, steps[-1]["loss"], pipeline, videos))
    logger.info("trained pipeline: %s", pipeline)
    return {"pipeline": str(pipeline), "steps": total, "final_loss": steps[-1]["loss"],
            "validation": validation[-1] if validation else None}


def _follow(config: TrainConfig, progress, stop: threading.Event, logger: logging.Logger | logging.LoggerAdapter
            ) -> None:
    """Every few seconds, move the progress artifact as `metrics.jsonl` grows and write its new progress lines
    (`progress_lines`) to the run's log."""
    from training.monitoring import read_metrics

    total = sum(run.steps for run in config.stages)
    done, logged = 0, set()
    while not stop.wait(5.0):
        records = read_metrics(config.run_dir)
        for line in progress_lines(records, config, logged):
            logger.info(line)
        steps = sum(r["kind"] == "train" for r in records)
        if steps > done:
            done = steps
            update_progress_artifact(progress, min(100.0, 100.0 * done / total))
    for line in progress_lines(read_metrics(config.run_dir), config, logged):  # what the last seconds added
        logger.info(line)


def progress_lines(records: list[dict], config: TrainConfig, logged: set[tuple]) -> list[str]:
    """Log lines for the `read_metrics` records not in `logged` (which this adds them to): a training step
    every `progress_log_every` steps and each stage's last (stage, step of total, loss, learning rate,
    samples/s, time left at the recent pace), and every validation pass's figures."""
    total = sum(run.steps for run in config.stages)
    stage_ends = {sum(run.steps for run in config.stages[:i + 1]) for i in range(len(config.stages))}
    train = [r for r in records if r.get("kind") == "train"]
    lines = []
    for record in records:
        key = (record.get("kind"), record.get("stage"), record.get("step"))
        if key in logged:
            continue
        step = record.get("step", 0)
        if record.get("kind") == "train":
            if step % config.progress_log_every and step not in stage_ends:
                continue
            logged.add(key)
            lines.append(f"stage {record['stage']}, step {step}/{total}: loss {_number(record.get('loss'))}, "
                         f"lr {_number(record.get('lr'), '.2e')}, "
                         f"{_number(record.get('samples_per_s'), '.2f')} samples/s, "
                         f"{_time_left(record, train, total)} left")
        elif record.get("kind") == "validation":
            logged.add(key)
            figures = ", ".join(f"{name} {_number(record.get(name))}" for name in ("l1", "psnr", "ssim")
                                if name in record)
            lines.append(f"validation at step {step} (stage {record['stage']}): {figures}; video "
                         f"{record.get('video')}")
    return lines


def _number(value: object, spec: str = ".4g") -> str:
    return format(value, spec) if isinstance(value, int | float) else "n/a"


def _time_left(record: dict, train: list[dict], total: int) -> str:
    """At the pace of the last (up to) 50 logged steps before `record` (a restart resets the pace)."""
    earlier = [r for r in train if r["step"] < record["step"] and r.get("time", 0) < record.get("time", 0)]
    if not earlier or "time" not in record:
        return "time unknown"
    since = earlier[-min(len(earlier), 50)]
    seconds = (record["time"] - since["time"]) / (record["step"] - since["step"]) * (total - record["step"])
    hours, rest = divmod(round(seconds), 3600)
    return f"{hours} h {rest // 60:02d} min" if hours else f"{rest // 60} min {rest % 60:02d} s"
