"""The `durian` command line: `app` and its commands (dataset, sample, demo)."""

from __future__ import annotations

from flows.cli import dataset, demo, sample  # noqa: F401 - importing a command module registers its commands
from flows.cli.app import app

__all__ = ["app", "main"]


def main() -> None:
    """The `durian` command: whatever it starts (Prefect server, Ray) ends with it, even on `kill -9`."""
    from flows.reaper import start_reaper

    start_reaper()
    app(prog_name="durian")

