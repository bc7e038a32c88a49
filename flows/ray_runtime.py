"""Connecting a flow to Ray: a private local Ray, or a cluster reached within a bounded time.

With no address the build starts its own local Ray (`address="local"`), so a stale
`ray_current_cluster` file or a `RAY_ADDRESS` left in the environment never makes it
join (or wait forever for) some other cluster. With an address, the head's GCS port
must answer within `ray_connect_timeout_s`, or the flow stops with an error naming it.

The local Ray runs its dashboard process: Ray's state API lives there, and Ray Train's
placement-group cleaner asks it every few seconds whether the train controller is alive
(without it, each ask logs "Failed to query Ray Train Controller actor state"). Its port is
chosen here and given to every process as RAY_API_SERVER_ADDRESS, so the state API never
has to guess which of several Ray instances on the machine is meant. Ray
Train's preemption watcher, which follows node drains on a cluster, is switched off for
the local Ray through Ray Train's own setting: one machine is never drained, and its
actor logs an error line at start.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import ray

from data_specs.spec import RayConfig

# Ray would otherwise ask about (and, on a fresh machine, try to send) usage statistics.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Ray Train's switch for its preemption watcher (ray.train.v2._internal.constants).
PREEMPTION_WATCHER_SETTING = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"
# Where Ray's state API clients find the dashboard (ray.dashboard.utils.get_address_for_submission_client).
API_SERVER_SETTING = "RAY_API_SERVER_ADDRESS"
LOCALHOST = "127.0.0.1"


class RayUnavailableError(RuntimeError):
    """The configured Ray cluster cannot be reached."""


def resolve_address(address: str) -> str:
    """HOST:PORT of the cluster named by `address`.

    'auto' means RAY_ADDRESS, else the cluster the last `ray start` on this machine recorded
    (`ray_current_cluster` in Ray's temp folder). Unlike Ray's own 'auto', it never falls back to
    whichever Ray processes happen to run on the machine.
    """
    if address != "auto":
        return address
    from ray._common.utils import get_ray_address_file

    if os.environ.get("RAY_ADDRESS", "") not in ("", "auto"):
        return os.environ["RAY_ADDRESS"]
    record = Path(get_ray_address_file(None))
    if not record.is_file() or not record.read_text().strip():
        raise RayUnavailableError("execution.ray_address='auto': no Ray cluster recorded on this machine (no "
                                  f"RAY_ADDRESS and no {record}); run `ray start --address=HEAD:6379` first")
    return record.read_text().strip()


def check_reachable(configured: str, address: str, timeout_s: float) -> None:
    """Fail within `timeout_s` unless something listens on the head's HOST:PORT."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise RayUnavailableError(f"execution.ray_address={configured!r}: {address!r} is not HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise RayUnavailableError(
            f"execution.ray_address={configured!r}: the Ray cluster at {address} is unreachable ({err}); is "
            f"`ray start --head` running there? (gave up after execution.ray_connect_timeout_s={timeout_s:g} s)"
        ) from err


def worker_env() -> dict[str, str]:
    """Environment the Ray workers of a cluster need from this process (the project's import path)."""
    return {name: os.environ[name] for name in ("PYTHONPATH",) if name in os.environ}


def reachable_address(execution: RayConfig) -> str | None:
    """HOST:PORT of the configured cluster once its head answers (None: a private local Ray)."""
    if execution.ray_address is None:
        return None
    address = resolve_address(execution.ray_address)
    check_reachable(execution.ray_address, address, execution.ray_connect_timeout_s)
    return address


def connect(execution: RayConfig) -> bool:
    """Initialise Ray for `execution` in this process, unless it already is; True if this call started it."""
    if ray.is_initialized():
        return False
    address = reachable_address(execution)
    if address is None:
        # A local Ray's workers inherit this process's environment. A runtime_env would make Ray start
        # every worker through its runtime-env agent instead of using the ones it pre-starts (seconds).
        os.environ.setdefault(PREEMPTION_WATCHER_SETTING, "0")
        port = _free_port()
        os.environ[API_SERVER_SETTING] = f"http://{LOCALHOST}:{port}"
        ray.init(address="local", num_cpus=execution.local_ray_cpus, include_dashboard=True,
                 dashboard_host=LOCALHOST, dashboard_port=port, logging_level="WARNING")
    else:
        ray.init(address=address, runtime_env={"env_vars": worker_env()}, logging_level="WARNING")
    return True


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOCALHOST, 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def ray_session(execution: RayConfig) -> Iterator[None]:
    """Ray for the duration of the block; shut down afterwards only if this block started it."""
    started = connect(execution)
    try:
        yield
    finally:
        if started:
            ray.shutdown()
