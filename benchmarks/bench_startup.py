"""Fixed cost of `durian build-dataset` as a user waits for it: the whole CLI process, phase by phase.

Runs the real command as a subprocess on a small generated input (by default 4 short
videos, so that the fixed cost dominates) and prints where the wall time goes, from
the process start to its exit, using the timeline the command prints. The fixed cost
is the whole wall time minus the span of the unit work. For reference it also times,
in the same run, the pieces a user cannot avoid: the interpreter, the CLI's imports,
Prefect's temporary server alone and a local `ray.init` alone.

    .venv/bin/python benchmarks/bench_startup.py [--repeats 3] [--videos 4] [--frames 24] [--size 96]
    .venv/bin/python benchmarks/bench_startup.py --repo /path/to/other/checkout   # the same for another version
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PHASES = [  # (label, from, to) over the timeline; "process_started"/"process_exited" are measured here
    ("interpreter + CLI imports + config", "process_started", "command_started"),
    ("Prefect server and Ray (side by side)", "command_started", "services_ready"),
    ("flow run created, build planned", "services_ready", "flow_started"),
    ("Ray ready -> first unit starts", "ray_ready", "first_unit_started"),
    ("unit work (first start -> last end)", "first_unit_started", "last_unit_ended"),
    ("results collected", "last_unit_ended", "units_done"),
    ("manifests and artifacts", "units_done", "published"),
    ("flow run finished", "published", "flow_returned"),
    ("Prefect server and Ray stopped", "flow_returned", "services_stopped"),
    ("process exit", "services_stopped", "process_exited"),
]


def run_cli(repo: Path, videos: Path, output: Path, env: dict) -> dict:
    shutil.rmtree(output, ignore_errors=True)
    command = [sys.executable, "-m", "flows.cli", "build-dataset", "-i", str(videos), "-o", str(output),
               "--set", "decode.fps=12", "--set", "decode.size=64", "--set", "clips.length=4",
               "--set", "clips.stride=4"]
    started = time.time()
    done = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True)
    exited = time.time()
    if done.returncode != 0:
        raise SystemExit(f"build-dataset failed:\n{done.stderr[-3000:]}")
    summary = json.loads(done.stdout[done.stdout.index("{"):done.stdout.rindex("}") + 1])
    return {"process_started": started, "process_exited": exited, **summary.get("timeline", {})}


def timed_python(code: str, env: dict, repo: Path) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=repo, env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parent.parent,
                        help="Checkout whose `flows.cli` is timed (default: this one).")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--goal", type=float, default=8.0, help="Fixed-cost goal in seconds.")
    args = parser.parse_args()

    from tasks.synthetic import write_dataset

    work = Path(tempfile.mkdtemp(prefix="durian-startup-"))
    write_dataset(work / "videos", count=args.videos, seed=0, num_frames=args.frames, width=args.size,
                  height=args.size)
    env = {**os.environ, "PYTHONPATH": str(args.repo), "PREFECT_HOME": str(work / "prefect"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    run_cli(args.repo, work / "videos", work / "out", env)  # warm-up: creates the Prefect database once

    runs = [run_cli(args.repo, work / "videos", work / "out", env) for _ in range(args.repeats)]
    print(f"`durian build-dataset` on {args.videos} videos x {args.frames} frames ({args.size}px), "
          f"{args.repeats} runs after one warm-up, repo {args.repo}; median seconds:")
    for label, start, end in PHASES:
        spans = [run[end] - run[start] for run in runs if start in run and end in run]
        if spans:
            print(f"  {label:<42} {statistics.median(spans):6.2f}")
    wall = statistics.median(run["process_exited"] - run["process_started"] for run in runs)
    work_span = statistics.median(run.get("last_unit_ended", 0) - run.get("first_unit_started", 0) for run in runs)
    fixed = wall - work_span
    print(f"  {'whole process':<42} {wall:6.2f}\n  {'fixed cost (whole - unit work)':<42} {fixed:6.2f}  "
          f"= {fixed / args.goal:.2f} x the {args.goal:g} s goal")

    print("peers, timed alone in this run (seconds):")
    peers = {
        "python -c pass": "pass",
        "import flows.cli": "import flows.cli",
        "import flows.build_dataset": "import flows.build_dataset",
        "Prefect temporary server start+stop": ("from prefect.server.api.server import SubprocessASGIServer as S; "
                                                "s = S(); s.start(); s.stop()"),
        "local ray.init + shutdown": ("import ray; ray.init(address='local', include_dashboard=False, "
                                      "logging_level='ERROR'); ray.shutdown()"),
    }
    for label, code in peers.items():
        print(f"  {label:<42} {timed_python(code, {**env, 'RAY_USAGE_STATS_ENABLED': '0'}, args.repo):6.2f}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
