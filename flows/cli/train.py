"""`durian train`: the `train-durian` flow from the command line, on the embedded default or a cluster."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from data_specs.spec import ConfigError, load_spec
from flows.cli.app import app, fail
from flows.cli.dataset import ray_address_override


@app.command("train")
def train_command(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML of data_specs.training.TrainConfig "
                                                                      "(see the README).")] = None,
    dataset: Annotated[Path | None, typer.Option("--dataset", "-d", help="A build-dataset output folder with "
                                                                         "training samples (data.dataset).")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Runs folder (output_dir).")] = None,
    overrides: Annotated[list[str] | None, typer.Option("--set", help="Override a field, e.g. --set "
                                                                      "scaling.workers=2 --set stages='[{stage: 1, steps: 10}]'.")] = None,
    ray_address: Annotated[str | None, typer.Option(help="Ray cluster ('auto' or HOST:PORT; "
                                                         "execution.ray_address); default: a private local Ray.")] = None,
) -> None:
    """Run the Prefect flow `train-durian`: Ray Train workers train stage 1, then stage 2, from the shards.

    Checkpoints go to OUTPUT/NAME/checkpoints (a re-run resumes from the newest), the trained pipeline to
    OUTPUT/NAME/pipeline (`durian sample --model` loads it), TensorBoard logs to OUTPUT/NAME/tensorboard.
    """
    from data_specs.training import TrainConfig
    from flows.embedded import embedded_services
    from flows.ray_runtime import RayUnavailableError
    from flows.train import train_durian

    try:
        train_config = load_spec(TrainConfig, config, options={"data.dataset": dataset, "output_dir": output},
                                 overrides=[*ray_address_override(ray_address), *(overrides or [])])
    except ConfigError as err:
        fail(str(err))
    try:
        with embedded_services(train_config.execution):
            result = train_durian(train_config)
    except (RayUnavailableError, FileNotFoundError, ValueError) as err:
        fail(str(err))
    typer.echo(json.dumps(result, indent=2))
