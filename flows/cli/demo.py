"""`durian demo`: the main job on the embedded default."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated

import typer

from data_specs.spec import read_yaml
from flows.cli.app import app
from flows.cli.dataset import build_dataset_command, inspect_command, make_videos
from flows.cli.evaluate import evaluate_command
from flows.cli.sample import sample
from flows.cli.train import train_command

# The demo's settings are config files that `durian build-dataset/train/evaluate -c` take as they are.
DEMO_CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# The tiny world: the tiny VAE fitted to the training split's frames (`training.tiny_world`, cached beside the
# dataset), so that what the denoiser learns can be seen.
DEMO_VAE_STEPS = 250


@app.command("demo")
def demo(
    workdir: Annotated[Path, typer.Option(help="Folder for the demo's videos and outputs.")] = Path("out/demo"),
    videos: Annotated[int, typer.Option(min=1, help="Synthetic videos to generate.")] = 12,
    fresh: Annotated[bool, typer.Option(help="Delete the work folder first.")] = False,
) -> None:
    """The main job on the embedded default: synthetic videos (with broken ones mixed in) -> build-dataset on a
    local Ray under an ephemeral Prefect (perception, then training pairs) -> inspect, verify, preview, card ->
    train-durian (2 Ray Train workers, stage 1 then stage 2, validation on held-out videos) -> a sample video from
    the trained pipeline -> evaluate-durian on the evaluation split."""
    if fresh and workdir.exists():
        shutil.rmtree(workdir)
    video_dir = workdir / "videos"
    make_videos(video_dir, count=videos, seed=0, frames=48, size=256, fps=24.0, edge_cases=True, styled=True)
    build_dataset_command(config=DEMO_CONFIGS / "demo_build.yaml", input_source=str(video_dir),
                          output=workdir / "dataset", overrides=[])
    inspect_command(workdir / "dataset", verify=True, preview=6, preview_to=workdir / "preview.png")
    from training.tiny_world import tiny_world

    init = tiny_world(workdir / "dataset", steps=DEMO_VAE_STEPS)
    # Training: 2 Ray Train workers (gloo), stage 1 then stage 2 of the tiny model, from the tiny world.
    train_command(config=DEMO_CONFIGS / "demo_train.yaml", dataset=workdir / "dataset", output=workdir / "runs",
                  overrides=[f"init_from={init}"])
    pipeline = workdir / "runs" / "demo" / "pipeline"
    # The trained pipeline animates one video's portrait with its own hair, in windows of its trained clip length
    # (stage 2's 4 frames), consecutive windows sharing 2 frames.
    sample(out=workdir / "sample.mp4", model=pipeline, from_truth=video_dir / "portrait_0000.mp4", frames=12,
           steps=4, size=64, fps=12.0, overlap=2)
    # Evaluation on the videos the split held out (pixel metrics: no extractor weights in the demo).
    evaluate_command(config=DEMO_CONFIGS / "demo_evaluate.yaml", model=pipeline, dataset=workdir / "dataset",
                     output=workdir / "evaluation")
    steps = " + ".join(str(run["steps"]) for run in read_yaml(DEMO_CONFIGS / "demo_train.yaml")["stages"])
    typer.echo("\nperception in this demo: the generated videos' ground truth (backend 'truth'), not models;"
               " set perception.*.backend and the weight paths in a config to run RetinaFace, Sapiens and BiSeNet.")
    typer.echo(f"the model is the tiny flavour: its VAE fitted to the training videos' frames ({init.parent / 'fit.json'}), "
               f"the rest random-initialised and trained for {steps} steps; the validation table "
               "(runs/demo/metrics.jsonl) has held-out PSNR and the reference-reliance gaps (README, 'Reading the "
               "diagnostics'). Set flavour: sd15 and `pretrained` paths in a training config (README, 'Training') for "
               "the real one.")
    typer.echo(f"\ndemo done.\n  videos:  {video_dir}\n  dataset: {workdir / 'dataset'}\n"
               f"  card:    {workdir / 'dataset' / 'card' / 'README.md'}\n"
               f"  preview: {workdir / 'preview.png'}\n  run:     {workdir / 'runs' / 'demo'} (checkpoints, "
               f"tensorboard, loss.png, samples/)\n  model:   {pipeline}\n  sample:  {workdir / 'sample.mp4'} (tiny model)\n"
               f"  eval:    {workdir / 'evaluation'} (summary.md, clips.parquet, grid.mp4)")
