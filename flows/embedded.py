"""The embedded default, started side by side: Prefect's temporary API server and a local Ray.

With no `PREFECT_API_URL`, the first Prefect call starts a temporary API server in a
subprocess (several seconds); `ray.init` starts Ray's processes (several more). Done
one after the other, as a flow run would, the two dominate a small build. The CLI
enters `embedded_services` before it calls the flow: the server starts in a background
thread while Ray starts on the main thread (Ray must be initialised there), and the
flow then finds both running. On the way out both are stopped side by side.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from data_specs.spec import RayConfig
from flows.ray_runtime import ray_session, reachable_address


def _temporary_prefect_server():
    """The temporary API server Prefect's client will use in this process, or None with an API configured."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return None
    from prefect.server.api.server import SubprocessASGIServer

    return SubprocessASGIServer()  # a per-process singleton: the client finds this same instance


def _drain_prefect_queues() -> None:
    """Send the logs and events Prefect still holds, while the server can take them (else its
    workers retry against a stopped server for a minute at exit)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        worker.drain_all(timeout=5)


@contextlib.contextmanager
def embedded_services(execution: RayConfig) -> Iterator[None]:
    """A running temporary Prefect server (when no API is configured) and Ray, for the block."""
    reachable_address(execution)  # an unreachable cluster fails in seconds, before the server starts
    server = _temporary_prefect_server()
    if server is None:
        with ray_session(execution):
            yield
        return
    starting = threading.Thread(target=server.start, daemon=True)
    starting.start()
    stopping: threading.Thread | None = None
    try:
        with ray_session(execution):
            starting.join()
            try:
                yield
            finally:  # the server stops while Ray shuts down, once Prefect has sent what it queued
                _drain_prefect_queues()
                stopping = threading.Thread(target=server.stop)
                stopping.start()
    finally:
        starting.join()
        if stopping is not None:
            stopping.join()
        else:
            server.stop()
