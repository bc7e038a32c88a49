"""`durian train`: the `train-durian` flow from the command line, on the embedded default or a cluster."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from data_specs.config import ConfigError, ExecutionConfig, read_yaml
from flows.cli.app import app, fail
from flows.cli.dataset import _set_dotted, apply_overrides


@app.command("train")
def train_command(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML of data_specs.training.TrainConfig "
                                                                      "(see the README).")] = None,
    dataset: Annotated[Path | None, typer.Option("--dataset", "-d", help="A build-dataset output folder with "
                                                                         "training samples (data.dataset).")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Runs folder (output_dir).")] = None,
    overrides: Annotated[list[str] | None, typer.Option("--set", help="Override a field, e.g. --set "
                                                                      "scaling.workers=2 --set stages='[{stage: 1, steps: 10}]'.")] = None,
    ray_address: Annotated[str | None, typer.Option(help="Ray cluster ('auto' or HOST:PORT); default: a private "
                                                         "local Ray.")] = None,
) -> None:
    """Run the Prefect flow `train-durian`: Ray Train workers train stage 1, then stage 2, from the shards.

    Checkpoints go to OUTPUT/NAME/checkpoints (a re-run resumes from the newest), the trained pipeline to
    OUTPUT/NAME/pipeline (`durian sample --model` loads it), TensorBoard logs to OUTPUT/NAME/tensorboard.
    """
    from data_specs.training import TrainConfigError, load_train_config
    from flows.embedded import embedded_services
    from flows.ray_runtime import RayUnavailableError
    from flows.train import train_durian

    data: dict[str, Any] = read_yaml(config) if config is not None else {}
    if dataset is not None:
        _set_dotted(data, "data.dataset", str(dataset))
    if output is not None:
        data["output_dir"] = str(output)
    try:
        apply_overrides(data, overrides or [])
        train_config = load_train_config(data)
    except (ConfigError, TrainConfigError) as err:
        fail(str(err))
    try:
        with embedded_services(ExecutionConfig(ray_address=ray_address)):
            result = train_durian(train_config, ray_address)
    except (RayUnavailableError, FileNotFoundError, ValueError) as err:
        fail(str(err))
    typer.echo(json.dumps(result, indent=2))
