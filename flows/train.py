"""The Prefect flow `train-durian`: Ray Train workers train Durian from `build-dataset`'s shards.

The flow only wires: it connects to Ray (a private local Ray by default), launches the trainer
(`training.ray_train.launch`), follows its progress from the run's `metrics.jsonl` while it runs,
and reports to Prefect: a progress artifact, a loss table, a loss plot, and where the checkpoints,
the trained pipeline and the sample videos are.
"""

from __future__ import annotations

import threading
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import (create_link_artifact, create_markdown_artifact, create_progress_artifact,
                               create_table_artifact, update_progress_artifact)

from data_specs.config import ExecutionConfig
from data_specs.training import TrainConfig
from flows.artifacts import inline_images
from flows.ray_runtime import ray_session


@flow(name="train-durian", log_prints=True)
def train_durian(config: TrainConfig, ray_address: str | None = None, ray_connect_timeout_s: float = 10.0) -> dict:
    """Train the configured stages on Ray Train and publish the losses, the plot and the trained pipeline.

    ray_address: None starts a private local Ray; 'auto' or HOST:PORT joins a cluster.
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
    follower = threading.Thread(target=_follow, args=(config.run_dir, total, progress, stop), daemon=True)
    follower.start()
    try:
        with ray_session(ExecutionConfig(ray_address=ray_address, ray_connect_timeout_s=ray_connect_timeout_s)):
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
    create_table_artifact(key="train-durian-losses", table=_rows(shown),
                          description="Loss, learning rate and throughput (every few steps)")
    if validation := [r for r in records if r["kind"] == "validation"]:
        create_table_artifact(key="train-durian-validation", description="Held-out self-reconstruction: L1, PSNR "
                              "(dB) and SSIM against the real frames, and the sample video of each pass",
                              table=_rows(validation))
    create_markdown_artifact(key="train-durian-loss-plot", description=str(plot),
                             markdown=inline_images(f"# Training loss\n\n![loss]({plot.name})\n", plot.parent))
    pipeline = config.run_dir / "pipeline"
    create_link_artifact(key="train-durian-pipeline", link=pipeline.resolve().as_uri(),
                         description="The trained DurianPipeline (`durian sample --model` loads it)")
    videos = sample_videos(config.run_dir)
    if videos:
        create_link_artifact(key="train-durian-sample-video", link=videos[-1].resolve().as_uri(),
                             description="The last validation video: portrait, attribute, guidance, result, real")
    create_markdown_artifact(
        key="train-durian-summary", description="Where the run's outputs are",
        markdown=(f"# Training run `{config.name}`\n\n- steps: {total} ({', '.join(f'stage {r.stage}: {r.steps}' for r in config.stages)})"
                  f"\n- final loss: {steps[-1]['loss']:.4f}\n- pipeline: `{pipeline}`\n"
                  f"- checkpoints: `{config.run_dir / 'checkpoints'}`\n- TensorBoard: `{config.run_dir / 'tensorboard'}`\n"
                  + "".join(f"- sample video: `{video}`\n" for video in videos)))
    logger.info("trained pipeline: %s", pipeline)
    return {"pipeline": str(pipeline), "steps": total, "final_loss": steps[-1]["loss"],
            "validation": validation[-1] if validation else None}


def _rows(records: list[dict]) -> list[dict[str, str]]:
    return [{key: f"{value:.4g}" if isinstance(value, float) else str(value) for key, value in record.items()}
            for record in records]


def _follow(run_dir: Path, total: int, progress, stop: threading.Event) -> None:
    """Move the progress artifact as `metrics.jsonl` grows (every few seconds)."""
    from training.monitoring import read_metrics

    done = 0
    while not stop.wait(5.0):
        steps = sum(r["kind"] == "train" for r in read_metrics(run_dir))
        if steps > done:
            done = steps
            update_progress_artifact(progress, min(100.0, 100.0 * done / total))
