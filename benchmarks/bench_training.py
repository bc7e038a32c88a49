"""Training throughput on the CPU: the loader against the step it feeds, Ray Train workers, the whole command.

The data is a dataset the real flow makes: generated 256 px videos -> `durian build-dataset` with ground-truth
perception (SIZE px face crops, clips of max(16, FRAMES) frames) and training pairs (2 stage-1 and 2 stage-2
pairs of FRAMES frames per clip). The model is the tiny flavour at SIZE px, randomly initialised; every run
trains stage 1, then stage 2 on FRAMES frames, BATCH samples per worker per step, other settings at defaults.

1. loader and step: samples/s of `training.data.make_loader`, pulled as fast as it gives them, per stage and
   number of loader workers, against the samples/s that `training.loop.train`'s step consumes on this machine
   in the same run: the real loop with its loader swapped for batches already in memory, so only the step is
   timed (the frozen encoders included, as in training), on --threads torch threads: 1 by default, as a Ray
   Train worker with `scaling.cpus_per_worker: 1` runs it (Ray sets OMP_NUM_THREADS to a worker's CPUs).
   Issue 10's goal: the loader at least 5x the step.
2. ray: the whole training through `training.ray_train.launch` after `ray.init`, with 1 and 2 gloo workers:
   seconds per step, steps/s and samples/s, and the wall time of `launch`; what the steps do not explain is
   fixed cost (worker start-up, process group, model build, loader start, validation, checkpoints, export).
   Once with Ray Train's controller polling its workers every 2 s (Ray's default) and once every 0.1 s:
   `ray.train.report` waits for the controller to take the previous report, so the loop reports at
   checkpoints only, and the two should match (when it reported every step, a run made one step per poll).
3. command: `durian train` as a user waits for it, the whole process (ephemeral Prefect, a private local Ray,
   the flow), split at two of Prefect's log lines (server starting, flow run beginning) and by the times in
   the run's metrics.jsonl (first and last step logged). After one warm-up run that creates Prefect's database.

Seconds per step are the median interval between consecutive logged steps of a stage (a stage's first step,
with its optimiser and loader start, is left out). Every figure is the median over --repeats; the Ray runs
with 1 and 2 workers take turns.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_training.py [--dataset DIR] [--markdown]
    PYTHONPATH=. .venv/bin/python benchmarks/bench_training.py --size 512 --frames 24 --parts loader  # loader only
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from multiprocessing.reduction import ForkingPickler
from pathlib import Path
from unittest import mock

import cv2
import numpy as np
import ray
import torch
import torch.multiprocessing  # registers the shared-memory pickling of tensors that DataLoader workers use
from report_table import format_table

import training.data
from data_specs.sample import decode_sample
from data_specs.training import StageRun, TrainConfig, load_train_config
from training.data import DatasetIndex, TrainingBatch, _read_shard, collate, make_loader
from training.loop import train
from training.monitoring import read_metrics
from training.ray_train import LocalSession, launch

REPO = Path(__file__).resolve().parent.parent
GOAL = 5.0  # issue 10: the loader gives at least 5x the samples/s the step consumes
# Ray Train's controller polls its workers this often; a worker's `ray.train.report` waits until the controller
# has taken its previous report (a queue of one), so a report per step would cap a run at one step per interval.
POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
# Lines of `durian train`'s output that end its first phases, by the phase they end.
COMMAND_MARKS = {"imports": "prefect - Starting temporary server", "services": "Beginning flow run"}
# The rows of the wall-time table: phase (see `phases`) and what happens in it.
PHASES = [("imports", "process start -> Prefect server starting (imports, config)"),
          ("services", "-> flow run begins (Prefect server and Ray, side by side)"),
          ("first step", "-> first step logged (Ray Train worker group: imports, gloo, model, loader, 1st step)"),
          ("steps", "first -> last step logged"),
          ("end", "last step logged -> end (checkpoint, export, artifacts, shutdown)"),
          ("whole", "**whole**")]


def build_dataset(work: Path, videos: int, size: int, frames: int, env: dict[str, str]) -> Path:
    """A dataset made by the real flow: generated videos -> `durian build-dataset` with perception and pairs."""
    from tasks.synthetic import write_dataset

    write_dataset(work / "videos", count=videos, seed=0, num_frames=48, width=256, height=256, fps=24.0)
    truth = {"backend": "truth"}
    perception = {"detection": truth, "keypoints": truth, "crop": {"size": size},
                  "segmentation": {**truth, "attributes": ["hair", "eyeglasses", "beard", "hat"]}}
    clip = max(16, frames)
    overrides = ["decode.fps=24", "decode.size=256", f"clips.length={clip}", f"clips.stride={clip}",
                 "shards.samples_per_shard=16", "execution.videos_per_unit=2", f"perception={json.dumps(perception)}",
                 f"training_samples={json.dumps({'pairs': {'pairs_per_clip': 2, 'frames': frames}})}"]
    command = [sys.executable, "-m", "flows.cli", "build-dataset", "-i", str(work / "videos"), "-o",
               str(work / "dataset"), *itertools.chain.from_iterable(("--set", item) for item in overrides)]
    subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True)
    return work / "dataset"


def config_data(dataset: Path, output: Path, args: argparse.Namespace, workers: int, steps: int) -> dict:
    """A run's `TrainConfig` as plain data (what `durian train -c` reads): both stages, defaults elsewhere."""
    return {"name": f"bench-{workers}w", "output_dir": str(output), "resolution": args.size,
            "data": {"dataset": str(dataset), "batch_size": args.batch_size},
            "stages": [{"stage": 1, "steps": steps}, {"stage": 2, "steps": steps, "frames": args.frames}],
            "scaling": {"workers": workers}}


def seconds_per_step(run_dir: Path) -> dict[int, float]:
    """Per stage, the median interval between consecutive training steps in the run's metrics.jsonl."""
    stamps = [(r["stage"], r["time"]) for r in read_metrics(run_dir) if r["kind"] == "train"]
    intervals: dict[int, list[float]] = {}
    for (stage, before), (same, after) in itertools.pairwise(stamps):
        if stage == same:
            intervals.setdefault(stage, []).append(after - before)
    return {stage: statistics.median(values) for stage, values in intervals.items()}


def loader_rate(index: DatasetIndex, config: TrainConfig, run: StageRun, workers: int, batches: int) -> float:
    """Samples/s of a fresh rank-0 loader, after 4 batches (worker start, first shards, shuffle buffer)."""
    loader = make_loader(index, config.data.model_copy(update={"loader_workers": workers}), run, seed=config.seed)
    for _ in range(4):
        next(loader)
    started = time.perf_counter()
    for _ in range(batches):
        next(loader)
    return batches * config.data.batch_size / (time.perf_counter() - started)


def step_seconds(config: TrainConfig, batches: dict[int, list[TrainingBatch]]) -> dict[int, float]:
    """Seconds per step of `training.loop.train` in this process, per stage, its loader swapped for `batches`
    (real ones, decoded beforehand) so that no data loading is timed."""
    def in_memory(index: DatasetIndex, data: object, run: StageRun, *args: object, **kwargs: object):
        return itertools.cycle(batches[run.stage])

    with mock.patch.object(training.data, "make_loader", in_memory):
        train(config, LocalSession(config))
    return seconds_per_step(config.run_dir)


def phases(started: float, ended: float, run_dir: Path, marks: Sequence[tuple[str, float]] = ()) -> dict[str, float]:
    """A run's wall time split at `marks` (named times, in order, before the first step) and by its metrics.jsonl
    (until the first step logged, first -> last step logged, last step logged -> end), each phase named by the
    point it ends at; with `whole` and each stage's seconds per step as `stage N`."""
    logged = [r["time"] for r in read_metrics(run_dir) if r["kind"] == "train"]
    split, before = {}, started
    for name, at in [*marks, ("first step", logged[0]), ("steps", logged[-1]), ("end", ended)]:
        split[name], before = at - before, at
    return {**split, "whole": ended - started, **{f"stage {s}": v for s, v in seconds_per_step(run_dir).items()}}


def log_marks(log: Path, started: float) -> list[tuple[str, float]]:
    """When `durian train` printed each of COMMAND_MARKS (Prefect's log lines begin with local HH:MM:SS.mmm)."""
    day = datetime.date.fromtimestamp(started)
    lines = log.read_text(errors="replace").splitlines()
    marks = []
    for name, text in COMMAND_MARKS.items():
        line = next((line for line in lines if text in line), None)
        if line is not None:
            at = datetime.datetime.combine(day, datetime.time.fromisoformat(line[:12]))
            marks.append((name, at.timestamp()))
    return marks


def medians(runs: list[dict[str, float]]) -> dict[str, float]:
    """Key by key, the median over repeated runs (one noisy run on a shared machine moves no figure)."""
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def run_command(config: dict, env: dict[str, str]) -> dict[str, float]:
    """`durian train -c CONFIG` as a subprocess, split by `phases`. The config and the command's output are
    kept in its `output_dir` (command.json, command.log)."""
    output_dir = Path(config["output_dir"])
    output_dir.mkdir(parents=True)
    path = output_dir / "command.json"
    path.write_text(json.dumps(config))  # JSON is YAML
    log = output_dir / "command.log"
    with log.open("w") as output:
        started = time.time()
        done = subprocess.run([sys.executable, "-m", "flows.cli", "train", "-c", str(path)], cwd=REPO, env=env,
                              stdout=output, stderr=subprocess.STDOUT, check=False)
        exited = time.time()
    if done.returncode != 0:
        raise SystemExit(f"durian train failed (exit {done.returncode}), see {log}")
    return phases(started, exited, output_dir / config["name"], log_marks(log, started))


def measure_step(index: DatasetIndex, config: TrainConfig, work: Path, repeats: int) -> dict[int, float]:
    """The in-process step's seconds per step of each stage, median over `repeats` runs, on real batches."""
    no_workers = config.data.model_copy(update={"loader_workers": 0})
    batches = {run.stage: list(itertools.islice(make_loader(index, no_workers, run, seed=config.seed), 4))
               for run in config.stages}
    per_step = [step_seconds(config.model_copy(update={"output_dir": str(work / "step" / str(r))}), batches)
                for r in range(repeats)]
    return {stage: statistics.median(s[stage] for s in per_step) for stage in batches}


def median_seconds(fn: Callable[[object], object], repeats: int, setup: Callable[[], object] = lambda: None
                   ) -> float:
    """Median wall seconds of `fn(setup())` over `repeats` calls, `setup` untimed."""
    times = []
    for _ in range(repeats):
        given = setup()
        started = time.perf_counter()
        fn(given)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def loader_breakdown(index: DatasetIndex, run: StageRun, args: argparse.Namespace) -> list[str]:
    """Where one loader worker's time goes, per sample, on the stage's samples of one shard: read + sha256 +
    untar, `decode_sample` (against the bare OpenCV decode of the same images), `collate` into float tensors,
    and the hand-over to the training process (pickling the batch into shared memory, as a DataLoader worker
    does); a table row."""
    pairs = index.training_pairs(run.stage)
    shard, sha256 = pairs[0].shard, index.shard_sha256[pairs[0].shard]
    keys = {p.key for p in pairs if p.shard == shard}
    raws = _read_shard(index.root, shard, sha256, keys)
    samples = [decode_sample(raw) for raw in raws]
    images = [np.frombuffer(blob, np.uint8) for raw in raws for name, blob in raw.items()
              if name.endswith((".jpg", ".png"))]
    size = args.batch_size
    groups = [samples[i:i + size] for i in range(0, len(samples) - size + 1, size)]

    def collated() -> list[TrainingBatch]:
        return [collate(group, run.frames) for group in groups]

    read, decode, floor, collating = (median_seconds(fn, args.repeats) for fn in (
        lambda _: _read_shard(index.root, shard, sha256, keys),
        lambda _: [decode_sample(raw) for raw in raws],
        lambda _: [cv2.imdecode(image, cv2.IMREAD_UNCHANGED) for image in images],
        lambda _: collated()))
    # Fresh batches each time: pickling moves a tensor's storage into shared memory once, then only passes it.
    handing = median_seconds(lambda batches: [ForkingPickler.dumps(batch) for batch in batches], args.repeats,
                             setup=collated)
    per_sample = [read / len(raws), decode / len(raws), floor / len(raws), collating / (len(groups) * size),
                  handing / (len(groups) * size)]
    total = per_sample[0] + per_sample[1] + per_sample[3] + per_sample[4]
    megabytes = sum(t.numel() * t.element_size() for t in vars(collate(groups[0], run.frames)).values()
                    if isinstance(t, torch.Tensor)) / size / 1e6
    return [f"stage {run.stage}, {run.frames} frame{'s' * (run.frames > 1)}, {args.size} px",
            *(f"{t * 1e3:.1f}" for t in per_sample), f"{megabytes:.1f}", f"{total * 1e3:.1f} -> {1 / total:.1f}"]


def measure_loader(index: DatasetIndex, config: TrainConfig, args: argparse.Namespace,
                   step_s: dict[int, float]) -> None:
    """Part 1: prints the loader's samples/s by stage and loader workers, against the step's when measured, and
    where one loader worker's time goes."""
    workers = [int(w) for w in args.loader_workers.split(",")]
    header = ["samples", "loader workers", "loader samples/s"]
    if step_s:
        header += [f"step in this process ({torch.get_num_threads()} threads), samples/s",
                   f"loader / step (goal {GOAL:g}x)"]
    rows = []
    for run in config.stages:
        for w in workers:
            rate = statistics.median(loader_rate(index, config, run, w, args.loader_batches)
                                     for _ in range(args.repeats))
            row = [f"stage {run.stage}, {run.frames} frame{'s' * (run.frames > 1)}, {args.size} px", str(w),
                   f"{rate:.1f}"]
            if step_s:
                consumed = args.batch_size / step_s[run.stage]
                ratio = rate / consumed
                row += [f"{step_s[run.stage] * 1e3:.0f} ms -> {consumed:.2f}",
                        f"**{ratio:.0f}x** ({'met' if ratio >= GOAL else 'not met'})"]
            rows.append(row)
    print(format_table(header, rows, args.markdown), flush=True)
    rows = [loader_breakdown(index, run, args) for run in config.stages]
    print(format_table(["one loader worker, ms per sample", "read + sha256 + untar", "decode_sample", "(bare OpenCV decode)",
                 "collate", "hand-over (shared memory)", "tensor MB", "sum -> samples/s"], rows, args.markdown),
          flush=True)


def measure_ray(runs: dict[int, TrainConfig], work: Path, args: argparse.Namespace
                ) -> dict[tuple[float, int], dict[str, float]]:
    """Part 2: `launch` after `ray.init` (a local Ray of this machine's CPUs, as the flow starts it), for each
    controller poll interval; the median `phases` by (poll interval, workers)."""
    workers = [int(w) for w in args.ray_workers.split(",")]
    timings: dict[tuple[float, int], list[dict[str, float]]] = {}
    for poll in map(float, args.ray_poll.split(",")):
        # Ray Train's controller reads it in a process of the local Ray started below, which inherits it.
        with mock.patch.dict(os.environ, {POLL_ENV: f"{poll:g}"}):
            ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level="ERROR")
            try:
                for r in range(args.repeats):
                    for w in workers:
                        config = runs[w].model_copy(update={"output_dir": str(work / "ray" / f"{poll:g}" / str(r))})
                        started = time.time()
                        result = launch(config)
                        ended = time.time()
                        if result.error is not None:
                            raise SystemExit(f"Ray Train run with {w} workers failed: {result.error}")
                        timings.setdefault((poll, w), []).append(phases(started, ended, config.run_dir))
            finally:
                ray.shutdown()
    return {key: medians(t) for key, t in timings.items()}


def measure_command(dataset: Path, work: Path, env: dict[str, str], args: argparse.Namespace) -> dict[str, float]:
    """Part 3: the whole `durian train` process, after a warm-up run (Prefect's database); median `phases`."""
    run_command(config_data(dataset, work / "warm-up", args, args.command_workers, 1), env)
    return medians([run_command(config_data(dataset, work / "cli" / str(r), args, args.command_workers,
                                            args.steps), env) for r in range(args.repeats)])


def report_runs(runs: dict[str, tuple[int, dict[str, float]]], step_s: dict[int, float],
                args: argparse.Namespace) -> None:
    """The throughput of every whole run's steps, and where its wall time goes."""
    rows = []
    for label, (workers, timing) in runs.items():
        for stage in (1, 2):
            s = timing[f"stage {stage}"]
            samples = args.batch_size * workers / s
            peer = f"{samples / (args.batch_size / step_s[stage]):.2f}" if stage in step_s else "-"
            rows.append([label, f"stage {stage}", f"{s * 1e3:.0f}", f"{1 / s:.2f}", f"{samples:.2f}", peer])
    print(format_table(["run", "stage", "ms/step", "steps/s", "samples/s", "x the step in this process"], rows,
                args.markdown), flush=True)
    steps = {label: sum(args.steps * timing[f"stage {stage}"] for stage in (1, 2))
             for label, (_, timing) in runs.items()}
    rows = [[text, *(f"{timing[name]:.1f}" if name in timing else "-" for _, timing in runs.values())]
            for name, text in PHASES]
    rows.append([f"{2 * args.steps} steps at the median step times", *(f"{steps[label]:.1f}" for label in runs)])
    rows.append(["**fixed cost** (whole - steps)",
                 *(f"{timing['whole'] - steps[label]:.1f}" for label, (_, timing) in runs.items())])
    print(format_table(["seconds (median)", *runs], rows, args.markdown), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, help="Use this build-dataset output (training pairs at --size px, "
                        "stage-2 samples of at least --frames frames) instead of building one.")
    parser.add_argument("--videos", type=int, default=8, help="Generated videos for the dataset built here.")
    parser.add_argument("--size", type=int, default=64, help="Crop size = training resolution (the tiny "
                        "flavour's: 64).")
    parser.add_argument("--frames", type=int, default=8, help="Stage-2 target frames.")
    parser.add_argument("--batch-size", type=int, default=2, help="Samples per worker per step.")
    parser.add_argument("--steps", type=int, default=12, help="Steps of each stage in every training run.")
    parser.add_argument("--parts", default="loader,step,ray,command", help="Which parts to run (see above; "
                        "`step` is the step of part 1, the peer of the loader and of the Ray runs).")
    parser.add_argument("--loader-workers", default="0,1,2", help="DataLoader worker counts for the loader rate.")
    parser.add_argument("--loader-batches", type=int, default=40, help="Batches timed per loader measurement.")
    parser.add_argument("--ray-workers", default="1,2", help="Ray Train worker counts.")
    parser.add_argument("--ray-poll", default="2,0.1", help=f"Ray Train controller poll intervals for the Ray "
                        f"runs, seconds ({POLL_ENV}; Ray's default: 2).")
    parser.add_argument("--command-workers", type=int, default=2, help="Ray Train workers of `durian train`.")
    parser.add_argument("--threads", type=int, default=1, help="Torch threads of this process (the in-process "
                        "step and loader).")
    parser.add_argument("--repeats", type=int, default=3, help="Repeats of every measurement (medians).")
    parser.add_argument("--markdown", action="store_true", help="Print the tables as Markdown (BENCHMARKS.md).")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    torch.set_num_threads(args.threads)

    work = Path(tempfile.mkdtemp(prefix="durian-bench-training-"))
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_HOME": str(work / "prefect"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("PREFECT_API_URL", None)
    dataset = args.dataset.resolve() if args.dataset else build_dataset(work, args.videos, args.size, args.frames,
                                                                         env)
    index = DatasetIndex.open(dataset)
    counts = {stage: len(index.training_pairs(stage)) for stage in index.stages}
    print(f"work folder {work}; dataset {dataset}: {len(index.shard_sha256)} shards, training pairs by stage "
          f"{counts}, {args.size} px, stage 2 trained on {args.frames} frames; batch {args.batch_size}; torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads in this process, {os.cpu_count()} CPUs",
          flush=True)
    runs = {w: load_train_config(config_data(dataset, work / "runs", args, w, args.steps))
            for w in {1, *map(int, args.ray_workers.split(","))}}
    step_s = measure_step(index, runs[1], work, args.repeats) if "step" in parts else {}
    if "loader" in parts:
        measure_loader(index, runs[1], args, step_s)
    whole: dict[str, tuple[int, dict[str, float]]] = {}
    if "ray" in parts:
        for (poll, w), timing in measure_ray(runs, work, args).items():
            whole[f"`launch`, {w} worker{'s' * (w > 1)}, poll {poll:g} s"] = (w, timing)
    if "command" in parts:
        whole[f"`durian train`, {args.command_workers} workers"] = (
            args.command_workers, measure_command(dataset, work, env, args))
    if whole:
        report_runs(whole, step_s, args)


if __name__ == "__main__":
    main()
