"""`durian demo`: the main job on the embedded default."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Annotated

import typer

from flows.cli.app import app
from flows.cli.dataset import build_dataset_command, inspect_command, make_videos
from flows.cli.evaluate import evaluate_command
from flows.cli.sample import sample
from flows.cli.train import train_command


# Small enough for a laptop in a few minutes: 12 fps, 128 px, 8-frame clips, 4 videos per unit; 64 px face crops,
# the tiny model's size.
# Perception reads the generated videos' ground truth (no weights needed): see the README for real models.
DEMO_PERCEPTION = {"detection": {"backend": "truth"}, "keypoints": {"backend": "truth"}, "crop": {"size": 64},
                   "segmentation": {"backend": "truth", "attributes": ["hair", "eyeglasses", "beard", "hat"]}}
# Per clip 2 stage-1 pairs and 2 stage-2 pairs of 4 frames, references from the clip's scene at least half a
# second from the targets (the videos last 2 s); masks grown by random dilation, references augmented with
# reflected borders (no model needed; `expansion.mode: generate` and `fill: inpaint` take one).
DEMO_TRAINING_SAMPLES = {"pairs": {"pairs_per_clip": 2, "frames": 4, "min_ref_distance": 3,
                                   "references": {"min_gap_s": 0.5, "candidates": 12}}}
DEMO_TRAINING = ["name=demo", "stages=[{stage: 1, steps: 6}, {stage: 2, steps: 3, frames: 4}]",
                 "scaling.workers=2", "checkpoint_every=3", "optim.learning_rate=1e-4"]
DEMO_OVERRIDES = ["decode.fps=12", "decode.size=128", "clips.length=8", "clips.stride=8",
                  "shards.samples_per_shard=32", "execution.videos_per_unit=4",
                  # A fifth of the videos (3 of 12, by their contents' hashes) held out for validation and evaluation.
                  "split.eval_fraction=0.2", "split.seed=1",
                  f"perception={json.dumps(DEMO_PERCEPTION)}", f"training_samples={json.dumps(DEMO_TRAINING_SAMPLES)}"]


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
    make_videos(video_dir, count=videos, seed=0, frames=48, size=256, fps=24.0, edge_cases=True)
    build_dataset_command(config=None, input_source=str(video_dir), output=workdir / "dataset",
                          overrides=DEMO_OVERRIDES)
    inspect_command(workdir / "dataset", verify=True, preview=6, preview_to=workdir / "preview.png")
    # Training: 2 Ray Train workers (gloo), stage 1 then stage 2, a few steps of the tiny model.
    train_command(dataset=workdir / "dataset", output=workdir / "runs", overrides=DEMO_TRAINING)
    pipeline = workdir / "runs" / "demo" / "pipeline"
    # The trained (barely: a few steps) pipeline animates one video's portrait with its own hair.
    sample(out=workdir / "sample.mp4", model=pipeline, from_truth=video_dir / "portrait_0000.mp4", frames=24,
           steps=4, size=64, fps=12.0)
    # Evaluation on the videos the split held out (pixel metrics: no extractor weights in the demo).
    evaluate_command(model=pipeline, dataset=workdir / "dataset", output=workdir / "evaluation",
                     overrides=["steps=4", "max_clips_per_attribute=2"])
    typer.echo("\nperception in this demo: the generated videos' ground truth (backend 'truth'), not models;"
               " set perception.*.backend and the weight paths in a config to run RetinaFace, Sapiens and BiSeNet.")
    typer.echo("the model is the tiny flavour, random-initialised and trained for 9 steps: its video shows that the "
               "code path runs, not a result; set flavour: sd15 and `pretrained` paths in a training config "
               "(README, 'Training') for the real one.")
    typer.echo(f"\ndemo done.\n  videos:  {video_dir}\n  dataset: {workdir / 'dataset'}\n"
               f"  card:    {workdir / 'dataset' / 'card' / 'README.md'}\n"
               f"  preview: {workdir / 'preview.png'}\n  run:     {workdir / 'runs' / 'demo'} (checkpoints, "
               f"tensorboard, loss.png, samples/)\n  model:   {pipeline}\n  sample:  {workdir / 'sample.mp4'} (tiny model)\n"
               f"  eval:    {workdir / 'evaluation'} (summary.md, clips.parquet, grid.mp4)")
