"""Perception inside the real `build-dataset` flow (Prefect test server, local Ray, model actors)."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from perception_testing import TINY_INPUT, save_official_pth

from data_specs.perception import TRUTH_5
from data_specs.sample import decode_sample
from data_specs.schemas import read_table
from tasks.perception.runtime import FACEXLIB_WEIGHTS
from tests.conftest import small_config

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server", "local_ray")]
CROP = 48
TRUTH = {"backend": "truth", "runtime": {"device": "cpu", "cpus": 0.25}}
ATTRIBUTES = ("hair", "eyeglasses", "beard", "hat")


def perception(**sections: dict) -> dict:
    return {"detection": TRUTH, "crop": {"size": CROP}, "keypoints": TRUTH,
            "segmentation": {**TRUTH, "attributes": ATTRIBUTES}, **sections}


def read_samples(output: Path) -> list:
    shards = read_table("shards", output / "manifests" / "shards.parquet").column("shard").to_pylist()
    return [decode_sample(raw) for raw in wds.WebDataset([str(output / "shards" / s) for s in shards],
                                                            shardshuffle=False)]


def test_truth_perception_writes_crops_keypoints_pose_frames_and_masks(video_library: Path, tmp_path: Path):
    from flows.build_dataset import build_dataset

    output = tmp_path / "out"
    summary = build_dataset(small_config(video_library / "good", output, decode={"size": 96},
                                         perception=perception()))
    samples = read_samples(output)
    assert summary.samples == len(samples) == 15
    for sample in samples:
        assert sample.frames.shape == (4, CROP, CROP, 3)
        assert sample.keypoints.shape == (4, len(TRUTH_5.names), 3)
        assert sample.pose_frames.shape == (4, CROP, CROP, 3) and sample.pose_frames.any()
        assert set(sample.masks) == set(ATTRIBUTES)
        assert all(mask.shape == (4, CROP, CROP) and mask.dtype == bool for mask in sample.masks.values())
        meta = sample.meta.perception
        assert meta.keypoint_layout == TRUTH_5.name and len(meta.crop_boxes) == 4
        assert "ground truth" in meta.provenance["keypoints"]
        # The truth keypoints lie inside the crop, and an attribute's presence follows its mask.
        assert (sample.keypoints[..., :2] > 0).all() and (sample.keypoints[..., :2] < CROP).all()
        for attribute, flags in meta.presence.items():
            assert flags == [bool(m.mean() > 0.002) for m in sample.masks[attribute]]


def test_a_clip_without_a_face_is_a_failure_row(video_library: Path, tmp_path: Path):
    """Crops of a tiny face are refused: the face-size rule fires and is recorded, not dropped silently."""
    from flows.build_dataset import build_dataset

    output = tmp_path / "out"
    config = small_config(video_library / "good", output, decode={"size": 96},
                          perception=perception(crop={"size": CROP, "min_face_fraction": 0.9}))
    summary = build_dataset(config)
    assert summary.samples == 0
    failures = read_table("failures", output / "manifests" / "failures.parquet").to_pylist()
    assert len(failures) == 15 and {row["failed_in"] for row in failures} == {"perception"}
    assert all("small" in row["reason"] for row in failures), failures[0]["reason"]
    from prefect.artifacts import Artifact

    rejections = str(Artifact.get("build-dataset-rejections").data)
    assert '"failed_in": "perception", "rejected": "15"' in rejections and "small" in rejections


def test_real_architectures_with_random_weights_run_in_the_flow(video_library: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch):
    """Sapiens (tiny width, official .pth layout) keypoints and facexlib BiSeNet masks, in model actors."""
    from facexlib.detection.retinaface import RetinaFace
    from facexlib.parsing.bisenet import BiSeNet

    from flows.build_dataset import build_dataset

    sapiens = tmp_path / "sapiens_tiny_goliath.pth"
    save_official_pth(sapiens, "pose", 308, monkeypatch)
    weights = tmp_path / "facexlib"
    weights.mkdir()
    torch.manual_seed(0)
    torch.save(BiSeNet(num_class=19).state_dict(), weights / FACEXLIB_WEIGHTS["bisenet"][0])
    detector = RetinaFace("mobile0.25", device="cpu")  # released files hold DataParallel ("module.") keys
    torch.save({f"module.{k}": v for k, v in detector.state_dict().items()},
               weights / FACEXLIB_WEIGHTS["retinaface_mobile0.25"][0])
    cpu = {"device": "cpu", "cpus": 0.25, "batch_size": 4}
    one_video = tmp_path / "one"  # 3 clips: BiSeNet runs at its trained 512 x 512 on one CPU thread
    one_video.mkdir()
    for name in ("portrait_0000.mp4", "portrait_0000.truth.npz"):  # the video and its true face track
        shutil.copy(video_library / "good" / name, one_video)
    output = tmp_path / "out"
    config = small_config(one_video, output, decode={"size": 96}, perception=perception(
        keypoints={"backend": "sapiens", "checkpoint": str(sapiens), "arch": "tiny", "image_size": TINY_INPUT,
                   "runtime": cpu},
        segmentation={"backend": "bisenet", "weights_dir": str(weights), "attributes": ["hair", "hat"],
                      "runtime": cpu}))
    assert build_dataset(config).samples == 3
    for sample in read_samples(output)[:3]:
        assert sample.keypoints.shape == (4, 238, 3) and np.isfinite(sample.keypoints).all()
        assert set(sample.masks) == {"hair", "hat"} and sample.masks["hair"].shape == (4, CROP, CROP)
        assert "sapiens" in sample.meta.perception.provenance["keypoints"].lower()

    # RetinaFace with random weights finds no real face: every clip is a recorded rejection, none is lost.
    detect = {"backend": "retinaface_mobile0.25", "weights_dir": str(weights), "runtime": cpu}
    config = small_config(one_video, tmp_path / "out2", decode={"size": 96}, perception=perception(detection=detect))
    summary = build_dataset(config)
    failures = read_table("failures", tmp_path / "out2" / "manifests" / "failures.parquet").to_pylist()
    assert summary.clips == 3 and summary.samples + len(failures) == 3
    assert all(row["failed_in"] == "perception" for row in failures)


def test_model_actors_are_set_up_once_per_build_and_receive_whole_clips(video_library: Path, tmp_path: Path):
    from flows.build_dataset import build_dataset

    markers = tmp_path / "markers"
    counting = {"target": "tests.processors:UsesCountingModel", "params": {"marker_dir": str(markers)}}
    config = small_config(video_library / "good", tmp_path / "out", processors=[counting],
                          execution={"videos_per_unit": 1})
    summary = build_dataset(config)
    assert summary.units == 5 and summary.samples == 15
    names = [path.name for path in markers.iterdir()]
    assert sum(name.startswith("setup-") for name in names) == 1  # one actor, set up once for 5 units
    assert sorted(name.split("-")[1] for name in names if name.startswith("batch-")) == ["4"] * 15

    # The actor's process killed by its pid mid-build: Ray restarts it (set up again) and retries its calls,
    # and the build completes with the shards of the undisturbed one.
    shutil.rmtree(markers)
    killer = threading.Thread(target=_kill_the_model_at_its_first_call, args=(markers,))
    killer.start()
    again = build_dataset(small_config(video_library / "good", tmp_path / "again", processors=[counting],
                                       execution={"videos_per_unit": 1}))
    killer.join()
    assert again.units_failed == 0 and again.samples == 15
    assert len({name.split("-")[1] for name in os.listdir(markers) if name.startswith("setup-")}) == 2
    shards = sorted(path.name for path in (tmp_path / "out" / "shards").glob("*.tar"))
    assert shards == sorted(path.name for path in (tmp_path / "again" / "shards").glob("*.tar")) and shards
    for name in shards:
        assert (tmp_path / "out" / "shards" / name).read_bytes() == (tmp_path / "again" / "shards" / name).read_bytes()


def _kill_the_model_at_its_first_call(markers: Path) -> None:
    deadline = time.monotonic() + 120
    while not (markers.is_dir() and any(name.startswith("batch-") for name in os.listdir(markers))):
        assert time.monotonic() < deadline, "the model was never called"
        time.sleep(0.01)
    (setup,) = [name for name in os.listdir(markers) if name.startswith("setup-")]
    os.kill(int(setup.split("-")[1]), signal.SIGKILL)  # as the OOM killer would


def test_a_model_that_cannot_load_stops_the_build_before_any_unit(video_library: Path, tmp_path: Path):
    from flows.build_dataset import build_dataset
    from flows.ray_units import ModelLoadError

    config = small_config(video_library / "good", tmp_path / "out", decode={"size": 96}, perception=perception(
        segmentation={"backend": "bisenet", "weights_dir": str(tmp_path / "empty"), "attributes": ["hair"],
                      "runtime": {"device": "cpu", "cpus": 0.25}}))
    with pytest.raises(ModelLoadError, match=r"segmenter.*parsing_bisenet\.pth"):
        build_dataset(config)
    assert not (tmp_path / "out" / "shards").exists() or not list((tmp_path / "out" / "shards").iterdir())


def test_model_resources_reach_ray_a_gpu_model_on_a_cpu_cluster_is_refused_up_front(video_library: Path,
                                                                                   tmp_path: Path):
    from flows.build_dataset import build_dataset
    from flows.ray_units import ModelLoadError

    gpu = {"backend": "truth", "runtime": {"device": "cuda", "gpus": 1, "cpus": 0.25}}
    config = small_config(video_library / "good", tmp_path / "out", decode={"size": 96},
                          perception=perception(keypoints=gpu))
    with pytest.raises(ModelLoadError, match=r"keypoints: 1 x 0.25 CPU \+ 1 GPU.*need .* and 1 GPUs"):
        build_dataset(config)
