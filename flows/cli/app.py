"""The `durian` Typer application: commands live beside it, one module per area, and register themselves."""

from __future__ import annotations

import os

import typer

# The embedded Prefect server would try to phone home, and log an error on machines without internet.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

app = typer.Typer(
    help="Durian: portrait videos -> WebDataset shards -> a dual-reference video diffusion model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def fail(message: str) -> None:
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


