"""Dataset commands: `make-videos`, `build-dataset`, `inspect`. Each validates its inputs first, then calls a
flow or task."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
import yaml

from data_specs.config import BuildConfig
from data_specs.layout import OutputLayout
from data_specs.spec import ConfigError, load_spec
from flows.cli.app import app, fail


@app.command("make-videos")
def make_videos(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the videos and their .truth.npz ground truth into.")],
    count: Annotated[int, typer.Option(min=1, help="Number of synthetic portrait videos.")] = 8,
    seed: Annotated[int, typer.Option(help="Base seed; the same seed gives the same videos.")] = 0,
    frames: Annotated[int, typer.Option(min=1, help="Frames per video.")] = 48,
    size: Annotated[int, typer.Option(min=32, help="Width and height in pixels.")] = 256,
    fps: Annotated[float, typer.Option(min=1.0, help="Frame rate.")] = 24.0,
    edge_cases: Annotated[bool, typer.Option(help="Also write broken and unusual inputs (empty, truncated, "
                                                  "random bytes, audio-only, one frame, VFR, rotated, huge, odd name).")] = False,
    triplets: Annotated[int, typer.Option(min=0, help="Also write this many cross-transfer triplets into "
                                                      "OUT_DIR/triplets: videos A and B and the exact truth of A "
                                                      "wearing B's attribute (README, 'Evaluation').")] = 0,
    styled: Annotated[bool, typer.Option(help="Each video draws its own attribute colours (as triplets do).")] = False,
) -> None:
    """Write synthetic portrait videos (a moving, turning head with hair, eyeglasses, hat and beard) with ground truth."""
    from tasks.synthetic import write_dataset, write_edge_case_videos, write_triplets

    paths = write_dataset(out_dir, count=count, seed=seed, num_frames=frames, width=size, height=size, fps=fps,
                          styled=styled)
    typer.echo(f"wrote {len(paths)} videos with ground truth to {out_dir}")
    if triplets:
        # Seeds after the videos': a triplet's A and B are videos no dataset of this seed holds.
        specs = write_triplets(out_dir / "triplets", triplets, seed=seed + count, num_frames=frames, width=size,
                               height=size, fps=fps)
        typer.echo(f"wrote {len(specs)} triplets (A, B, truth) to {out_dir / 'triplets'}")
    if edge_cases:
        cases = write_edge_case_videos(out_dir / "edge_cases", seed=seed)
        typer.echo(f"wrote {len(cases)} edge-case inputs to {out_dir / 'edge_cases'}: {', '.join(sorted(cases))}")


def load_build_config(config: Path | None, input_source: str | None, output: Path | None,
                      overrides: list[str]) -> BuildConfig:
    """YAML file (optional), then --input/--output, then --set key=value overrides, validated once."""
    return load_spec(BuildConfig, config, options={"inputs.source": input_source, "output_dir": output},
                     overrides=overrides)


def ray_address_override(ray_address: str | None) -> list[str]:
    """The `--ray-address` option of build-dataset, train and evaluate: a `--set execution.ray_address=...`."""
    return [] if ray_address is None else [f"execution.ray_address={ray_address}"]


@app.command("build-dataset")
def build_dataset_command(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML of data_specs.config.BuildConfig "
                                                                      "(every field has a default; see the README).")] = None,
    input_source: Annotated[str | None, typer.Option("--input", "-i", help="Folder, video file, Parquet/CSV manifest "
                                                                          "or fsspec URL of videos (inputs.source).")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Output folder (output_dir).")] = None,
    overrides: Annotated[list[str] | None, typer.Option("--set", help="Override a field, e.g. --set decode.fps=8 "
                                                                      "--set execution.ray_address=auto.")] = None,
    ray_address: Annotated[str | None, typer.Option(help="Ray cluster ('auto' or HOST:PORT; "
                                                         "execution.ray_address); default: a private local Ray.")] = None,
    show_config: Annotated[bool, typer.Option("--show-config", help="Print the complete validated config as YAML "
                                                                    "and the number of videos found, then exit.")] = False,
) -> None:
    """Run the Prefect flow `build-dataset`: decode and clip videos on Ray, write shards and manifests.

    With a `perception:` section, each clip's main face is cropped and the samples get keypoints, pose
    frames and attribute masks (models in Ray actors, loaded once). Units whose videos, config and code
    are unchanged since the last run are skipped. Without `execution.ray_address` a private local Ray is
    started; everything the command starts is stopped when it ends, even on `kill -9`.
    """
    from tasks.sources import InputError, list_videos

    try:
        cfg = load_build_config(config, input_source, output, [*ray_address_override(ray_address), *(overrides or [])])
        videos = list_videos(cfg.inputs)
    except (ConfigError, InputError) as err:
        fail(str(err))
    if not videos:
        fail(f"no videos found in {cfg.inputs.source} (extensions {', '.join(cfg.inputs.extensions)})")
    if show_config:
        typer.echo(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False).rstrip())
        typer.echo(f"# {len(videos)} videos found; config hash {cfg.output_hash()}")
        return
    from flows.build_dataset import build_dataset
    from flows.build_lock import BuildLockedError
    from flows.embedded import embedded_services
    from flows.ray_runtime import RayUnavailableError
    from flows.ray_units import ModelLoadError

    timeline = {"command_started": time.time()}
    try:
        with embedded_services(cfg.execution):
            timeline["services_ready"] = time.time()
            summary = build_dataset(cfg)
            timeline["flow_returned"] = time.time()
    # Refusals of a config that cannot run here, printed like every other config error: another build holds the
    # folder, Ray is unreachable, or the models and one unit need more than the cluster has (ModelLoadError).
    except (RayUnavailableError, BuildLockedError, ModelLoadError) as err:
        fail(str(err))
    timeline["services_stopped"] = time.time()
    summary.timeline.update(timeline)
    typer.echo(json.dumps(summary.model_dump(), indent=2))
    layout = OutputLayout(cfg.output_path)
    typer.echo(f"shards:    {layout.shards}\nmanifests: {layout.manifests}")


@app.command("inspect")
def inspect_command(
    output_dir: Annotated[Path, typer.Argument(help="A build's output folder.")],
    verify: Annotated[bool, typer.Option(help="Re-hash every shard against the manifest.")] = True,
    preview: Annotated[int, typer.Option(min=0, help="Write a contact sheet PNG of the first N samples (0: none): "
                                         "frames, guidance and masks; for training pairs the references and their "
                                         "masks, targets and guidance frames.")] = 0,
    preview_to: Annotated[Path | None, typer.Option(help="Where the contact sheet goes (default: "
                                                    "OUTPUT_DIR/card/contact_sheet.png).")] = None,
) -> None:
    """Counts per manifest table, failures by reason, and a verify pass over every shard (non-zero exit on mismatch).

    The dataset card (counts per attribute and source, mask-area and face-size distributions, rejections) is in
    OUTPUT_DIR/card/README.md.
    """
    from data_specs.schemas import read_table
    from tasks.manifests import failures_by_reason, table_counts, verify_shards
    from tasks.preview import contact_sheet

    layout = OutputLayout(output_dir)
    if not layout.is_complete_build():
        fail(f"{output_dir} holds no completed build ({layout.manifest('shards')} is missing)")
    typer.echo(f"build: {output_dir}")
    for name, rows in table_counts(output_dir).items():
        typer.echo(f"  {name:<9} {rows:>8} rows")
    reasons = failures_by_reason(output_dir)
    typer.echo("failures by reason:" if reasons else "failures: none")
    for reason, count in reasons:
        typer.echo(f"  {count:>5}  {reason}")
    if verify:
        problems = verify_shards(output_dir)
        for problem in problems:
            typer.secho(f"  BAD {problem.shard}: {problem.problem}", fg=typer.colors.RED)
        if problems:
            raise typer.Exit(code=1)
        typer.secho(f"verified: every shard matches the manifest ({table_counts(output_dir)['shards']} shards)",
                    fg=typer.colors.GREEN)
    if layout.card.joinpath("README.md").is_file():
        typer.echo(f"dataset card: {layout.card / 'README.md'}")
    if preview:
        shards = read_table("shards", layout.manifest("shards")).column("shard").to_pylist()
        sheet = contact_sheet([layout.shard(name) for name in shards], preview_to or layout.card / "contact_sheet.png",
                              max_samples=preview)
        typer.echo(f"preview: {sheet}")


