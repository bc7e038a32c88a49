"""The `durian` command line: `app` and its commands (dataset, train, evaluate, sample, demo)."""

from __future__ import annotations

import atexit
import os
import sys

from flows.cli import dataset, demo, evaluate, sample, train  # noqa: F401 - importing a command module registers its commands
from flows.cli.app import app

__all__ = ["app", "main"]


def main() -> None:
    """The `durian` command: whatever it starts (Prefect server, Ray) ends with it, even on `kill -9`."""
    from flows.reaper import start_reaper

    start_reaper()
    try:
        app(prog_name="durian")
    except SystemExit as exit_:
        code = exit_.code
    # Run the exit handlers (Ray and Prefect stop there), then leave without the interpreter's module
    # teardown, in which Ray's and Prefect's finalizers spend over a second after all work is done.
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    if isinstance(code, str):
        print(code, file=sys.stderr)
    os._exit(code if isinstance(code, int) else int(code is not None))

