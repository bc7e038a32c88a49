"""Each extractor loads a random checkpoint saved in its official layout, strictly, and measures what its
official preprocessing says; LPIPS equals torchmetrics' own with the same backbone."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from pydantic import ValidationError
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F
from torchmetrics.functional.image import lpips as torchmetrics_lpips
from transformers import (
    BitImageProcessor,
    CLIPVisionModelWithProjection,
)
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from data_specs.evaluation import ExtractorPaths
from model.encoders import ARCFACE_SIZE, ARCFACE_TEMPLATE, identity_embeds
from tests.evaluation.evaluation_testing import TINY_ARCFACE
from training.evaluation.extractors import (
    ClipImageFeatures,
    DinoFeatures,
    IdentityFeatures,
    InceptionFeatures,
    LpipsNet,
    VideoFeatures,
)
from training.evaluation.metrics import lpips_per_sample
from weight_files.pickles import CheckpointError


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def _torchvision_model(arch: str, path: Path, **kwargs: object) -> nn.Module:
    """The reference: torchvision's model filled by its own strict `load_state_dict`."""
    with torch.device("meta"):
        model = torchvision.models.get_model(arch, weights=None, **kwargs)
    model.load_state_dict(torch.load(path, weights_only=True), assign=True)
    return model.eval()


LOADERS: dict[str, Callable[[Path], nn.Module]] = {
    "alex": LpipsNet.load,
    "squeeze": lambda path: LpipsNet.load(path, net_type="squeeze"),
    "inception": InceptionFeatures.load,
    "video": VideoFeatures.load,
    "clip": ClipImageFeatures.load,
    "dino": DinoFeatures.load,
    "arcface": lambda path: IdentityFeatures.load(path, TINY_ARCFACE),
}


# ---------------------------------------------------------------- LPIPS


@pytest.mark.parametrize("net_type", ["alex", "squeeze"])
def test_lpips_equals_torchmetrics_with_the_same_backbone(net_type: str, checkpoints: dict[str, Path],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    arch = {"alex": "alexnet", "squeeze": "squeezenet1_1"}[net_type]
    backbone = _torchvision_model(arch, checkpoints[net_type])
    # torchmetrics' own LPIPS, its download replaced by the same backbone.
    monkeypatch.setattr(torchmetrics_lpips, "_get_tv_model_features", lambda net, pretrained=False: backbone.features)
    generated, real = _rand(3, 3, 64, 64, seed=1), _rand(3, 3, 64, 64, seed=2)
    expected = torchmetrics_lpips.learned_perceptual_image_patch_similarity(
        generated, real, net_type=net_type, reduction="none", normalize=True)
    scores = lpips_per_sample(generated, real, LpipsNet.load(checkpoints[net_type], net_type=net_type))
    assert scores == pytest.approx(expected.tolist(), rel=1e-5)
    assert all(score > 0 for score in scores)


def test_lpips_of_identical_images_is_zero(checkpoints: dict[str, Path]) -> None:
    net = LpipsNet.load(checkpoints["alex"])
    images = _rand(2, 3, 64, 64)
    assert lpips_per_sample(images, images.clone(), net) == [0.0, 0.0]
    assert all(score > 0 for score in lpips_per_sample(images, _rand(2, 3, 64, 64, seed=3), net))


# ---------------------------------------------------------------- Inception and the video ResNet


def test_inception_features_are_torchvisions_pool_features(checkpoints: dict[str, Path]) -> None:
    extractor = InceptionFeatures.load(checkpoints["inception"])
    images = _rand(1, 3, 48, 64)
    features = extractor.features(images)
    # torchvision's path for its ImageNet weights: ImageNet-normalised input, `transform_input` on.
    reference = _torchvision_model("inception_v3", checkpoints["inception"], aux_logits=True, init_weights=False,
                                   transform_input=True)
    reference.fc = nn.Identity()
    pixels = F.interpolate(images, size=(299, 299), mode="bilinear", align_corners=False, antialias=True)
    mean, std = torch.tensor([0.485, 0.456, 0.406])[:, None, None], torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    with torch.no_grad():
        expected = reference((pixels - mean) / std)
    assert features.shape == (1, 2048) == (1, extractor.dim)
    torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def test_video_features_follow_torchvisions_kinetics_preprocessing(checkpoints: dict[str, Path]) -> None:
    extractor = VideoFeatures.load(checkpoints["video"])
    clips = _rand(2, 3, 2, 96, 128)  # 4:3 frames, where torchvision's fixed 128x171 keeps the aspect too
    features = extractor.features(clips)
    reference = _torchvision_model("r3d_18", checkpoints["video"])
    reference.fc = nn.Identity()
    preprocess = torchvision.models.video.R3D_18_Weights.KINETICS400_V1.transforms()
    with torch.no_grad():
        expected = reference(preprocess(clips.transpose(1, 2).contiguous()))
    assert features.shape == (2, 512) == (2, extractor.dim)
    torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-5)
    square = extractor.features(_rand(1, 3, 2, 64, 64))  # square portraits: not stretched, same size out
    assert square.shape == (1, 512)


def test_features_reject_wrong_layouts(checkpoints: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match=r"\(N, 3, F, H, W\)"):
        VideoFeatures.load(checkpoints["video"]).features(_rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        IdentityFeatures.load(checkpoints["arcface"], TINY_ARCFACE).features(_rand(2, 1, 32, 32))


# ---------------------------------------------------------------- CLIP, DINOv2, ArcFace


def test_clip_image_embeds_with_clips_standard_preprocessing(checkpoints: dict[str, Path]) -> None:
    extractor = ClipImageFeatures.load(checkpoints["clip"])
    images = _rand(3, 3, 32, 32)  # at the model's input size: the processor only normalises
    reference = CLIPVisionModelWithProjection.from_pretrained(checkpoints["clip"]).eval()
    mean, std = torch.tensor(OPENAI_CLIP_MEAN)[:, None, None], torch.tensor(OPENAI_CLIP_STD)[:, None, None]
    with torch.no_grad():
        expected = reference(pixel_values=(images - mean) / std).image_embeds
    torch.testing.assert_close(extractor.features(images, batch_size=2), expected)  # two batches
    assert extractor.features(_rand(2, 3, 48, 64)).shape == (2, 16) == (2, extractor.dim)
    assert not extractor.train().network.training  # frozen, whatever a caller does


def test_dino_cls_token_with_the_folders_processor(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "dino"
    shutil.copytree(checkpoints["dino"], folder)
    BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                      image_mean=IMAGENET_DEFAULT_MEAN, image_std=IMAGENET_DEFAULT_STD).save_pretrained(folder)
    extractor = DinoFeatures.load(folder)
    images = _rand(3, 3, 32, 32)
    mean, std = torch.tensor(IMAGENET_DEFAULT_MEAN)[:, None, None], torch.tensor(IMAGENET_DEFAULT_STD)[:, None, None]
    with torch.no_grad():
        expected = extractor.network(pixel_values=(images - mean) / std).last_hidden_state[:, 0]
    torch.testing.assert_close(extractor.features(images), expected)
    # Without a preprocessor_config.json: DINOv2's released preprocessing (256, crop 224).
    default = DinoFeatures.load(checkpoints["dino"])
    assert (default.processor.crop_size.height, default.processor.size.shortest_edge) == (224, 256)
    assert default.features(_rand(2, 3, 48, 64)).shape == (2, 32) == (2, default.dim)


def test_identity_features_align_faces_like_the_model(checkpoints: dict[str, Path]) -> None:
    extractor = IdentityFeatures.load(checkpoints["arcface"], TINY_ARCFACE)
    images = _rand(2, 3, 128, 128)
    keypoints = np.stack([ARCFACE_TEMPLATE * 1.1 + 3, ARCFACE_TEMPLATE * 0.9 + 10])
    features = extractor.features(images, keypoints=keypoints)
    expected = identity_embeds(extractor.network, images, keypoints)[:, 0]  # the portrait net's conditioning
    torch.testing.assert_close(F.normalize(features, dim=-1), expected)
    crops = _rand(2, 3, ARCFACE_SIZE, ARCFACE_SIZE)
    with torch.no_grad():
        torch.testing.assert_close(extractor.features(crops), extractor.network(crops * 2 - 1))
    assert extractor.features(_rand(2, 3, 64, 64)).shape == (2, 32) == (2, extractor.dim)


# ---------------------------------------------------------------- strict loading, clear errors


def _corrupt(source: Path, target: Path) -> Path:
    """A copy of `source` with one weight missing and one unexpected key ('bogus.weight')."""
    if source.is_dir():
        shutil.copytree(source, target)
        weights = load_file(target / "model.safetensors")
        weights.pop(next(key for key in weights if key.endswith("norm.weight")))
        save_file({**weights, "bogus.weight": torch.zeros(2)}, target / "model.safetensors", metadata={"format": "pt"})
        return target
    weights = torch.load(source, weights_only=True)
    weights.pop(next(key for key in weights if key.endswith(".weight")))
    target = target.with_name(source.name)
    torch.save({**weights, "bogus.weight": torch.zeros(2)}, target)
    return target


@pytest.mark.parametrize("name", list(LOADERS))
def test_a_checkpoint_with_wrong_keys_fails_naming_them(name: str, checkpoints: dict[str, Path],
                                                        tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"does not match .*1 missing \(.+\).* 1 unexpected \(bogus\.weight\)"):
        LOADERS[name](_corrupt(checkpoints[name], tmp_path / name))


@pytest.mark.parametrize("name", list(LOADERS))
def test_a_missing_checkpoint_fails_naming_it(name: str, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found: .*absent"):
        LOADERS[name](tmp_path / "absent")


def test_extractor_paths_are_a_strict_config(tmp_path: Path) -> None:
    paths = ExtractorPaths.model_validate({"inception": str(tmp_path / "inception.pth"), "clip": "/models/clip",
                                           "identity": {"arch": "r50"}})
    assert paths.inception == tmp_path / "inception.pth" and paths.video is None and paths.lpips_net == "alex"
    assert paths.identity.arch == "r50"
    with pytest.raises(ValidationError, match="fid_model"):
        ExtractorPaths.model_validate({"fid_model": "x"})
    with pytest.raises(ValidationError, match="video_arch"):
        ExtractorPaths(video_arch="i3d")
