"""The frozen networks the evaluation metrics measure with, each loaded from a local file in its official layout.

Every extractor is an `nn.Module` built with `Extractor.load(path, ...)` and used through
`features(inputs) -> (N, dim)`: images (N, 3, H, W) or clips (N, 3, F, H, W) in [0, 1], resized and normalised
inside as the network's own preprocessing says, in batches on the extractor's device and dtype. Nothing is
downloaded: the networks are built on the meta device and filled from the file one tensor at a time by
`weight_files.tensors.load_weights`, so a file with a missing or unexpected key fails naming the keys, and a missing
file fails naming it (`CheckpointError`, the project's checkpoint error).

| extractor | file (official layout) | features |
|---|---|---|
| `InceptionFeatures` | torchvision `inception_v3_google-0cc3c7bd.pth` | 2048-d pool features (FID) |
| `VideoFeatures` | torchvision `r3d_18-b3b3357e.pth` (or `r2plus1d_18-91a641e6.pth`) | 512-d clip features (FVD) |
| `LpipsNet` | torchvision `alexnet-owt-7be5be79.pth` (vgg16, squeezenet1_1) | LPIPS distance of image pairs |
| `ClipImageFeatures` | a `CLIPVisionModelWithProjection` folder (config.json, model.safetensors) | embeds (CLIP-I) |
| `DinoFeatures` | a `Dinov2Model` folder (config.json, model.safetensors) | CLS token (DINO similarity) |
| `IdentityFeatures` | insightface arcface_torch `backbone.pth` | ArcFace embedding (ID similarity) |
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from accelerate import init_empty_weights
from torch import nn
from torch.nn import functional as F
from torchmetrics.functional.image.lpips import _LPIPS, _NoTrainLpips
from torchvision.models import get_model, get_model_weights
from torchvision.transforms.v2 import functional as tvF
from transformers import (
    AutoImageProcessor,
    BitImageProcessor,
    CLIPImageProcessor,
    Dinov2Model,
)
from transformers.image_processing_backends import TorchvisionBackend
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from data_specs.evaluation import LpipsBackbone, VideoArch
from data_specs.model import IdentityEncoderSpec
from model.builders import Device, _local, load_identity_encoder, load_image_encoder
from model.encoders import ARCFACE_SIZE, IResNet, align_faces
from weight_files.pickles import CheckpointError
from weight_files.tensors import TensorFile, load_weights, open_weights

__all__ = ["ClipImageFeatures", "DinoFeatures", "FeatureExtractor", "IdentityFeatures",
           "InceptionFeatures", "LpipsNet", "VideoFeatures"]

# torchmetrics' LPIPS backbone names -> torchvision's model names.
_LPIPS_TORCHVISION = {"alex": "alexnet", "vgg": "vgg16", "squeeze": "squeezenet1_1"}
# DINOv2's released preprocessing (facebook/dinov2-*'s preprocessor_config.json), for folders without one.
_DINO_RESIZE, _DINO_CROP = 256, 224


class FeatureExtractor(nn.Module):
    """A frozen network giving one feature vector per image or clip in [0, 1].

    Subclasses do their preprocessing and forward pass in `_embed`; `features` checks the shape, batches, and
    moves each batch to the network's device and dtype, so callers pass frames wherever they are.
    """

    input_ndim: ClassVar[int] = 4  # 4: images (N, 3, H, W); 5: clips (N, 3, F, H, W)

    def __init__(self, network: nn.Module, dim: int) -> None:
        super().__init__()
        self.network = network.eval().requires_grad_(False)
        self.dim = dim

    def train(self, mode: bool = True) -> FeatureExtractor:
        """Stays in evaluation mode (frozen batch-norm statistics, no dropout), like torchmetrics' networks."""
        return super().train(False)

    @torch.no_grad()
    def features(self, inputs: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        """(N, 3, H, W) images, or (N, 3, F, H, W) clips for video extractors, in [0, 1] -> (N, dim) float32,
        on the extractor's device."""
        layout = "(N, 3, H, W)" if self.input_ndim == 4 else "(N, 3, F, H, W)"
        if inputs.ndim != self.input_ndim or inputs.shape[1] != 3 or inputs.shape[0] == 0:
            raise ValueError(f"{type(self).__name__} takes {layout} in [0, 1], got {tuple(inputs.shape)}")
        parameter = next(self.network.parameters())
        return torch.cat([self._embed(batch.to(parameter.device, parameter.dtype)).float()
                          for batch in inputs.split(batch_size)])

    def _embed(self, batch: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def _torchvision_file(path: str | Path, arch: str, what: str) -> TensorFile:
    """The weight file of a torchvision model, or an error naming the path and torchvision's file name."""
    if not Path(path).is_file():
        official = get_model_weights(arch).DEFAULT.url.rsplit("/", 1)[-1]
        raise CheckpointError(f"{what} weights not found: {path} (torchvision's {arch} state dict, {official})")
    return open_weights(path)


def _empty_torchvision(arch: str, **kwargs: object) -> nn.Module:
    """A torchvision model with meta parameters (no memory, no random init, nothing downloaded)."""
    with init_empty_weights():
        return get_model(arch, weights=None, **kwargs)


class InceptionFeatures(FeatureExtractor):
    """2048-d pool features of torchvision's Inception-v3 (ImageNet weights): the feature space of FID.

    Frames are resized whole to 299x299 (bilinear, antialiased, no crop: FID's convention) and scaled to
    [-1, 1], the input these weights were trained on (torchvision's `transform_input` maps ImageNet-normalised
    input to the same). Published FID figures, the paper's among them, use the TF-ported Inception of
    pytorch-fid / torch-fidelity (`pt_inception-2015-12-05`), whose weights and resizing differ: FIDs from this
    extractor compare with each other, not with published values.
    """

    size = 299

    @classmethod
    def load(cls, path: str | Path, dtype: torch.dtype = torch.float32, device: Device = "cpu") -> InceptionFeatures:
        """From torchvision's `inception_v3_google-0cc3c7bd.pth` (its auxiliary classifier included)."""
        weights = _torchvision_file(path, "inception_v3", "Inception-v3")
        network = _empty_torchvision("inception_v3", aux_logits=True, init_weights=False, transform_input=False)
        load_weights(network, weights, dtype=dtype, device=device)
        network.AuxLogits, network.aux_logits, network.fc = None, False, nn.Identity()  # pooled features out
        return cls(network, 2048)

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        pixels = F.interpolate(images, size=(self.size, self.size), mode="bilinear", align_corners=False,
                               antialias=True)
        return self.network(pixels * 2 - 1)


class VideoFeatures(FeatureExtractor):
    """512-d pooled features of a torchvision Kinetics-400 video ResNet: FVD-style with an R3D-18 (or R(2+1)D-18)
    backbone instead of I3D, so values compare with each other, not with published FVDs.

    Frames follow the weights' own preprocessing (torchvision's `VideoClassification`: bilinear resize without
    antialiasing, as the models were trained, to 128x171, centre crop 112, Kinetics mean and std), except that
    the size keeps the frame's aspect with the shorter side at 128, so square portrait frames are not stretched
    (the two agree on Kinetics' 4:3 frames).
    """

    input_ndim = 5

    def __init__(self, network: nn.Module, dim: int, arch: VideoArch) -> None:
        super().__init__(network, dim)
        self.preprocessing = get_model_weights(arch).DEFAULT.transforms()

    @classmethod
    def load(cls, path: str | Path, arch: VideoArch = "r3d_18", dtype: torch.dtype = torch.float32,
             device: Device = "cpu") -> VideoFeatures:
        """From torchvision's `r3d_18-b3b3357e.pth` (or `r2plus1d_18-91a641e6.pth` with arch 'r2plus1d_18')."""
        weights = _torchvision_file(path, arch, "video ResNet")
        network = _empty_torchvision(arch)
        load_weights(network, weights, dtype=dtype, device=device)
        dim = network.fc.in_features
        network.fc = nn.Identity()
        return cls(network, dim, arch)

    def _embed(self, clips: torch.Tensor) -> torch.Tensor:
        frames = clips.transpose(1, 2)  # (N, F, 3, H, W), torchvision's video layout
        scale = self.preprocessing.resize_size[0] / min(frames.shape[-2:])
        size = [round(side * scale) for side in frames.shape[-2:]]
        frames = tvF.resize(frames, size, interpolation=self.preprocessing.interpolation, antialias=False)
        frames = tvF.center_crop(frames, self.preprocessing.crop_size)
        frames = tvF.normalize(frames, self.preprocessing.mean, self.preprocessing.std)
        return self.network(frames.transpose(1, 2))


class LpipsNet(_NoTrainLpips):
    """torchmetrics' LPIPS network with its backbone from a local torchvision file instead of a download.

    torchmetrics ships the LPIPS linear layers (`lpips_models/<net>.pth`) but fetches the ImageNet backbone
    through torchvision; here the backbone slices are filled from the torchvision state dict, its `features.i`
    keys renamed to torchmetrics' slices (the classifier, which LPIPS does not use, is skipped). Score pairs
    with `training.evaluation.metrics.lpips_per_sample`.
    """

    @classmethod
    def load(cls, backbone: str | Path, net_type: LpipsBackbone = "alex", dtype: torch.dtype = torch.float32,
             device: Device = "cpu") -> LpipsNet:
        """From torchvision's backbone file: `alexnet-owt-7be5be79.pth` for 'alex' (the LPIPS default),
        `vgg16-397923af.pth` for 'vgg', `squeezenet1_1-b8a52dc0.pth` for 'squeeze'."""
        weights = _torchvision_file(backbone, _LPIPS_TORCHVISION[net_type], f"LPIPS {net_type} backbone")
        with init_empty_weights():
            net = cls(pretrained=False, net=net_type, pnet_rand=True)
        # torchvision's `features.<i>` is module <i> of one of torchmetrics' slices.
        slots = {index: f"{path}.{index}" for path, module in net.net.named_modules()
                 if isinstance(module, nn.Sequential) for index, _ in module.named_children()}

        def rename(key: str) -> str | None:
            group, _, rest = key.partition(".")
            index, _, leaf = rest.partition(".")
            if group == "classifier":
                return None
            return f"{slots[index]}.{leaf}" if group == "features" and index in slots else key

        load_weights(net.net, weights, rename=rename, dtype=dtype, device=device)
        linear_layers = Path(inspect.getfile(_LPIPS)).parent / "lpips_models" / f"{net_type}.pth"
        load_weights(net.lins, open_weights(linear_layers), rename=lambda key: key.removeprefix("lin"),
                     dtype=dtype, device=device)
        return net.to(device=device, dtype=dtype)  # the scaling layer's constants


class _ProcessedImageFeatures(FeatureExtractor):
    """A transformers vision model fed by its image processor (resize, crop, normalise on the tensor's device)."""

    def __init__(self, network: nn.Module, dim: int, processor: TorchvisionBackend) -> None:
        super().__init__(network, dim)
        self.processor = processor

    def _pixels(self, images: torch.Tensor) -> torch.Tensor:
        pixels = self.processor(images=images.float(), do_rescale=False, return_tensors="pt")["pixel_values"]
        return pixels.to(images.device, images.dtype)


def _processor(folder: Path, default: TorchvisionBackend) -> TorchvisionBackend:
    """The folder's `preprocessor_config.json` if it has one, else `default`."""
    if (folder / "preprocessor_config.json").is_file():
        return AutoImageProcessor.from_pretrained(folder)
    return default


class ClipImageFeatures(_ProcessedImageFeatures):
    """Projected CLIP image embeddings (`image_embeds`): CLIP-I similarity between generated and reference.

    The sd-image-variations image encoder (CLIP ViT-L/14, the one Durian conditions on) is such a model.
    """

    @classmethod
    def load(cls, source: str | Path, dtype: torch.dtype = torch.float32,
             device: Device = "cpu") -> ClipImageFeatures:
        """From a `CLIPVisionModelWithProjection` folder (or a repo with `image_encoder/`), loaded by
        `model.builders.load_image_encoder`. Preprocessing: the folder's `preprocessor_config.json` if present,
        else CLIP's own (shorter side to the model's input size, centre crop, OpenAI CLIP mean and std)."""
        network = load_image_encoder(source, dtype, device)
        size = network.config.image_size
        default = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
        return cls(network, network.config.projection_dim, _processor(Path(source), default))

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(pixel_values=self._pixels(images)).image_embeds


class DinoFeatures(_ProcessedImageFeatures):
    """DINOv2's class token (the final layer norm's CLS, `pooler_output`): DINO similarity."""

    @classmethod
    def load(cls, source: str | Path, dtype: torch.dtype = torch.float32, device: Device = "cpu") -> DinoFeatures:
        """From a `Dinov2Model` folder saved with save_pretrained (facebook/dinov2-* layout), or a hub id in the
        local cache, by transformers' loader (which maps the hub's parameter names to its modules).
        Preprocessing: the folder's `preprocessor_config.json` if present, else DINOv2's released one (shorter
        side 256, centre crop 224, ImageNet mean and std; the model interpolates its position embeddings)."""
        folder = _local(source, ["*.json", "*.safetensors"])
        try:
            network, report = Dinov2Model.from_pretrained(folder, dtype=dtype, output_loading_info=True)
        except (OSError, RuntimeError) as error:  # no config or weights; a tensor of the wrong shape
            raise CheckpointError(f"DINOv2 folder {folder}: {error}") from error
        # transformers renames some parameters on load (the hub layout is kept on disk) and only reports
        # missing or unexpected keys: refuse them, as `load_weights` does.
        wrong = {kind: sorted(report[f"{kind}_keys"]) for kind in ("missing", "unexpected") if report[f"{kind}_keys"]}
        if wrong:
            raise CheckpointError(f"{folder} does not match Dinov2Model: " + "; ".join(
                f"{len(keys)} {kind} ({', '.join(keys[:5])}{', ...' if len(keys) > 5 else ''})"
                for kind, keys in wrong.items()))
        network = network.to(device)
        default = BitImageProcessor(size={"shortest_edge": _DINO_RESIZE},
                                    crop_size={"height": _DINO_CROP, "width": _DINO_CROP},
                                    image_mean=IMAGENET_DEFAULT_MEAN, image_std=IMAGENET_DEFAULT_STD)
        return cls(network, network.config.hidden_size, _processor(folder, default))

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(pixel_values=self._pixels(images)).pooler_output


class IdentityFeatures(FeatureExtractor):
    """ArcFace identity embeddings from the project's IResNet: ID similarity between portrait and frames."""

    network: IResNet

    @classmethod
    def load(cls, path: str | Path, spec: IdentityEncoderSpec | None = None, dtype: torch.dtype = torch.float32,
             device: Device = "cpu") -> IdentityFeatures:
        """From insightface's `backbone.pth` of `spec`'s IResNet (default r100), by
        `model.builders.load_identity_encoder`."""
        spec = spec or IdentityEncoderSpec()
        return cls(load_identity_encoder(path, spec, dtype, device), spec.embedding_dim)

    @torch.no_grad()
    def features(self, inputs: torch.Tensor, batch_size: int = 32, keypoints: np.ndarray | None = None
                 ) -> torch.Tensor:
        """Faces (N, 3, H, W) in [0, 1] -> (N, dim) embeddings (not normalised; cosine similarity does that).

        With keypoints (N, 5, 2) in ArcFace's order, `inputs` are whole frames and the 112x112 faces are
        aligned with `model.encoders.align_faces`; without, `inputs` are already aligned crops, resized to
        112x112 if needed.
        """
        faces = inputs if keypoints is None else align_faces(inputs, keypoints)
        return super().features(faces, batch_size)

    def _embed(self, faces: torch.Tensor) -> torch.Tensor:
        if faces.shape[-2:] != (ARCFACE_SIZE, ARCFACE_SIZE):
            faces = F.interpolate(faces, size=(ARCFACE_SIZE, ARCFACE_SIZE), mode="bilinear", align_corners=False,
                                  antialias=True)
        return self.network(faces * 2 - 1)
