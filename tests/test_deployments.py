"""prefect.yaml declares deployments that point at real flows with valid parameters."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from data_specs.config import parse_config

REPO = Path(__file__).resolve().parent.parent


def test_build_dataset_deployment_is_scheduled_and_valid():
    from prefect.flows import load_flow_from_entrypoint
    from prefect.schedules import Cron

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    deployment = next(d for d in spec["deployments"] if d["name"] == "build-dataset")
    flow = load_flow_from_entrypoint(str(REPO / deployment["entrypoint"]))
    assert flow.name == "build-dataset"
    config = parse_config(deployment["parameters"]["config"])
    assert config.execution.ray_address == "auto"
    (schedule,) = deployment["schedules"]
    Cron(schedule["cron"], timezone=schedule["timezone"])  # raises on a bad cron expression
    # The parameters validate against the flow's own signature, as the Prefect API does.
    flow.validate_parameters(deployment["parameters"])


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_deploy_run_and_worker_execute_the_scheduled_flow(video_library: Path, tmp_path: Path):
    """The path users take: a Prefect server, `prefect deploy`, `prefect deployment run`, a process worker."""
    bin_dir = Path(sys.executable).parent
    port = _free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    server = subprocess.Popen([str(bin_dir / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not _healthy(port):
            assert time.monotonic() < deadline, "the Prefect server did not start"
            time.sleep(1)

        def prefect(*args: str) -> str:
            done = subprocess.run([str(bin_dir / "prefect"), *args], env=env, cwd=REPO, capture_output=True,
                                  text=True, timeout=300)
            assert done.returncode == 0, done.stdout + done.stderr
            return done.stdout

        prefect("work-pool", "create", "durian", "--type", "process")
        assert "successfully created" in prefect("--no-prompt", "deploy", "--all")
        output = tmp_path / "dataset"
        config = {"inputs": {"source": str(video_library / "good")}, "output_dir": str(output),
                  "decode": {"fps": 12, "size": 64}, "clips": {"length": 4, "stride": 4},
                  "execution": {"ray_address": None}}
        prefect("deployment", "run", "build-dataset/build-dataset", "--param", f"config={json.dumps(config)}")
        worker_log = prefect("worker", "start", "--pool", "durian", "--run-once")
        assert json.loads((output / "manifests" / "build.json").read_text())["samples"] == 15, worker_log
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


def _healthy(port: int) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def test_train_durian_deployment_is_valid():
    from prefect.flows import load_flow_from_entrypoint

    from data_specs.training import load_train_config

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    deployment = next(d for d in spec["deployments"] if d["name"] == "train-durian")
    flow = load_flow_from_entrypoint(str(REPO / deployment["entrypoint"]))
    assert flow.name == "train-durian"
    config = load_train_config(deployment["parameters"]["config"])
    assert [run.stage for run in config.stages] == [1, 2] and config.scaling.use_gpu
    flow.validate_parameters(deployment["parameters"])
