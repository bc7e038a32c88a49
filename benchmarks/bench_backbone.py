"""Backbone throughput: decode -> resize -> JPEG -> shard, against bare ffmpeg on the same files.

Measured in one run, on the same generated 720p clips:

1. bare decode:     `ffmpeg -threads 1 -i X -f null -`
2. bare same work:  `ffmpeg -threads 1 -i X -vf scale,crop -q:v 2 -f image2 DIR/%05d.jpg`
                    (the same resize, JPEG frames like the shards hold, no framework)
3. pipeline task:   `tasks.unit.run_unit` over every video (probe, hash, decode, clip, JPEG, tar)
4. pipeline flow:   the Prefect flow `build-dataset` on a local Ray with 1, 2, ... workers
                    (`--workers`, ffmpeg held to one thread per worker): once for the whole run
                    (Prefect and Ray start-up included) and once for the unit work alone (first
                    unit start to last unit end).

The scaling curve compares each worker count's unit-work throughput with the core limit:
every core of the machine busy at the pipeline task's CPU cost per frame (`--cores`
cores, default all). Prints frames/s and the ratios; `--markdown` prints tables for
BENCHMARKS.md.

`--colour` also prices the YUV-to-RGB conversion per output frame, the ways it could be
done: the pipeline's exact conversion (`tasks.media.YuvToRgb`, any matrix), OpenCV's I420
one (BT.601 limited only), and ffmpeg's, fused into the scaler or as a second, unscaled
scale filter (CPU of ffmpeg over its YUV-out run of the same graph).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from data_specs.config import BuildConfig, parse_config

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # the temporary server must not phone home
from data_specs.units import WorkUnit
from tasks.media import ColourEncoding, YuvToRgb, find_ffmpeg
from tasks.sources import list_videos
from tasks.synthetic import write_portrait_video
from tasks.unit import run_unit


def make_clips(folder: Path, count: int, seconds: float, fps: float) -> list[Path]:
    """720p synthetic portrait clips, generated once and reused across runs."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"bench_{index:02d}.mp4"
        if not path.exists():
            write_portrait_video(path, seed=index, num_frames=int(seconds * fps), fps=fps, width=1280, height=720)
        paths.append(path)
    return paths


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def bare_decode(ffmpeg: str, videos: list[Path]) -> float:
    return sum(timed([ffmpeg, "-nostdin", "-threads", "1", "-i", str(v), "-f", "null", "-"]) for v in videos)


def bare_same_work(ffmpeg: str, videos: list[Path], size: int, workdir: Path) -> float:
    total = 0.0
    for video in videos:
        out = workdir / video.stem
        out.mkdir(parents=True, exist_ok=True)
        # Same filter graph as the pipeline (short side to `size`, centre crop), JPEG frames out.
        graph = f"scale=w='if(gt(iw,ih),-2,{size})':h='if(gt(iw,ih),{size},-2)',crop={size}:{size}"
        total += timed([ffmpeg, "-nostdin", "-threads", "1", "-filter_threads", "1", "-i", str(video),
                        "-vf", graph, "-q:v", "2", "-f", "image2", str(out / "%05d.jpg")])
        shutil.rmtree(out)
    return total


# BT.709 as the standard prints it (R = Y + 1.5748 Cr, ...), on Y in [0, 1] and Cb, Cr in [-0.5, 0.5].
BT709 = np.array([[1, 0, 1.5748], [1, -0.1873, -0.4681], [1, 1.8556, 0]])


def colour_costs(ffmpeg: str, video: Path, size: int, frames: int) -> dict[str, tuple[float, float, float]]:
    """Each way to turn the decoded `size` x `size` BT.709 frames into RGB (see the module doc): CPU ms per frame,
    and the mean and largest error in levels on the first 10 frames against a float conversion of the same planes."""
    cv2.setNumThreads(1)  # as in a unit
    crop = f"scale=w='if(gt(iw,ih),-2,{size})':h='if(gt(iw,ih),{size},-2)',crop={size}:{size}"

    def run(graph: str, pix_fmt: str, first: int | None = None) -> tuple[float, np.ndarray]:
        """ffmpeg's CPU seconds and output bytes for `graph` (one thread)."""
        limit = ["-frames:v", str(first)] if first else []
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        out = subprocess.run([ffmpeg, "-nostdin", "-threads", "1", "-filter_threads", "1", "-i", str(video), "-vf",
                              graph, *limit, "-pix_fmt", pix_fmt, "-f", "rawvideo", "-"], capture_output=True,
                             check=True).stdout
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        return after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, np.frombuffer(out, np.uint8)

    planes = run(crop, "yuv420p", 10)[1].reshape(10, size * 3 // 2, size)
    luma = (planes[:, :size] - 16.0) / 219
    u, v = planes[:, size:].reshape(10, 2, size // 2, size // 2).transpose(1, 0, 2, 3)
    chroma = [(plane.repeat(2, 1).repeat(2, 2) - 128.0) / 224 for plane in (u, v)]  # each sample over 2x2 pixels
    reference = np.clip(255 * np.stack([luma, *chroma], axis=-1) @ BT709.T, 0, 255)

    def error(rgb: np.ndarray) -> tuple[float, float]:
        difference = np.abs(rgb.reshape(reference.shape) - reference)
        return float(difference.mean()), float(difference.max())

    costs = {}
    for name, convert in (("pipeline YuvToRgb (any matrix)", YuvToRgb(ColourEncoding("bt709", "limited"))),
                          ("OpenCV I420 (BT.601 only)", lambda yuv: cv2.cvtColor(yuv, cv2.COLOR_YUV2RGB_I420))):
        started = time.process_time()
        for _ in range(20):
            converted = [convert(frame) for frame in planes]
        costs[name] = (1000 * (time.process_time() - started) / 200, *error(np.stack(converted)))
    yuv_cpu = min(run(crop, "yuv420p")[0] for _ in range(2))
    for name, graph in (("ffmpeg, in the scaler", crop.replace("',crop", "':in_color_matrix=bt709,crop")),
                        ("ffmpeg, second unscaled scale", f"{crop},scale=in_color_matrix=bt709")):
        cpu = min(run(graph, "rgb24")[0] for _ in range(2))
        costs[name] = (1000 * (cpu - yuv_cpu) / frames, *error(run(graph, "rgb24", 10)[1]))
    return costs


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the ffmpeg processes)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def pipeline_task(config: BuildConfig) -> tuple[float, float]:
    """All videos as one unit, in this process: (wall, CPU) of the task chain without orchestration."""
    unit = WorkUnit(unit_id="bench", fingerprint=f"{time.time_ns():016x}"[-16:],
                    videos=tuple(list_videos(config.inputs)))
    started, cpu = time.perf_counter(), cpu_seconds()
    report = run_unit(unit, config)
    elapsed, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    assert report.samples > 0 and report.videos_failed == 0, report
    return elapsed, cpu


def pipeline_flow(config: BuildConfig) -> tuple[float, float, float]:
    """(whole flow wall time, span of the unit work on the Ray workers, sum of unit times)."""
    from flows.build_dataset import build_dataset

    started = time.perf_counter()
    summary = build_dataset(config)
    elapsed = time.perf_counter() - started
    assert summary.videos_failed == 0 and summary.units_skipped == 0, summary
    return elapsed, summary.work_span_s, summary.work_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=4, help="number of 720p clips (default 4)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each clip (default 10)")
    parser.add_argument("--fps", type=float, default=25.0, help="frame rate of the clips (default 25)")
    parser.add_argument("--size", type=int, default=512, help="output frame size (default 512)")
    parser.add_argument("--cache", type=Path, default=Path("out/bench/videos"), help="where the clips are kept")
    parser.add_argument("--skip-flow", action="store_true", help="skip the Prefect + Ray runs")
    parser.add_argument("--workers", default="1,2", help="Ray worker counts for the scaling curve (default 1,2)")
    parser.add_argument("--cores", type=int, default=os.cpu_count(), help="cores of the core limit (default all)")
    parser.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    parser.add_argument("--colour", action="store_true", help="also price the YUV-to-RGB conversion per frame")
    args = parser.parse_args()

    ffmpeg, _ = find_ffmpeg()
    videos = make_clips(args.cache, args.videos, args.seconds, args.fps)
    frames = args.videos * int(args.seconds * args.fps)
    work = Path(tempfile.mkdtemp(prefix="durian-bench-"))

    def config(name: str, **execution) -> BuildConfig:
        return parse_config({
            "inputs": {"source": str(args.cache)}, "output_dir": str(work / name),
            "decode": {"size": args.size, "threads": 1},
            "clips": {"length": 16, "stride": 16}, "shards": {"samples_per_shard": 64},
            "execution": {"videos_per_unit": 1, **execution},
        })

    task_wall, task_cpu = pipeline_task(config("task"))
    results = {"bare ffmpeg decode": bare_decode(ffmpeg, videos),
               "bare ffmpeg same work": bare_same_work(ffmpeg, videos, args.size, work),
               "pipeline task (run_unit)": task_wall}
    worker_counts = [] if args.skip_flow else [int(w) for w in args.workers.split(",")]
    unit_sums = {}
    for workers in worker_counts:
        flow_s, span_s, unit_sums[workers] = pipeline_flow(config(f"flow{workers}", local_ray_cpus=workers))
        results[f"flow, {workers} Ray worker(s), whole run"] = flow_s
        results[f"flow, {workers} Ray worker(s), unit work"] = span_s
    shutil.rmtree(work)

    decode, same = results["bare ffmpeg decode"], results["bare ffmpeg same work"]
    rows = [(name, seconds, frames / seconds, seconds / decode, seconds / same) for name, seconds in results.items()]
    print(f"{frames} frames of 1280x720 in {args.videos} clips -> {args.size}x{args.size} JPEG")
    print(f"{'run':<32}{'wall s':>9}{'frames/s':>10}{'x decode':>10}{'x same work':>13}")
    for name, seconds, fps, vs_decode, vs_same in rows:
        print(f"{name:<32}{seconds:>9.2f}{fps:>10.1f}{vs_decode:>10.2f}{vs_same:>13.2f}")
    print(f"pipeline task CPU: {task_cpu:.2f} s ({1000 * task_cpu / frames:.2f} ms/frame, ffmpeg included), "
          f"{task_cpu / task_wall:.2f} cores busy on average (decode and encode overlap)")
    # The physical limit: every core busy at the pipeline task's CPU cost per frame.
    limit_fps = args.cores * frames / task_cpu
    curve = []
    for workers, unit_sum in unit_sums.items():
        span = results[f"flow, {workers} Ray worker(s), unit work"]
        fps = frames / span
        overhead = 1 - unit_sum / (workers * span)  # worker time not spent inside a unit
        curve.append((workers, fps, fps / limit_fps, fps / (frames / results["flow, 1 Ray worker(s), unit work"])
                      if 1 in unit_sums else float("nan"), overhead))
        print(f"{workers} worker(s): {fps:.0f} frames/s = {fps / limit_fps:.2f} of the {args.cores}-core limit "
              f"({limit_fps:.0f} frames/s at {1000 * task_cpu / frames:.2f} CPU-ms per frame); workers idle "
              f"outside units {overhead:.0%} of the span; sum of unit times {unit_sum:.2f} s")
    if args.colour:
        per_video = int(args.seconds * args.fps)
        print(f"\nYUV to RGB of {args.size}x{args.size} BT.709 frames (1 thread): CPU ms/frame, mean and max error")
        for name, (ms, mean, largest) in colour_costs(ffmpeg, videos[0], args.size, per_video).items():
            print(f"  {name:<36}{ms:>6.2f}{mean:>8.2f}{largest:>7.1f}")
    if args.markdown:
        print("\n| run | wall s | frames/s | × bare decode | × bare same work |\n|---|---|---|---|---|")
        for name, seconds, fps, vs_decode, vs_same in rows:
            print(f"| {name} | {seconds:.2f} | {fps:.0f} | {vs_decode:.2f} | {vs_same:.2f} |")
        if curve:
            print(f"\n| Ray workers | unit-work frames/s | × {args.cores}-core limit | × 1 worker | "
                  "idle outside units |\n|---|---|---|---|---|")
            for workers, fps, of_limit, speedup, overhead in curve:
                print(f"| {workers} | {fps:.0f} | {of_limit:.2f} | {speedup:.2f} | {overhead:.0%} |")


if __name__ == "__main__":
    main()
