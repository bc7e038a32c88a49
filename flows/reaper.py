"""Nothing of a killed run keeps running.

`kill -9` of the CLI gives it no chance to stop what it started: the temporary
Prefect server, Ray's GCS, raylet, agents and workers (some of which Ray starts in
sessions of their own, so they are re-parented to init rather than killed with
their parent). `start_reaper` tags this process's environment with a run token,
which every process started from here on inherits, and starts a small watchdog in a
session of its own that holds the read end of a pipe. When the CLI ends, however it
ends, the pipe closes and the watchdog kills every process still carrying the token.
Processes are found by their inherited environment (`/proc/PID/environ`), never by
name, so nothing outside this run is touched.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

RUN_TOKEN_VAR = "DURIAN_RUN_TOKEN"


def start_reaper() -> str:
    """Tag this process's future children and start the watchdog; returns the run token."""
    token = uuid.uuid4().hex
    os.environ[RUN_TOKEN_VAR] = token
    read_end, write_end = os.pipe()  # not inheritable: only this process holds the write end
    subprocess.Popen([sys.executable, "-m", "flows.reaper", token, str(read_end)], pass_fds=(read_end,),
                     start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, env={k: v for k, v in os.environ.items() if k != RUN_TOKEN_VAR})
    os.close(read_end)
    return token  # write_end stays open until this process ends


def tagged_processes(token: str) -> list[int]:
    """Ids of the live processes whose environment carries `token`."""
    needle = f"{RUN_TOKEN_VAR}={token}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except OSError:  # gone meanwhile, or not ours
            continue
    return pids


def reap(token: str, timeout_s: float = 10.0) -> None:
    """Kill every process carrying `token` until none is left (or `timeout_s` passes)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and (pids := tagged_processes(token)):
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)


def _watch(token: str, read_end: int) -> None:
    while os.read(read_end, 1):  # returns b"" once the CLI (the only writer) has ended
        pass
    reap(token)


if __name__ == "__main__":
    _watch(sys.argv[1], int(sys.argv[2]))
