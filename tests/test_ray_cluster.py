"""Where a build runs: always its own local Ray without an address; a cluster, across its nodes, with one."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from flows.reaper import RUN_TOKEN_VAR, reap

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SMALL = ["--set", "decode.fps=12", "--set", "decode.size=64", "--set", "clips.length=4", "--set", "clips.stride=4"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def durian(*args: str, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def cli_env(tmp_path: Path, **extra: str) -> dict:
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PYTHONPATH": str(REPO), **extra}
    env.pop("PREFECT_API_URL", None)
    return env


@pytest.mark.slow
def test_no_address_starts_its_own_ray_despite_a_stale_cluster_file_and_ray_address(video_library: Path,
                                                                                   tmp_path: Path):
    """A crashed cluster leaves `ray_current_cluster` behind; ray.init() would wait on it forever."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))  # short: Ray's socket paths have a length limit
    (ray_tmp / "ray").mkdir()
    dead = f"127.0.0.1:{free_port()}"
    (ray_tmp / "ray" / "ray_current_cluster").write_text(dead)
    env = cli_env(tmp_path, RAY_TMPDIR=str(ray_tmp), RAY_ADDRESS=dead)
    done = durian("build-dataset", "-i", str(video_library / "good"), "-o", str(tmp_path / "out"), *SMALL,
                  env=env, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout[done.stdout.index("{"):done.stdout.rindex("}") + 1])
    assert summary["samples"] == 15


def test_an_unreachable_cluster_is_a_clear_error_within_the_timeout(video_library: Path, tmp_path: Path):
    dead = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    done = durian("build-dataset", "-i", str(video_library / "good"), "-o", str(tmp_path / "out"), "--set",
                  f"execution.ray_address={dead}", "--set", "execution.ray_connect_timeout_s=3",
                  env=cli_env(tmp_path), timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"execution.ray_address='{dead}': the Ray cluster at" in done.stderr and "unreachable" in done.stderr
    assert "Traceback" not in done.stderr
    assert time.monotonic() - started < 60


def test_auto_naming_a_crashed_cluster_is_a_clear_error(tmp_path: Path):
    """'auto' follows `ray_current_cluster` (even while other Ray instances run on the machine, as this
    suite's own does); a crashed cluster's stale file must not mean waiting forever."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))
    (ray_tmp / "ray").mkdir()
    dead = f"127.0.0.1:{free_port()}"
    (ray_tmp / "ray" / "ray_current_cluster").write_text(dead)
    code = ("from data_specs.config import ExecutionConfig; from flows.ray_runtime import connect, RayUnavailableError\n"
            "try:\n    connect(ExecutionConfig(ray_address='auto', ray_connect_timeout_s=3))\n"
            "except RayUnavailableError as err:\n    print('ERROR', err)")
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp)}
    env.pop("RAY_ADDRESS", None)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert "ERROR execution.ray_address='auto'" in done.stdout and "unreachable" in done.stdout, done.stderr
    assert time.monotonic() - started < 60
    (ray_tmp / "ray" / "ray_current_cluster").unlink()
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert "no Ray cluster recorded on this machine" in done.stdout, done.stderr


@dataclass
class Cluster:
    """A head and a second node on this machine (one CPU each), joined with the head's auth token."""

    address: str
    env: dict  # RAY_AUTH_MODE, RAY_AUTH_TOKEN_PATH, RAY_TMPDIR, the run token: what a driver of it needs

    def auth(self) -> dict:
        return {k: self.env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")}


@pytest.fixture(scope="module")
def two_node_cluster(tmp_path_factory: pytest.TempPathFactory):
    """The README's cluster steps on one machine: a head, a second node joining with the head's token."""
    home = tmp_path_factory.mktemp("cluster")
    token = uuid.uuid4().hex  # tags every process of this cluster, so that exactly those are stopped
    token_file = home / "auth_token"
    ray_tmp = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))  # short: Ray's socket paths have a length limit
    env = {**os.environ, RUN_TOKEN_VAR: token, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file),
           "RAY_TMPDIR": str(ray_tmp), "PYTHONPATH": str(REPO)}
    port = free_port()
    try:
        # `ray get-auth-token --generate` writes ~/.ray/auth_token (HOME is the test's here) and prints it.
        generate_env = {**env, "HOME": str(home)}
        generate_env.pop("RAY_AUTH_TOKEN_PATH")
        token_file.write_text(subprocess.run([str(BIN / "ray"), "get-auth-token", "--generate"], env=generate_env,
                                             capture_output=True, text=True, check=True).stdout.strip())
        for args in (["--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false"],
                     [f"--address=127.0.0.1:{port}", "--num-cpus=1"]):
            started = subprocess.run([str(BIN / "ray"), "start", *args, "--disable-usage-stats"], env=env,
                                     capture_output=True, text=True, timeout=180)
            assert started.returncode == 0, started.stdout + started.stderr
        yield Cluster(f"127.0.0.1:{port}", env)
    finally:
        reap(token)
        shutil.rmtree(ray_tmp, ignore_errors=True)  # the nodes' session folders (logs, sockets)


@pytest.mark.slow
def test_a_two_node_cluster_runs_units_on_both_nodes(two_node_cluster: Cluster, video_library: Path,
                                                    tmp_path: Path):
    done = durian("build-dataset", "-i", str(video_library / "good"), "-o", str(tmp_path / "out"), *SMALL,
                  "--set", f"execution.ray_address={two_node_cluster.address}", "--set",
                  "execution.videos_per_unit=1",
                  "--set", 'processors=[{"target": "tests.processors:Slow", "params": {"seconds": 0.3}}]',
                  env=cli_env(tmp_path, **two_node_cluster.auth()))
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout[done.stdout.index("{"):done.stdout.rindex("}") + 1])
    assert summary["samples"] == 15
    assert len(summary["units_per_node"]) == 2, summary["units_per_node"]


# A driver on the cluster: joins it, trains, and prints where Ray placed the Ray Train workers (the GCS actor
# table keeps finished actors; Ray's state API would need the dashboard the head runs without).
TRAIN_DRIVER = """
import json, sys
import ray
from ray._private.state import actors
from data_specs.config import ExecutionConfig
from data_specs.training import load_train_config
from flows.ray_runtime import connect
from training.ray_train import launch

connect(ExecutionConfig(ray_address=sys.argv[1]))
job = ray.get_runtime_context().get_job_id()
result = launch(load_train_config(json.loads(sys.argv[2])))
workers = [a for a in actors().values() if a["ActorClassName"] == "RayTrainWorker" and a["JobID"] == job]
print(json.dumps({"step": result.metrics["step"], "worker_nodes": [a["Address"]["NodeID"] for a in workers],
                  "cluster_nodes": [n["NodeID"] for n in ray.nodes() if n["Alive"]]}))
"""


@pytest.mark.slow
def test_training_places_one_ray_train_worker_on_each_node(two_node_cluster: Cluster, tmp_path: Path):
    from tests.training.training_testing import write_pair_dataset
    from training.checkpoints import latest_checkpoint
    from training.monitoring import read_metrics

    dataset = write_pair_dataset(tmp_path / "data", clips=2, size=32, frames=2, pairs_per_clip=1, stages=(1,),
                                 samples_per_shard=1)
    steps = 3
    config = {"name": "cluster", "output_dir": str(tmp_path / "runs"), "flavour": "tiny", "resolution": 32,
              "data": {"dataset": str(dataset), "loader_workers": 0, "shuffle_buffer": 4},
              "stages": [{"stage": 1, "steps": steps}], "checkpoint_every": steps,
              "scaling": {"workers": 2, "cpus_per_worker": 1}}  # a node has 1 CPU: one worker fits on each
    done = subprocess.run([sys.executable, "-c", TRAIN_DRIVER, two_node_cluster.address, json.dumps(config)],
                          cwd=REPO, env=two_node_cluster.env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    report = json.loads(next(line for line in reversed(done.stdout.splitlines()) if line.startswith('{"step"')))
    assert report["step"] == steps
    assert len(report["cluster_nodes"]) == 2, report
    assert len(report["worker_nodes"]) == 2 and set(report["worker_nodes"]) == set(report["cluster_nodes"]), report
    run = tmp_path / "runs" / "cluster"
    assert [r["step"] for r in read_metrics(run) if r["kind"] == "train"] == list(range(1, steps + 1))
    assert latest_checkpoint(run / "checkpoints").name == f"step-{steps:08d}"
    assert (run / "pipeline" / "model_index.json").is_file()
