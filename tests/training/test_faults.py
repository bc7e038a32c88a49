"""Faults during training: a Ray Train worker killed mid-run, a corrupt shard in the dataset."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from data_specs.layout import OutputLayout
from data_specs.training import load_train_config
from tests.training.training_testing import write_pair_dataset

STEPS, CHECKPOINT_EVERY, KILL_AFTER = 16, 4, 5  # the kill lands after the step-4 checkpoint, well before the end


def tiny_config(dataset: Path, output: Path, **overrides) -> object:
    return load_train_config({
        "output_dir": str(output), "flavour": "tiny", "resolution": 32, "checkpoint_every": CHECKPOINT_EVERY,
        "data": {"dataset": str(dataset), "loader_workers": 0, "shuffle_buffer": 4},
        "stages": [{"stage": 1, "steps": STEPS}], **overrides})


def logged_steps(run_dir: Path) -> list[int]:
    """Every training step in metrics.jsonl as written, repeats included (a torn last line is skipped)."""
    path = run_dir / "metrics.jsonl"
    steps = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("kind") == "train":
            steps.append(record["step"])
    return steps


def train_workers(job_id: str, since_ms: float, alive: bool) -> list[dict]:
    """This job's Ray Train worker actors started after `since_ms`, from the GCS actor table (Ray's state API
    needs the dashboard, which the local Ray runs without)."""
    from ray._private.state import actors

    return [a for a in actors().values()
            if a["ActorClassName"] == "RayTrainWorker" and a["JobID"] == job_id and a["StartTime"] >= since_ms
            and (a["State"] == "ALIVE") == alive]


def holds_open(pid: int, path: Path) -> bool:
    """Whether process `pid` has `path` open (rank 0 keeps metrics.jsonl open while it trains)."""
    try:
        return any(os.readlink(fd) == str(path.resolve()) for fd in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False


class RankZeroKiller(threading.Thread):
    """SIGKILLs the rank-0 Ray Train worker (found by pid) once metrics.jsonl shows step `after`."""

    def __init__(self, run_dir: Path, job_id: str, since_ms: float, after: int) -> None:
        super().__init__(daemon=True)
        self.run_dir, self.job_id, self.since_ms, self.after = run_dir, job_id, since_ms, after
        self.stop = threading.Event()
        self.killed: int | None = None
        self.steps_seen: list[int] = []

    def run(self) -> None:
        metrics = self.run_dir / "metrics.jsonl"
        while not self.stop.wait(0.05):
            steps = logged_steps(self.run_dir)
            if not steps or max(steps) < self.after:
                continue
            for worker in train_workers(self.job_id, self.since_ms, alive=True):
                if holds_open(worker["Pid"], metrics):
                    self.steps_seen = steps
                    os.kill(worker["Pid"], signal.SIGKILL)
                    self.killed = worker["Pid"]
                    return


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
def test_a_killed_ray_train_worker_resumes_from_the_last_checkpoint_and_finishes(tmp_path: Path):
    import ray

    from training.checkpoints import latest_checkpoint
    from training.monitoring import read_metrics
    from training.ray_train import launch

    dataset = write_pair_dataset(tmp_path / "data", clips=2, size=32, frames=2, pairs_per_clip=1, stages=(1,),
                                 samples_per_shard=1)
    config = tiny_config(dataset, tmp_path / "runs", name="killed", scaling={"workers": 1, "max_failures": 1})
    job_id = ray.get_runtime_context().get_job_id()
    started_ms = time.time() * 1000
    killer = RankZeroKiller(config.run_dir, job_id, started_ms, after=KILL_AFTER)
    killer.start()
    try:
        result = launch(config)
    finally:
        killer.stop.set()
        killer.join()

    assert killer.killed is not None, f"the run ended before a worker could be killed: {logged_steps(config.run_dir)}"
    assert result.error is None and result.metrics["step"] == STEPS, result.metrics
    assert result.checkpoint is not None
    # Two worker groups of one worker (2 ranks are the flow test's): the killed one and the one Ray Train restarted.
    deadline = time.monotonic() + 30  # the controller has stopped the second group; the GCS records it
    while len(workers := train_workers(job_id, started_ms, alive=False)) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(workers) == 2 and killer.killed in {w["Pid"] for w in workers}, workers
    # As written, the log shows the first attempt up to the kill, then the resumed attempt from the step after
    # a checkpoint (not from step 1) to the end.
    steps = logged_steps(config.run_dir)
    restart = next((i for i in range(1, len(steps)) if steps[i] <= steps[i - 1]), None)
    assert restart is not None, steps
    resumed_from = steps[restart] - 1
    assert steps[:restart] == list(range(1, steps[restart - 1] + 1)), steps
    assert steps[restart:] == list(range(resumed_from + 1, STEPS + 1)), steps
    assert resumed_from >= CHECKPOINT_EVERY and resumed_from % CHECKPOINT_EVERY == 0, steps
    assert resumed_from <= max(killer.steps_seen) <= steps[restart - 1] < STEPS, (killer.steps_seen, steps)
    records = [r for r in read_metrics(config.run_dir) if r["kind"] == "train"]
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert all(math.isfinite(r["loss"]) for r in records)
    assert json.loads((latest_checkpoint(config.run_dir / "checkpoints") / "state.json").read_text())["step"] == STEPS
    assert (config.run_dir / "pipeline" / "model_index.json").is_file()


def test_a_corrupt_shard_is_skipped_with_a_warning_and_training_finishes(tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture):
    """The first shard, which the check before launch also reads: skipped there too, and counted in the metrics."""
    from training.data import DatasetIndex
    from training.monitoring import read_metrics
    from training.ray_train import train_locally

    dataset = write_pair_dataset(tmp_path / "data", clips=3, size=32, frames=2, pairs_per_clip=1, stages=(1,),
                                 samples_per_shard=1)
    shards = DatasetIndex.open(dataset).training_shards(1)
    assert len(shards) == 3
    bad = OutputLayout(dataset).shard(shards[0])
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])  # truncated after the dataset was written
    steps = 3
    config = tiny_config(dataset, tmp_path / "runs", stages=[{"stage": 1, "steps": steps}], checkpoint_every=steps)
    assert not config.data.verify_shards
    with caplog.at_level(logging.WARNING, logger="training.data"):
        progress = train_locally(config)

    assert len(progress.losses) == steps and all(math.isfinite(loss) for loss in progress.losses)
    skips = [r for r in caplog.records if r.name == "training.data" and r.levelno == logging.WARNING
             and r.getMessage().startswith(f"skipping shard {shards[0]}")]
    assert skips, [r.getMessage() for r in caplog.records]
    assert "sha256 does not match" in skips[0].getMessage()
    assert not any(r.getMessage().startswith("skipping shard") and shards[0] not in r.getMessage()
                   for r in caplog.records)  # only the damaged one
    records = [r for r in read_metrics(config.run_dir) if r["kind"] == "train"]
    assert records[-1]["skipped_shards"] >= 1  # the count reaches metrics.jsonl and TensorBoard
    assert (config.run_dir / "pipeline" / "model_index.json").is_file()
