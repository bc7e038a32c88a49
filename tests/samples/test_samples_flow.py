"""Training samples inside the real `build-dataset` flow (Prefect test server, local Ray, truth perception)."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
import webdataset as wds

from data_specs.sample import PairSample, decode_sample
from data_specs.schemas import read_table
from tests.conftest import small_config

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server", "local_ray")]
CROP = 48
TRUTH = {"backend": "truth", "runtime": {"device": "cpu", "cpus": 0.25}}
PERCEPTION = {"detection": TRUTH, "crop": {"size": CROP}, "keypoints": TRUTH,
              "segmentation": {**TRUTH, "attributes": ["hair", "eyeglasses", "beard", "hat"]}}
SAMPLES = {"pairs": {"pairs_per_clip": 2, "frames": 3, "min_ref_distance": 2}}


def test_the_flow_turns_videos_into_training_pairs_and_a_card(video_library: Path, tmp_path: Path):
    from prefect.artifacts import Artifact

    from flows.build_dataset import build_dataset

    videos = tmp_path / "videos"
    shutil.copytree(video_library / "good", videos)
    first = sorted(videos.glob("*.mp4"))[0]
    shutil.copy(first, videos / "no_truth.mp4")  # the truth backends know nothing of it: a failure in an actor
    output = tmp_path / "out"
    config = small_config(videos, output, decode={"size": 96}, perception=PERCEPTION, training_samples=SAMPLES)
    summary = build_dataset(config)

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
