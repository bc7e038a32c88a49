"""Nothing of a killed run keeps running.

`kill -9` of the CLI gives it no chance to stop what it started: the temporary
Prefect server, Ray's GCS, raylet, agents and workers (which Ray starts in sessions
of their own, so they are re-parented to init rather than killed with their parent).

`start_reaper` starts a small watchdog in a session of its own, holding the read end
of a pipe whose only writer is the CLI. While the CLI runs, the watchdog keeps a list
of the CLI's descendants, found through their parent links in `/proc` and identified
by process id and start time. It also tags the CLI's environment with a run token
that every process started from then on inherits, which catches a process born just
before the end. When the CLI ends, however it ends, the pipe closes and the watchdog
kills every process on its list, their descendants, and every process carrying the
token. Nothing is ever matched by name, so nothing outside this run is touched. Then it
releases the build locks (`flows.build_lock`) the run held, so the next build need not wait
for them to turn stale.
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
POLL_S = 0.5

Process = tuple[int, str]  # (pid, start time): a pid alone may be reused


def start_reaper() -> str:
    """Start the watchdog for this process and tag its future children; returns the run token."""
    token = uuid.uuid4().hex
    read_end, write_end = os.pipe()  # not inheritable: only this process holds the write end
    subprocess.Popen([sys.executable, "-m", "flows.reaper", token, str(os.getpid()), str(read_end)],
                     pass_fds=(read_end,), start_new_session=True, stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(read_end)
    os.environ[RUN_TOKEN_VAR] = token
    return token  # write_end stays open until this process ends


class ProcessTree:
    """The processes of one run: descendants of `roots` and processes whose environment holds `token`."""

    def __init__(self, token: str, roots: tuple[int, ...] = ()) -> None:
        self.needle = f"{RUN_TOKEN_VAR}={token}".encode()
        self.roots = set(roots)
        self.members: set[Process] = set()
        self._tagged: dict[Process, bool] = {}

    def refresh(self) -> set[Process]:
        """Add every live descendant of the roots and of known members, and every tagged process."""
        table = _process_table()
        live = {(pid, started) for pid, (_, started) in table.items()}
        self.members &= live
        for process in live - set(self._tagged):
            self._tagged[process] = self._has_token(process[0])
        self._tagged = {process: tagged for process, tagged in self._tagged.items() if process in live}
        self.members |= {process for process, tagged in self._tagged.items() if tagged}
        parents = self.roots | {pid for pid, _ in self.members}
        while True:
            children = {(pid, started) for pid, (ppid, started) in table.items() if ppid in parents}
            if children <= self.members:
                return self.members
            self.members |= children
            parents |= {pid for pid, _ in children}

    def kill(self, timeout_s: float = 10.0) -> None:
        """SIGKILL every member until none is left alive (or `timeout_s` passes)."""
        deadline = time.monotonic() + timeout_s
        me = os.getpid()
        while (members := {m for m in self.refresh() if m[0] != me}) and time.monotonic() < deadline:
            for pid, _ in members:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)

    def _has_token(self, pid: int) -> bool:
        try:
            return self.needle in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            return False


def reap(token: str) -> None:
    """Kill every process carrying `token` and all their descendants."""
    ProcessTree(token).kill()


def _process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, start time) of every live, non-zombie process."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            table[int(entry.name)] = (int(fields[1]), fields[19])
    return table


def _watch(token: str, cli_pid: int, read_end: int) -> None:
    tree = ProcessTree(token, roots=(cli_pid,))
    os.set_blocking(read_end, False)
    while True:
        tree.refresh()
        try:
            if os.read(read_end, 1) == b"":  # the CLI, the only writer, has ended
                break
        except BlockingIOError:
            pass
        time.sleep(POLL_S)
    tree.roots.clear()  # the CLI's pid may be reused from now on
    tree.kill()
    from flows.build_lock import release_locks_of

    release_locks_of(token)  # the output folders the run was building are free again


if __name__ == "__main__":
    _watch(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
