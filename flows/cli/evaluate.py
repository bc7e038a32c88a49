"""`durian evaluate`: the `evaluate-durian` flow from the command line, on the embedded default or a cluster."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from data_specs.spec import ConfigError, load_spec
from flows.cli.app import app, fail
from flows.cli.dataset import ray_address_override


@app.command("evaluate")
def evaluate_command(
    model: Annotated[Path | None, typer.Option("--model", "-m", help="A saved DurianPipeline folder (e.g. "
                                                                    "RUN/pipeline of `durian train`).")] = None,
    dataset: Annotated[Path | None, typer.Option("--dataset", "-d", help="A build-dataset output with training "
                                                                         "samples and an evaluation split.")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Folder for clips.parquet, summary.md and "
                                                                       "grid.mp4.")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML of data_specs.evaluation.EvalConfig "
                                                                      "(extractor paths, steps, workers).")] = None,
    overrides: Annotated[list[str] | None, typer.Option("--set", help="Override a field, e.g. --set steps=20 --set "
                                                                      "extractors.inception=/models/inception.pth")] = None,
    ray_address: Annotated[str | None, typer.Option(help="Ray cluster ('auto' or HOST:PORT; "
                                                         "execution.ray_address); default: a private local Ray.")] = None,
) -> None:
    """Run the Prefect flow `evaluate-durian`: reconstruct the evaluation split's clips (self transfer: L1, PSNR,
    SSIM, LPIPS, FID) and transfer attributes across videos (CLIP-I, DINO, ArcFace ID, FVD-style), on Ray. With
    --set triplets=OUT/triplets (of `durian make-videos --triplets`), cross clips of a triplet's A are also scored
    against the exact truth (L1, PSNR, SSIM, LPIPS, whole and in the attribute region, beside the portrait copy's).

    Writes a per-clip Parquet table, a Markdown summary with the per-attribute table beside the paper's published
    figures, and a video grid of the worst and best clips. Metrics whose extractor files are not configured
    (extractors.*) are left out and the summary says so.
    """
    from data_specs.evaluation import EvalConfig
    from flows.embedded import embedded_services
    from flows.evaluate import evaluate_durian
    from flows.ray_runtime import RayUnavailableError

    try:
        eval_config = load_spec(EvalConfig, config, options={"model": model, "dataset": dataset, "output_dir": output},
                                overrides=[*ray_address_override(ray_address), *(overrides or [])])
    except ConfigError as err:
        fail(str(err))
    from training.evaluation.plan import plan_evaluation

    try:
        plan_evaluation(eval_config)  # refusals before any service starts
        with embedded_services(eval_config.execution):
            result = evaluate_durian(eval_config)
    except (RayUnavailableError, FileNotFoundError, ValueError) as err:
        fail(str(err))
    typer.echo(json.dumps({k: v for k, v in result.items() if k != "per_attribute"}, indent=2))
    typer.echo(Path(result["summary"]).read_text(encoding="utf-8"))
