"""One build per output folder: the lock names its holder, a second build waits or refuses, dead holders free it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import asdict
from pathlib import Path

import pytest

from data_specs.config import BuildConfig, ExecutionConfig
from data_specs.layout import OutputLayout
from flows.build_lock import BuildLock, BuildLockedError, LockHolder, _process_start, read_holder
from tasks.manifests import publish_manifests
from tasks.sources import plan_build
from tasks.unit import run_unit
from tests.conftest import small_config

REPO = Path(__file__).resolve().parent.parent
SLOW = [{"target": "tests.processors:Slow", "params": {"seconds": 0.05}}]  # about 1 s for the five videos


def build_in_process(config: BuildConfig) -> None:
    """What the flow does, without Prefect and Ray: plan, run the units that changed, publish."""
    plan = plan_build(config)
    publish_manifests(config, [*plan.done, *(run_unit(unit, config) for unit in plan.todo)], [])


def shard_bytes(output: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted((output / "shards").glob("*.tar"))}


def wait_for(condition, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_second_build_refuses_naming_the_first_or_waits_for_it_and_the_shards_stay_identical(videos: Path,
                                                                                              tmp_path: Path):
    reference = small_config(videos / "good", tmp_path / "reference", processors=SLOW)
    build_in_process(reference)
    config = small_config(videos / "good", tmp_path / "out", processors=SLOW)
    first_done = threading.Event()

    def first_build() -> None:
        with BuildLock(config.output_path, "first-run", config.execution):
            build_in_process(config)
            first_done.set()

    first = threading.Thread(target=first_build)
    first.start()
    lock_file = OutputLayout(config.output_path).lock_file
    wait_for(lock_file.exists)

    with pytest.raises(BuildLockedError) as refused:
        with BuildLock(config.output_path, "second-run", config.execution):
            build_in_process(config)
    message = str(refused.value)
    assert f"flow run first-run (pid {os.getpid()} on {socket.gethostname()}" in message
    assert "execution.lock_wait_s" in message

    # Queued instead (lock_wait_s), the second build starts only once the first has released the folder.
    with BuildLock(config.output_path, "second-run", ExecutionConfig(lock_wait_s=60)):
        assert first_done.is_set() and read_holder(lock_file).flow_run_id == "second-run"
        build_in_process(config)  # every unit unchanged: skipped
    first.join()
    assert not lock_file.exists()
    assert shard_bytes(config.output_path) == shard_bytes(reference.output_path) != {}


def write_holder(lock_file: Path, **fields) -> None:
    now = time.time()
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "pid_started": _process_start(os.getpid()),
              "flow_run_id": "old-run", "started_at": now, "heartbeat_at": now, "token": uuid.uuid4().hex,
              **fields}
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock_file.write_text(json.dumps(holder))


@pytest.mark.parametrize(("holder", "taken"), [
    ({}, False),  # alive, beating: refused
    ({"pid_started": "0"}, True),  # this pid now belongs to another process: its holder is dead
    ({"host": "elsewhere"}, False),  # another host, beating: nothing here can tell it is dead
    ({"host": "elsewhere", "heartbeat_at": time.time() - 3600}, True),  # no heartbeat for an hour
])
def test_a_lock_is_taken_over_only_when_its_holder_is_dead(tmp_path: Path, holder: dict, taken: bool):
    lock_file = OutputLayout(tmp_path).lock_file
    write_holder(lock_file, **holder)
    execution = ExecutionConfig(lock_stale_after_s=600)
    if taken:
        with BuildLock(tmp_path, "new-run", execution):
            assert read_holder(lock_file).flow_run_id == "new-run"
        assert not lock_file.exists()
    else:
        with pytest.raises(BuildLockedError, match="flow run old-run"):
            BuildLock(tmp_path, "new-run", execution).__enter__()
        assert read_holder(lock_file).flow_run_id == "old-run"


def test_the_holder_beats_while_it_holds_the_lock(tmp_path: Path):
    with BuildLock(tmp_path, "run", ExecutionConfig(lock_stale_after_s=5)) as lock:
        first = read_holder(lock.lock_file).heartbeat_at
        wait_for(lambda: read_holder(lock.lock_file).heartbeat_at > first, timeout_s=5)
        assert read_holder(lock.lock_file).token == lock.holder.token


_HOLD = """
import sys, time
from pathlib import Path
from data_specs.config import ExecutionConfig
from flows.build_lock import BuildLock
from flows.reaper import start_reaper
start_reaper()
with BuildLock(Path(sys.argv[1]), "killed-run", ExecutionConfig()):
    Path(sys.argv[2]).touch()
    time.sleep(600)
"""


def test_the_reaper_of_a_killed_run_releases_its_lock(tmp_path: Path):
    holding = tmp_path / "holding"
    process = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path / "out"), str(holding)], cwd=REPO,
                               env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        wait_for(holding.exists)
        lock_file = OutputLayout(tmp_path / "out").lock_file
        assert read_holder(lock_file).pid == process.pid
        os.kill(process.pid, signal.SIGKILL)  # no `finally`, no atexit: only the reaper is left to release it
        process.wait()
        wait_for(lambda: not lock_file.exists(), timeout_s=20)
    finally:
        if process.poll() is None:
            process.kill()


@pytest.mark.usefixtures("prefect_server")
def test_the_flow_refuses_a_folder_another_build_holds(videos: Path, tmp_path: Path):
    from flows.build_dataset import build_dataset

    config = small_config(videos / "good", tmp_path / "out")
    with BuildLock(config.output_path, "nightly", config.execution):
        with pytest.raises(BuildLockedError, match="flow run nightly"):
            build_dataset(config)
    assert not (tmp_path / "out" / "shards").exists()


def test_lock_files_round_trip(tmp_path: Path):
    holder = LockHolder(host="h", pid=1, pid_started="5", flow_run_id=None, started_at=0.0, heartbeat_at=0.0,
                        token="t")
    (tmp_path / "build.lock").write_text(json.dumps(asdict(holder)))
    assert read_holder(tmp_path / "build.lock") == holder
    assert "a build outside Prefect (pid 1 on h" in holder.describe()
