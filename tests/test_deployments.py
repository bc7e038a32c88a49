"""prefect.yaml declares deployments that point at real flows with valid parameters."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import pytest
import yaml

from data_specs.config import parse_config
from flows.reaper import RUN_TOKEN_VAR, reap

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
    # Never two builds at once (two runs on one output folder would delete each other's shards).
    from prefect.cli.deploy._models import DeploymentConfig

    assert DeploymentConfig.model_validate(deployment).concurrency_limit.limit == 1


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(port: int) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


BIN = Path(sys.executable).parent


@dataclass
class PrefectSetup:
    """A `prefect server start`, the `durian` process work pool and `prefect deploy --all` done, as users do."""

    api_url: str
    env: dict

    def prefect(self, *args: str, timeout: float = 300) -> str:
        done = subprocess.run([str(BIN / "prefect"), *args], env=self.env, cwd=REPO, capture_output=True, text=True,
                              timeout=timeout)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def run_deployment(self, name: str, parameters: dict) -> UUID:
        """`prefect deployment run NAME --params JSON`; returns the flow run's id."""
        output = self.prefect("deployment", "run", name, "--params", json.dumps(parameters))
        return UUID(re.search(r"UUID: ([0-9a-f-]{36})", output).group(1))

    def work_once(self, timeout: float = 420) -> str:
        """`prefect worker start --pool durian --run-once`: runs what is due, then exits; its output."""
        worker = subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", "durian", "--run-once"],
                                  env=self.env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  start_new_session=True)
        try:
            output, _ = worker.communicate(timeout=timeout)
        finally:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
        assert worker.returncode == 0, output[-5000:]
        return output


@pytest.fixture(scope="module")
def prefect_setup(tmp_path_factory: pytest.TempPathFactory):
    """One real Prefect server for the deployment tests of this module. Every process started from here (the
    server, workers, their flow runs and those runs' Ray) carries a run token and is killed by pid at the end."""
    home = tmp_path_factory.mktemp("prefect")
    port = _free_port()
    token = uuid.uuid4().hex
    env = {**os.environ, "PREFECT_HOME": str(home / "home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           RUN_TOKEN_VAR: token}
    server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not _healthy(port):
            assert time.monotonic() < deadline, "the Prefect server did not start"
            time.sleep(1)
        setup = PrefectSetup(env["PREFECT_API_URL"], env)
        setup.prefect("work-pool", "create", "durian", "--type", "process")
        assert "successfully created" in setup.prefect("--no-prompt", "deploy", "--all")
        yield setup
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        finally:
            reap(token)  # the server if it would not stop, and anything a flow run left behind


@pytest.mark.slow
def test_deploy_run_and_worker_execute_the_scheduled_flow(prefect_setup: PrefectSetup, video_library: Path,
                                                         tmp_path: Path):
    """The path users take: a Prefect server, `prefect deploy`, `prefect deployment run`, a process worker."""
    output = tmp_path / "dataset"
    config = {"inputs": {"source": str(video_library / "good")}, "output_dir": str(output),
              "decode": {"fps": 12, "size": 64}, "clips": {"length": 4, "stride": 4},
              "execution": {"ray_address": None}}
    prefect_setup.run_deployment("build-dataset/build-dataset", {"config": config})
    worker_log = prefect_setup.work_once()
    assert json.loads((output / "manifests" / "build.json").read_text())["samples"] == 15, worker_log


@pytest.mark.slow
def test_deployed_training_runs_on_the_worker_and_publishes_its_artifacts(prefect_setup: PrefectSetup,
                                                                           tmp_path: Path):
    """`prefect deployment run 'train-durian/train-durian'` with a tiny config, picked up by a process worker."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tests.training.training_testing import write_pair_dataset
    from training.monitoring import read_metrics

    # Three videos, the third in the evaluation split: the run validates on it at its last step.
    dataset = write_pair_dataset(tmp_path / "data", clips=3, size=32, frames=2, pairs_per_clip=1, stages=(1,),
                                 samples_per_shard=1, eval_clips=(2,))
    steps = 2
    config = {"name": "deployed", "output_dir": str(tmp_path / "runs"), "flavour": "tiny", "resolution": 32,
              "data": {"dataset": str(dataset), "loader_workers": 0, "shuffle_buffer": 4},
              "stages": [{"stage": 1, "steps": steps}], "checkpoint_every": steps, "validation_samples": 1,
              "sample_steps": 1, "scaling": {"workers": 1, "cpus_per_worker": 1}}
    flow_run_id = prefect_setup.run_deployment("train-durian/train-durian", {"config": config})
    worker_log = prefect_setup.work_once()

    with temporary_settings(updates={PREFECT_API_URL: prefect_setup.api_url}), get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
        artifacts = {a.key: a for a in client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))}
    assert flow_run.state.is_completed(), (flow_run.state, worker_log[-5000:])
    assert flow_run.deployment_id is not None and flow_run.parameters["config"]["name"] == "deployed"
    run = tmp_path / "runs" / "deployed"
    assert {"train-durian-progress", "train-durian-losses", "train-durian-validation", "train-durian-loss-plot",
            "train-durian-pipeline", "train-durian-sample-video", "train-durian-summary"} <= set(artifacts), \
        sorted(artifacts)
    assert artifacts["train-durian-progress"].type == "progress" and artifacts["train-durian-progress"].data == 100
    records = read_metrics(run)
    assert [r["step"] for r in records if r["kind"] == "train"] == list(range(1, steps + 1))
    table = json.loads(artifacts["train-durian-losses"].data)
    assert artifacts["train-durian-losses"].type == "table" and [row["step"] for row in table] == ["1", "2"]
    (validation,) = [r for r in records if r["kind"] == "validation"]
    assert validation["step"] == steps and Path(validation["video"]).is_file()
    for key, path in (("train-durian-pipeline", run / "pipeline"), ("train-durian-sample-video", validation["video"])):
        assert artifacts[key].type == "markdown" and f"]({Path(path).resolve().as_uri()})" in artifacts[key].data
    assert (run / "pipeline" / "model_index.json").is_file()
    assert f"steps: {steps} (stage 1: {steps})" in artifacts["train-durian-summary"].data
    assert "data:image/png;base64," in artifacts["train-durian-loss-plot"].data


def test_train_durian_deployment_is_valid():
    from prefect.flows import load_flow_from_entrypoint

    from data_specs.training import load_train_config

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    deployment = next(d for d in spec["deployments"] if d["name"] == "train-durian")
    flow = load_flow_from_entrypoint(str(REPO / deployment["entrypoint"]))
    assert flow.name == "train-durian"
    config = load_train_config(deployment["parameters"]["config"])
    assert [run.stage for run in config.stages] == [1, 2] and config.scaling.use_gpu
    assert config.execution.ray_address == "auto" and config.pretrained.sd15 == "/models/stable-diffusion-v1-5"
    flow.validate_parameters(deployment["parameters"])
