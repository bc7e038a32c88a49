"""Training samples inside the real `build-dataset` flow (Prefect test server, local Ray, truth perception)."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
import webdataset as wds

from data_specs.config import BuildConfig
from data_specs.layout import BuildSummary
from data_specs.sample import PairSample, decode_sample
from data_specs.schemas import read_table
from data_specs.split import split_of
from tests.conftest import small_config

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server", "local_ray")]
CROP = 48
TRUTH = {"backend": "truth", "runtime": {"device": "cpu", "cpus": 0.25}}
PERCEPTION = {"detection": TRUTH, "crop": {"size": CROP}, "keypoints": TRUTH,
              "segmentation": {**TRUTH, "attributes": ["hair", "eyeglasses", "beard", "hat"]}}
# The videos last a second: references a quarter of a second or more from the targets.
SAMPLES = {"pairs": {"pairs_per_clip": 2, "frames": 3, "min_ref_distance": 2, "references": {"min_gap_s": 0.25}}}
SPLIT = {"eval_fraction": 0.4, "seed": 7}  # 2 of the 5 videos, by the hashes of their (deterministic) contents


@pytest.fixture(scope="module")
def built(video_library: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[BuildConfig, BuildSummary]:
    """The flow's build of the good videos plus one without ground truth; 2 of the 5 are evaluation videos."""
    from flows.build_dataset import build_dataset

    tmp_path = tmp_path_factory.mktemp("samples_flow")
    videos = tmp_path / "videos"
    shutil.copytree(video_library / "good", videos)
    first = sorted(videos.glob("*.mp4"))[0]
    shutil.copy(first, videos / "no_truth.mp4")  # the truth backends know nothing of it: a failure in an actor
    config = small_config(videos, tmp_path / "out", decode={"size": 96}, perception=PERCEPTION,
                          training_samples=SAMPLES, split=SPLIT)
    return config, build_dataset(config)


def test_the_flow_turns_videos_into_training_pairs_and_a_card(built: tuple[BuildConfig, BuildSummary]):
    from prefect.artifacts import Artifact

    config, summary = built
    output = Path(config.output_dir)

    rows = read_table("samples", output / "manifests" / "samples.parquet").to_pylist()
    shards = [output / "shards" / s for s in sorted({row["shard"] for row in rows})]
    samples = [decode_sample(raw) for raw in wds.WebDataset([str(s) for s in shards], shardshuffle=False)]
    # 6 videos x 3 clips x (2 stage-1 + 2 stage-2 pairs), less the recorded failures.
    failures = read_table("failures", output / "manifests" / "failures.parquet").to_pylist()
    assert summary.samples == len(samples) == len(rows) == 4 * (18 - len(failures)) > 0
    no_truth = [row for row in failures if row["item_id"].startswith("no_truth")]
    assert len(no_truth) == 3 and all(row["reason"].startswith("no ground truth beside") for row in no_truth)
    assert not any("Traceback" in row["reason"] or "ray::" in row["reason"] for row in failures)
    for sample in samples:
        assert isinstance(sample, PairSample)
        frames = 1 if sample.meta.training_stage == 1 else 3
        targets = torch.from_numpy(sample.targets).permute(0, 3, 1, 2)
        assert targets.shape == (frames, 3, CROP, CROP) and targets.dtype == torch.uint8
        assert sample.pose_frames.shape == (frames, CROP, CROP, 3) and sample.keypoints.shape == (frames, 5, 3)
        assert sample.attribute_ref.shape == sample.portrait_ref.shape == (CROP, CROP, 3)
        assert sample.attribute_mask.shape == sample.portrait_mask.shape == (CROP, CROP)
        assert not sample.portrait_ref[sample.portrait_mask].any()
        assert not sample.attribute_ref[~sample.attribute_mask].any() and sample.attribute_mask.any()
        assert sample.meta.expansion.mode == "dilate" and sample.meta.attribute_ref.augmentation.fill == "reflect"
        assert sample.meta.config_hash == config.output_hash()

    # The card counts what the manifests and the shards hold.
    card = (output / "card" / "README.md").read_text()
    per_attribute = Counter(row["attribute"] for row in rows)
    assert per_attribute == Counter(s.meta.attribute for s in samples)
    for attribute, count in per_attribute.items():
        assert f"| {attribute} | {count} |" in card
    assert (output / "card" / "attributes.png").stat().st_size > 1000
    assert (output / "card" / "contact_sheet.png").stat().st_size > 1000
    assert "data:image/png;base64," in str(Artifact.get("build-dataset-card").data)
    assert "data:image/png;base64," in str(Artifact.get("build-dataset-preview").data)
    # The split is recorded per sample, by source video.
    sides = {(row["video_id"], row["content_sha256"], row["split"]) for row in rows}
    assert len({video for video, _, _ in sides}) == len(sides) == 5  # every sample of a video on the same side
    assert all(side == split_of(content, config.split) for _, content, side in sides)
    assert sum(side == "eval" for _, _, side in sides) == 2


def test_durian_evaluate_measures_a_tiny_pipeline_on_the_flows_dataset(built: tuple[BuildConfig, BuildSummary],
                                                                      tmp_path: Path):
    from prefect.artifacts import Artifact
    from typer.testing import CliRunner

    from data_specs.model import model_flavour
    from flows.cli import app
    from model.builders import random_components

    config, _ = built
    random_components(model_flavour("tiny"), seed=0).pipeline().save_pretrained(tmp_path / "pipeline")
    result = CliRunner().invoke(app, ["evaluate", "-m", str(tmp_path / "pipeline"), "-d", config.output_dir,
                                      "-o", str(tmp_path / "eval"), "--set", "steps=2",
                                      "--set", "max_clips_per_attribute=2", "--set", "execution.clips_per_task=3"])
    assert result.exit_code == 0, result.output
    rows = read_table_rows(tmp_path / "eval" / "clips.parquet")
    assert rows and all(row["status"] == "ok" for row in rows)
    held_out = {r["video_id"] for r in read_table("samples", Path(config.output_dir) / "manifests" / "samples.parquet")
                .to_pylist() if r["split"] == "eval"}
    assert {row["video_id"] for row in rows} <= held_out
    assert {row["transfer"] for row in rows} == {"self", "cross"}
    assert "*paper, Table 1 (hair)*" in result.output and (tmp_path / "eval" / "grid.mp4").stat().st_size > 0
    for key in ("evaluate-durian-summary", "evaluate-durian-per-attribute", "evaluate-durian-table",
                "evaluate-durian-grid"):
        assert Artifact.get(key) is not None, key
    refused = CliRunner().invoke(app, ["evaluate", "-m", str(tmp_path), "-d", config.output_dir, "-o",
                                       str(tmp_path / "no")])
    assert refused.exit_code == 2 and "is not a saved DurianPipeline" in refused.output


def read_table_rows(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()
