"""Sapiens through timm: architecture sizes, the three released formats, and the keypoint and mask components.

Checkpoints are random tensors written in the official key layout and file formats at the
`tiny` size (same layer layout, small widths), so every loader runs on a CPU in seconds.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from perception_testing import TINY_INPUT, save_official_pth

from data_specs.perception import (
    GOLIATH_FACE,
    SAPIENS_ARCHS,
    SAPIENS_FACE_LABELS,
    KeypointConfig,
    RuntimeConfig,
    SegmentationConfig,
)
from tasks.perception import build_keypoint_estimator, build_segmenter
from tasks.perception.keypoints import SapiensKeypointEstimator
from tasks.perception.sapiens import SapiensNetwork, build_sapiens, checkpoint_format, load_sapiens, normalise
from weight_files.pickles import CheckpointError

CPU = RuntimeConfig(device="cpu", batch_size=2)


@pytest.mark.parametrize(("arch", "published"), [("0.3b", 0.306e9), ("0.6b", 0.635e9), ("1b", 1.139e9),
                                                 ("2b", 2.132e9)])
def test_backbone_sizes_match_the_published_parameter_counts(arch: str, published: float) -> None:
    with torch.device("meta"):
        network = build_sapiens("pose", arch, (1024, 768), 308)
    backbone = network.backbone
    assert sum(p.numel() for p in backbone.parameters()) == pytest.approx(published, rel=1e-3)
    assert backbone.pos_embed.shape == (1, 64 * 48, SAPIENS_ARCHS[arch].embed_dim)
    assert backbone.patch_embed.proj.padding == (2, 2) and backbone.cls_token is None
    assert backbone.blocks[0].norm1.eps == 1e-6 and backbone.blocks[0].mlp.act.approximate == "none"
    assert network.head.final_layer.out_channels == 308
    with torch.device("meta"):
        assert build_sapiens("segmentation", arch, (1024, 768), 28).backbone.patch_embed.proj.padding == (0, 0)


@pytest.mark.parametrize(("task", "outputs"), [("pose", 308), ("segmentation", 19)])
def test_original_pth_loads_strictly_without_mmengine(task: str, outputs: int, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / f"sapiens_tiny_{task}_epoch_7.pth"
    expected = save_official_pth(path, task, outputs, monkeypatch)
    assert checkpoint_format(path) == "pickle"
    network = load_sapiens(path, task, "tiny", TINY_INPUT, outputs, torch.device("cpu"))
    loaded = network.module.state_dict()
    assert loaded.keys() == expected.keys()  # every checkpoint key consumed, every parameter filled
    for key, tensor in expected.items():
        torch.testing.assert_close(loaded[key], tensor, rtol=0, atol=0, msg=key)
    out = network(torch.randn(3, 3, *TINY_INPUT))
    scale = 4 if task == "pose" else 2
    assert out.shape == (3, outputs, TINY_INPUT[0] // scale, TINY_INPUT[1] // scale) and torch.isfinite(out).all()


def test_pth_whose_meta_holds_a_config_dict_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """mmengine's ConfigDict is a dict subclass: its items are pickled with SETITEMS on the object itself."""
    path = tmp_path / "sapiens_tiny_goliath_best.pth"
    expected = save_official_pth(path, "pose", 308, monkeypatch, config_dict=True)
    network = load_sapiens(path, "pose", "tiny", TINY_INPUT, 308, torch.device("cpu"))
    assert network.module.state_dict().keys() == expected.keys()


def test_pth_with_wrong_keys_or_size_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "pose.pth"
    save_official_pth(path, "pose", 308, monkeypatch)
    with pytest.raises(CheckpointError, match="not a Sapiens 0.3b pose network.*missing"):
        load_sapiens(path, "pose", "0.3b", TINY_INPUT, 308, torch.device("cpu"))
    with pytest.raises(CheckpointError, match="final_layer.weight has shape"):
        load_sapiens(path, "pose", "tiny", TINY_INPUT, 17, torch.device("cpu"))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_sapiens(tmp_path / "missing.pth", "pose", "tiny", TINY_INPUT, 308, torch.device("cpu"))


@pytest.fixture(scope="module")
def tiny_pose() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_sapiens("pose", "tiny", TINY_INPUT, 308).eval()


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::torch.jit.TracerWarning")  # writing the file
def test_torchscript_file_loads_and_runs_any_batch(tiny_pose: torch.nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "sapiens_tiny_goliath_best_goliath_AP_123_torchscript.pt2"
    with torch.no_grad():
        torch.jit.trace(tiny_pose, torch.randn(2, 3, *TINY_INPUT)).save(str(path))
    assert checkpoint_format(path) == "torchscript"
    network = load_sapiens(path, "pose", "0.3b", (1024, 768), 308, torch.device("cpu"),
                           trust_code=True)  # arch/size unused
    images = torch.randn(3, 3, *TINY_INPUT)
    with torch.no_grad():
        torch.testing.assert_close(network(images), tiny_pose(images), rtol=1e-4, atol=1e-5)


def test_bfloat16_export_loads_and_pads_to_its_fixed_batch(tiny_pose: torch.nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "pose_bf16.pt2"
    model = build_sapiens("pose", "tiny", TINY_INPUT, 308).eval()
    model.load_state_dict(tiny_pose.state_dict())
    model = model.to(torch.bfloat16)
    torch.export.save(torch.export.export(model, (torch.randn(2, 3, *TINY_INPUT, dtype=torch.bfloat16),)), path)
    assert checkpoint_format(path) == "export"
    network = load_sapiens(path, "pose", "0.3b", (1024, 768), 308, torch.device("cpu"), trust_code=True)
    assert network.dtype == torch.bfloat16 and network.fixed_batch == 2
    images = torch.randn(3, 3, *TINY_INPUT)
    out = network(images)
    assert out.dtype == torch.float32 and out.shape == (3, 308, 16, 12)
    with torch.no_grad():
        reference = model(images.to(torch.bfloat16)).float()
    torch.testing.assert_close(out, reference, rtol=0.05, atol=0.05)


class BlobFinder(torch.nn.Module):
    """Stands in for the pose network: unit Gaussians (sigma 2) at the brightest input pixel, in every channel.

    The peak is drawn where the UDP encoder puts a point seen at input position u: u x (W - 1) / (W_in - 1).
    """

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        n, _, height, width = images.shape
        grey = images.mean(dim=1).flatten(1)
        y, x = np.divmod(grey.argmax(dim=1).numpy(), width)
        scale = (np.array([width // 4, height // 4]) - 1) / (np.array([width, height]) - 1)
        rows, cols = np.indices((height // 4, width // 4))
        peaks = np.stack([x, y], 1) * scale
        maps = np.exp(-((cols - peaks[:, 0, None, None]) ** 2 + (rows - peaks[:, 1, None, None]) ** 2) / 8)
        return torch.from_numpy(maps[:, None].repeat(308, axis=1).astype(np.float32))


@pytest.mark.parametrize("flip_test", [False, True])
def test_keypoints_come_back_in_crop_pixels(flip_test: bool) -> None:
    """Top-down warp, heatmaps, decoding and mapping back (and the mirrored pass) put a point where the crop shows
    it."""
    crops = np.zeros((2, 96, 96, 3), np.uint8)
    spots = [(40, 52), (61, 35)]
    for crop, (x, y) in zip(crops, spots):
        crop[y, x] = 255
    config = KeypointConfig(checkpoint="unused.pth", image_size=(256, 192), flip_test=flip_test, runtime=CPU)
    estimator = SapiensKeypointEstimator(config)
    estimator.model = SapiensNetwork(BlobFinder(), torch.device("cpu"))
    boxes = np.array([[20, 20, 76, 80], [30, 10, 90, 70]], np.float32)
    keypoints = estimator(crops, boxes)
    assert keypoints.shape == (2, 238, 3) and keypoints.dtype == np.float32
    for points, spot in zip(keypoints, spots):
        # One input pixel spans about 0.4 crop pixels here; the blob's rounding stays within one of them.
        assert np.abs(points[:, :2] - spot).max() < 0.5
        assert (points[:, 2] > 0.9).all()  # the peak of a Gaussian sampled off its centre


def test_keypoint_estimator_runs_a_released_pth(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "sapiens_tiny_goliath.pth"
    save_official_pth(path, "pose", 308, monkeypatch)
    for flip_test in (False, True):
        config = KeypointConfig(checkpoint=str(path), arch="tiny", image_size=TINY_INPUT, flip_test=flip_test,
                                runtime=CPU)
        estimator = build_keypoint_estimator(config)
        assert estimator.layout is GOLIATH_FACE and estimator.resources.gpus == 0
        estimator.setup()
        keypoints = estimator(np.random.default_rng(0).integers(0, 255, (3, 40, 40, 3), dtype=np.uint8))
        assert keypoints.shape == (3, 238, 3) and np.isfinite(keypoints).all()


def test_sapiens_face_segmenter_maps_classes_to_attributes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "sapiens_tiny_seg_face.pth"
    save_official_pth(path, "segmentation", 19, monkeypatch)
    config = SegmentationConfig(backend="sapiens_face", attributes=("beard", "hair", "eyeglasses", "hat"),
                                checkpoint=str(path), arch="tiny", image_size=TINY_INPUT, runtime=CPU)
    segmenter = build_segmenter(config)
    segmenter.setup()
    crops = np.random.default_rng(1).integers(0, 255, (3, 40, 40, 3), dtype=np.uint8)
    masks = segmenter(crops)
    assert list(masks) == ["beard", "hair", "eyeglasses", "hat"]
    # The same labels computed by hand: resize to the network input, logits, back to the crop, argmax.
    logits = segmenter.model(normalise(np.stack([cv2.resize(c, TINY_INPUT[::-1]) for c in crops])))
    labels = F.interpolate(logits, size=(40, 40), mode="bilinear").argmax(1).numpy()
    assert len(np.unique(labels)) > 1
    for attribute, mask in masks.items():
        assert mask.shape == (3, 40, 40) and mask.dtype == bool
        np.testing.assert_array_equal(mask, labels == SAPIENS_FACE_LABELS.attributes[attribute][0])


class InputRecorder(BlobFinder):
    """BlobFinder that keeps the last input batch it was given."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.seen = images
        return super().forward(images)


def test_a_face_crop_is_seen_whole_with_the_demos_padding() -> None:
    """Without a box (what perception passes) the view is the whole crop x 1.25 widened to 3:4, as Sapiens' demo
    treats an image without a person box: the crop fills the middle 1 / 1.25 of the input's width."""
    crops = np.full((1, 96, 96, 3), 200, np.uint8)
    crops[0, 70, 12] = 255  # near the crop's edge: inside the padded view
    config = KeypointConfig(checkpoint="unused.pth", image_size=(256, 192), runtime=CPU)
    estimator = SapiensKeypointEstimator(config)
    recorder = InputRecorder()
    estimator.model = SapiensNetwork(recorder, torch.device("cpu"))
    keypoints = estimator(crops)
    assert np.abs(keypoints[0, :, :2] - (12, 70)).max() < 0.5
    # The view is 120 x 160 crop pixels (96 x 1.25, then 3:4): the crop spans 96 / 120 of the width, centred.
    # Along the input's middle row, the crop is where the value differs from the black border's.
    row = recorder.seen[0, 0, 128].numpy()
    columns = np.flatnonzero(np.abs(row - row[0]) > 1e-3)
    width = columns[-1] - columns[0] + 1
    assert width == pytest.approx(96 * 191 / 120, abs=2) and columns[0] == pytest.approx((192 - width) / 2, abs=2)
