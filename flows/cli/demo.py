"""`durian demo`: the main job on the embedded default."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Annotated

import typer

from flows.cli.app import app
from flows.cli.dataset import build_dataset_command, inspect_command, make_videos
from flows.cli.sample import sample


# Small enough for a laptop in a couple of minutes: 12 fps, 128 px, 8-frame clips, 4 videos per unit.
# Perception reads the generated videos' ground truth (no weights needed): see the README for real models.
DEMO_PERCEPTION = {"detection": {"backend": "truth"}, "keypoints": {"backend": "truth"}, "crop": {"size": 96},
                   "segmentation": {"backend": "truth", "attributes": ["hair", "eyeglasses", "beard", "hat"]}}
# Per clip 2 stage-1 pairs and 2 stage-2 pairs of 4 frames; masks grown by random dilation, references
# augmented with reflected borders (no model needed; `expansion.mode: generate` and `fill: inpaint` take one).
DEMO_TRAINING_SAMPLES = {"pairs": {"pairs_per_clip": 2, "frames": 4, "min_ref_distance": 3}}
DEMO_OVERRIDES = ["decode.fps=12", "decode.size=128", "clips.length=8", "clips.stride=8",
                  "shards.samples_per_shard=32", "execution.videos_per_unit=4",
                  f"perception={json.dumps(DEMO_PERCEPTION)}", f"training_samples={json.dumps(DEMO_TRAINING_SAMPLES)}"]


@app.command("demo")
def demo(
    workdir: Annotated[Path, typer.Option(help="Folder for the demo's videos and outputs.")] = Path("out/demo"),
    videos: Annotated[int, typer.Option(min=1, help="Synthetic videos to generate.")] = 12,
    fresh: Annotated[bool, typer.Option(help="Delete the work folder first.")] = False,
) -> None:
    """The main job on the embedded default: synthetic videos (with broken ones mixed in) -> build-dataset on a
    local Ray under an ephemeral Prefect (perception, then training pairs) -> inspect, verify, preview, card."""
    if fresh and workdir.exists():
        shutil.rmtree(workdir)
    video_dir = workdir / "videos"
    make_videos(video_dir, count=videos, seed=0, frames=48, size=256, fps=24.0, edge_cases=True)
    build_dataset_command(config=None, input_source=str(video_dir), output=workdir / "dataset",
                          overrides=DEMO_OVERRIDES)
    inspect_command(workdir / "dataset", verify=True, preview=6, preview_to=workdir / "preview.png")
    # The model end: the tiny, untrained DurianPipeline animates one video's portrait with its own hair.
    sample(out=workdir / "sample.mp4", from_truth=video_dir / "portrait_0000.mp4", frames=24, steps=4,
           size=64, fps=12.0)
    typer.echo("\nperception in this demo: the generated videos' ground truth (backend 'truth'), not models;"
               " set perception.*.backend and the weight paths in a config to run RetinaFace, Sapiens and BiSeNet.")
    typer.echo(f"\ndemo done.\n  videos:  {video_dir}\n  dataset: {workdir / 'dataset'}\n"
               f"  card:    {workdir / 'dataset' / 'card' / 'README.md'}\n"
               f"  preview: {workdir / 'preview.png'}\n  sample:  {workdir / 'sample.mp4'} (untrained tiny model)")
