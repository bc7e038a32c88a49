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
# The tiny world: the tiny VAE fitted to the training split's frames (`training.tiny_world`, cached beside the
# dataset), so that what the denoiser learns can be seen; then as many stage-1 steps as keep the main job within
# about 10 minutes on 2 cores (BENCHMARKS.md, "Learning in the tiny world"), and a few stage-2 steps.
DEMO_VAE_STEPS = 250
DEMO_STAGE1_STEPS = 200
DEMO_TRAINING = ["name=demo", f"stages=[{{stage: 1, steps: {DEMO_STAGE1_STEPS}}}, {{stage: 2, steps: 4, frames: 4}}]",
                 "scaling.workers=2", "checkpoint_every=50", "validate_every=100", "optim.learning_rate=1e-3",
                 "data.batch_size=2"]
DEMO_OVERRIDES = ["decode.fps=12", "decode.size=128", "clips.length=8", "clips.stride=8",
                  "shards.samples_per_shard=32", "execution.videos_per_unit=4",
                  # A fifth of the videos (3 of the 12 styled ones, by their contents' hashes) held out for validation
                  # and evaluation: several videos, so that validation's reference swaps and cross transfer run.
                  "split.eval_fraction=0.2", "split.seed=0",
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
    make_videos(video_dir, count=videos, seed=0, frames=48, size=256, fps=24.0, edge_cases=True, styled=True)
    build_dataset_command(config=None, input_source=str(video_dir), output=workdir / "dataset",
                          overrides=DEMO_OVERRIDES)
    inspect_command(workdir / "dataset", verify=True, preview=6, preview_to=workdir / "preview.png")
    from training.tiny_world import tiny_world

    init = tiny_world(workdir / "dataset", steps=DEMO_VAE_STEPS)
    # Training: 2 Ray Train workers (gloo), stage 1 then stage 2 of the tiny model, from the tiny world.
    train_command(dataset=workdir / "dataset", output=workdir / "runs", overrides=[*DEMO_TRAINING, f"init_from={init}"])
    pipeline = workdir / "runs" / "demo" / "pipeline"
    # The trained pipeline animates one video's portrait with its own hair, in windows of its trained clip length
    # (stage 2's 4 frames), consecutive windows sharing 2 frames.
    sample(out=workdir / "sample.mp4", model=pipeline, from_truth=video_dir / "portrait_0000.mp4", frames=12,
           steps=4, size=64, fps=12.0, overlap=2)
    # Evaluation on the videos the split held out (pixel metrics: no extractor weights in the demo).
    evaluate_command(model=pipeline, dataset=workdir / "dataset", output=workdir / "evaluation",
                     overrides=["steps=4", "max_clips_per_attribute=2"])
    typer.echo("\nperception in this demo: the generated videos' ground truth (backend 'truth'), not models;"
               " set perception.*.backend and the weight paths in a config to run RetinaFace, Sapiens and BiSeNet.")
    typer.echo(f"the model is the tiny flavour: its VAE fitted to the training videos' frames ({init.parent / 'fit.json'}), "
               f"the rest random-initialised and trained for {DEMO_STAGE1_STEPS} + 4 steps; the validation table "
               "(runs/demo/metrics.jsonl) has held-out PSNR and the reference-reliance gaps (README, 'Reading the "
               "diagnostics'). Set flavour: sd15 and `pretrained` paths in a training config (README, 'Training') for "
               "the real one.")
    typer.echo(f"\ndemo done.\n  videos:  {video_dir}\n  dataset: {workdir / 'dataset'}\n"
               f"  card:    {workdir / 'dataset' / 'card' / 'README.md'}\n"
               f"  preview: {workdir / 'preview.png'}\n  run:     {workdir / 'runs' / 'demo'} (checkpoints, "
               f"tensorboard, loss.png, samples/)\n  model:   {pipeline}\n  sample:  {workdir / 'sample.mp4'} (tiny model)\n"
               f"  eval:    {workdir / 'evaluation'} (summary.md, clips.parquet, grid.mp4)")
