"""`durian demo`: the main job on the embedded default."""

from __future__ import annotations

import csv
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
# Cross-transfer triplets (A, B and the exact truth of A wearing B's attribute) built into the dataset, all in the
# group that demo_build.yaml's `split.eval_groups` holds out: the evaluation scores them against the truth. Few:
# each costs three videos of build time.
DEMO_TRIPLETS = 1
TRIPLET_GROUP = "triplets"
VIDEO_LIST = "videos.csv"


def triplet_seed(count: int, first: int) -> int:
    """The first seed from `first` on whose `count` triplets' A all wear the attribute they borrow: only such a
    triplet backs an evaluation clip (an A without the attribute has no clip of it to regenerate)."""
    from tasks.synthetic import plan_triplets

    return next(seed for seed in range(first, first + 1000)
                if all(spec.attribute in spec.attributes_a for spec in plan_triplets(count, seed)))


def write_video_list(video_dir: Path, out: Path) -> Path:
    """A build input (CSV: path, group) listing every video under `video_dir` as a folder listing would; the
    videos of `video_dir/triplets` get the group `TRIPLET_GROUP`, the others none (split by content)."""
    from data_specs.config import InputsConfig
    from tasks.sources import list_videos

    triplets = (video_dir / "triplets").resolve()
    rows = [(ref.uri, TRIPLET_GROUP if Path(ref.uri).parent == triplets else "")
            for ref in list_videos(InputsConfig(source=str(video_dir)))]
    with out.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([("path", "group"), *rows])
    return out


@app.command("demo")
def demo(
    workdir: Annotated[Path, typer.Option(help="Folder for the demo's videos and outputs.")] = Path("out/demo"),
    videos: Annotated[int, typer.Option(min=1, help="Synthetic videos to generate.")] = 12,
    fresh: Annotated[bool, typer.Option(help="Delete the work folder first.")] = False,
) -> None:
    """The main job on the embedded default: synthetic videos (with broken ones mixed in, and a held-out
    cross-transfer triplet) -> build-dataset on a local Ray under an ephemeral Prefect (perception, then training
    pairs) -> inspect, verify, preview, card -> train-durian (2 Ray Train workers, stage 1 then stage 2, validation
    on held-out videos) -> a sample video from the trained pipeline -> evaluate-durian on the evaluation split (the
    triplet's cross item against its exact truth)."""
    if fresh and workdir.exists():
        shutil.rmtree(workdir)
    from tasks.synthetic import write_triplets

    video_dir = workdir / "videos"
    make_videos(video_dir, count=videos, seed=0, frames=48, size=256, fps=24.0, edge_cases=True, styled=True)
    write_triplets(video_dir / "triplets", DEMO_TRIPLETS, seed=triplet_seed(DEMO_TRIPLETS, first=videos),
                   num_frames=48, width=256, height=256, fps=24.0)
    build_dataset_command(config=DEMO_CONFIGS / "demo_build.yaml",
                          input_source=str(write_video_list(video_dir, workdir / VIDEO_LIST)),
                          output=workdir / "dataset", overrides=[])
    inspect_command(workdir / "dataset", verify=True, preview=6, preview_to=workdir / "preview.png")
    from training.tiny_world import tiny_world

    init = tiny_world(workdir / "dataset", steps=DEMO_VAE_STEPS)
    # Training: 2 Ray Train workers (gloo), stage 1 then stage 2 of the tiny model, from the tiny world.
    train_command(config=DEMO_CONFIGS / "demo_train.yaml", dataset=workdir / "dataset", output=workdir / "runs",
                  overrides=[f"init_from={init}"])
    pipeline = workdir / "runs" / "demo" / "pipeline"
    evaluation = read_yaml(DEMO_CONFIGS / "demo_evaluate.yaml")  # the sample takes the evaluation's guidance
    # The trained pipeline animates one video's portrait with its own hair, in windows of its trained clip length
    # (stage 2's 4 frames), consecutive windows sharing 2 frames.
    sample(out=workdir / "sample.mp4", model=pipeline, from_truth=video_dir / "portrait_0000.mp4", frames=12,
           steps=4, size=64, fps=12.0, overlap=2, guidance_scale=evaluation["guidance_scale"])
    # Evaluation on the videos the split held out (pixel metrics: no extractor weights in the demo), the triplets'
    # cross items against their exact truth. Clips are taken per attribute by video id, each held-out video's first
    # clip before any second one: as many clips as held-out videos put the triplet's A among them.
    from training.data import DatasetIndex

    held_out = len(DatasetIndex.open(workdir / "dataset").validation)
    evaluate_command(config=DEMO_CONFIGS / "demo_evaluate.yaml", model=pipeline, dataset=workdir / "dataset",
                     output=workdir / "evaluation", overrides=[f"triplets={video_dir / 'triplets'}",
                                                               f"max_clips_per_attribute={max(held_out, 1)}"])
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
               f"  eval:    {workdir / 'evaluation'} (summary.md, clips.parquet, grid.mp4; the triplet's hair "
               "against its exact truth, generated / portrait copy: README, 'Reading the demo's figures')")
