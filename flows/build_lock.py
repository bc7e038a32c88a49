"""One build per output folder at a time: a lock file that names its holder.

Two builds writing one folder corrupt each other: each one's garbage collection deletes the
other's shards, and both write the same partial-file names. So a build holds `OUTPUT/build.lock`
from planning to the dataset card. The file is created atomically (`O_EXCL`) and says who holds
it: host, pid, Prefect flow run id, start time and a heartbeat, which a thread refreshes while
the build runs. A second build waits up to `execution.lock_wait_s` for it, then refuses with a
message naming the holder.

A lock left behind by a run that died is released, never waited on forever:

- `kill -9` of `durian build-dataset`: its reaper (`flows.reaper`) releases the locks its run
  registered, after killing the run's processes;
- any other death (a Prefect worker's flow process, a lost machine): the lock is stale once its
  holder's process is gone from the same host, or its heartbeat is older than
  `execution.lock_stale_after_s` (another host cannot see the process), and the next build takes it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from data_specs.config import ExecutionConfig
from data_specs.files import write_atomic
from data_specs.layout import OutputLayout
from flows.reaper import RUN_TOKEN_VAR

POLL_S = 0.5


class BuildLockedError(RuntimeError):
    """Another build holds the output folder."""


@dataclass(frozen=True)
class LockHolder:
    """Who holds a build lock, as written in the lock file."""

    host: str
    pid: int
    pid_started: str  # the process's start time (/proc), so a reused pid is not taken for the holder
    flow_run_id: str | None
    started_at: float
    heartbeat_at: float
    token: str  # this acquisition; a release or a heartbeat touches the file only while it still holds it
    run_token: str | None = None  # the CLI run's reaper token, if any

    def describe(self) -> str:
        since = datetime.fromtimestamp(self.started_at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        run = f"flow run {self.flow_run_id}" if self.flow_run_id else "a build outside Prefect"
        return (f"{run} (pid {self.pid} on {self.host}, since {since}, last heartbeat "
                f"{time.time() - self.heartbeat_at:.0f} s ago)")

    def is_stale(self, stale_after_s: float) -> bool:
        """Its process is gone (same host), or it has not beaten for `stale_after_s`."""
        if time.time() - self.heartbeat_at > stale_after_s:
            return True
        return self.host == socket.gethostname() and _process_start(self.pid) != self.pid_started


def read_holder(lock_file: Path) -> LockHolder | None:
    """The holder a lock file names; None when there is no lock (or it vanished while being read)."""
    try:
        return LockHolder(**json.loads(lock_file.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError):
        # Unreadable: a holder that died while writing it. Treated as long dead.
        return LockHolder(host="?", pid=0, pid_started="", flow_run_id=None, started_at=0.0, heartbeat_at=0.0,
                          token="unreadable")


class BuildLock:
    """The lock on one output folder for the duration of a `with` block."""

    def __init__(self, output_dir: Path, flow_run_id: str | None, execution: ExecutionConfig) -> None:
        self.lock_file = OutputLayout(Path(output_dir)).lock_file
        self.flow_run_id = flow_run_id
        self.wait_s = execution.lock_wait_s
        self.stale_after_s = execution.lock_stale_after_s
        self.holder: LockHolder | None = None
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def __enter__(self) -> BuildLock:
        deadline = time.monotonic() + self.wait_s
        while not self._try_acquire():
            other = read_holder(self.lock_file)
            if other is not None and other.is_stale(self.stale_after_s):
                _break(self.lock_file, other)
                continue
            if time.monotonic() >= deadline:
                raise BuildLockedError(
                    f"{self.lock_file.parent} is being built by {other.describe() if other else 'another build'}; "
                    f"one build per output folder at a time. Wait for it, cancel it, or raise "
                    f"execution.lock_wait_s to queue behind it (a dead holder's lock is released after "
                    f"execution.lock_stale_after_s = {self.stale_after_s:g} s, or at once on its own host)")
            time.sleep(POLL_S)
        self._heartbeat = threading.Thread(target=self._beat, name="build-lock-heartbeat", daemon=True)
        self._heartbeat.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        if self._still_mine():
            self.lock_file.unlink(missing_ok=True)
        _unregister(self.lock_file)

    def _try_acquire(self) -> bool:
        now = time.time()
        holder = LockHolder(host=socket.gethostname(), pid=os.getpid(), pid_started=_process_start(os.getpid()),
                            flow_run_id=self.flow_run_id, started_at=now, heartbeat_at=now, token=uuid.uuid4().hex,
                            run_token=os.environ.get(RUN_TOKEN_VAR))
        self.lock_file.parent.mkdir(parents=True, exist_ok=True)
        try:
            descriptor = os.open(self.lock_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(descriptor, "w") as file:
            json.dump(asdict(holder), file)
        self.holder = holder
        _register(self.lock_file)
        return True

    def _beat(self) -> None:
        interval = max(1.0, self.stale_after_s / 10)
        while not self._stop.wait(interval):
            if not self._still_mine():
                return  # taken over as stale (this process stalled for stale_after_s): nothing of ours to refresh
            beat = LockHolder(**{**asdict(self.holder), "heartbeat_at": time.time()})
            write_atomic(self.lock_file, json.dumps(asdict(beat)))

    def _still_mine(self) -> bool:
        current = read_holder(self.lock_file)
        return current is not None and self.holder is not None and current.token == self.holder.token


def _break(lock_file: Path, stale: LockHolder) -> None:
    """Remove a stale lock, unless someone replaced it in the meantime.

    The lock is first moved aside under a name of its own: of two builds breaking it at once, one
    moves it and the other finds nothing. What was moved is put back if it is not the stale holder.
    """
    aside = lock_file.with_name(f"{lock_file.name}.stale-{uuid.uuid4().hex}")
    try:
        os.rename(lock_file, aside)
    except FileNotFoundError:
        return
    moved = read_holder(aside)
    if moved is not None and moved.token != stale.token:
        with contextlib.suppress(OSError):
            os.link(aside, lock_file)  # fails (and the lock stays broken) only if a third build took it since
    aside.unlink(missing_ok=True)


# ---------------------------------------------------------------- the reaper's side


def _registry(run_token: str) -> Path:
    """The list of lock files a CLI run holds, where its reaper finds them."""
    return Path(tempfile.gettempdir()) / f"durian-{run_token}.locks"


def _register(lock_file: Path) -> None:
    if run_token := os.environ.get(RUN_TOKEN_VAR):
        with _registry(run_token).open("a") as registry:
            registry.write(f"{lock_file.resolve()}\n")


def _unregister(lock_file: Path) -> None:
    run_token = os.environ.get(RUN_TOKEN_VAR)
    registry = _registry(run_token) if run_token else None
    if registry is not None and registry.is_file():
        kept = [line for line in registry.read_text().splitlines() if line != str(lock_file.resolve())]
        write_atomic(registry, "".join(f"{line}\n" for line in kept))  # the reaper may read it meanwhile


def release_locks_of(run_token: str) -> list[Path]:
    """Remove the build locks a CLI run still holds (called by its reaper once the run is dead)."""
    registry = _registry(run_token)
    released = []
    if registry.is_file():
        for line in set(registry.read_text().splitlines()):
            lock_file = Path(line)
            holder = read_holder(lock_file)
            if holder is not None and holder.run_token == run_token:
                lock_file.unlink(missing_ok=True)
                released.append(lock_file)
        registry.unlink(missing_ok=True)
    return released


def _process_start(pid: int) -> str:
    """A process's start time (clock ticks since boot, from /proc); '' when there is no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""

