"""Sapiens pose and segmentation networks built from timm's `VisionTransformer`, and their released files.

The Sapiens backbone is mmpretrain's ViT, which timm's `VisionTransformer` matches layer for
layer: no class token, learned position embedding, qkv bias, LayerNorm eps 1e-6, exact GELU,
final norm. Only the patch convolution differs between checkpoints: pose checkpoints pad it
by 2, segmentation checkpoints by 0. The dense heads are rebuilt with the official module
layout, so their `head.*` / `decode_head.*` keys load unchanged.

Three released formats load from any file name (the format is read from the file):

- the original `.pth`: an mmengine pickle, read through `weight_files.pickles`' allow-listed unpickler
  (no mmengine needed) into a network built on the meta device, backbone keys renamed by
  `BACKBONE_KEY_RENAMES`;
- TorchScript `.pt2` (`torch.jit.load`);
- bfloat16 `torch.export` `.pt2` (`torch.export.load`), run in its own dtype and, when it was
  exported with a fixed batch size, fed padded batches of that size.
"""

from __future__ import annotations

import re
import warnings
import zipfile
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from timm.layers import PatchEmbed
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from data_specs.images import images_to_tensor
from data_specs.network_sizes import SAPIENS_ARCHS, SapiensArch
from tasks.trust import refuse_untrusted_code
from weight_files.pickles import CheckpointError
from weight_files.tensors import load_weights, open_weights

PATCH_SIZE = 16
PATCH_PADDING = {"pose": 2, "segmentation": 0}
MEAN = (123.675, 116.28, 103.53)  # RGB, on 0..255
STD = (58.395, 57.12, 57.375)

Task = Literal["pose", "segmentation"]
CheckpointFormat = Literal["pickle", "torchscript", "export"]

# mmpretrain -> timm backbone names, applied in order after `backbone.` is stripped.
BACKBONE_KEY_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^patch_embed\.projection\.", "patch_embed.proj."),
    (r"^layers\.(\d+)\.ln1\.", r"blocks.\1.norm1."),
    (r"^layers\.(\d+)\.ln2\.", r"blocks.\1.norm2."),
    (r"^layers\.(\d+)\.ffn\.layers\.0\.0\.", r"blocks.\1.mlp.fc1."),
    (r"^layers\.(\d+)\.ffn\.layers\.1\.", r"blocks.\1.mlp.fc2."),
    (r"^layers\.(\d+)\.attn\.", r"blocks.\1.attn."),
    (r"^ln1\.", "norm."),
)


class _PaddedPatchEmbed(PatchEmbed):
    """timm's patch embedding with a padded patch convolution (the token grid is unchanged for padding < 8)."""

    def __init__(self, *args, padding: int = 0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        conv = self.proj
        self.proj = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, padding,
                              bias=conv.bias is not None, device=conv.weight.device, dtype=conv.weight.dtype)


def build_backbone(arch: SapiensArch, image_size: tuple[int, int], patch_padding: int) -> VisionTransformer:
    """A Sapiens ViT as timm's `VisionTransformer`; `image_size` is (height, width)."""
    return VisionTransformer(
        img_size=image_size, patch_size=PATCH_SIZE, num_classes=0, global_pool="", class_token=False,
        embed_dim=arch.embed_dim, depth=arch.depth, num_heads=arch.num_heads, mlp_ratio=4.0, qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6), act_layer=nn.GELU,
        embed_layer=partial(_PaddedPatchEmbed, padding=patch_padding),
    )


class _UpsamplingHead(nn.Module):
    """mmpose/mmseg dense head trunk: k4 s2 deconvs, then 1x1 convs, each + InstanceNorm (no weights) + SiLU."""

    def __init__(self, in_channels: int, channels: int, num_deconv: int, num_conv: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(num_deconv):
            layers += [nn.ConvTranspose2d(in_channels if i == 0 else channels, channels, 4, 2, 1, bias=False),
                       nn.InstanceNorm2d(channels), nn.SiLU(inplace=True)]
        self.deconv_layers = nn.Sequential(*layers)
        layers = []
        for _ in range(num_conv):
            layers += [nn.Conv2d(channels, channels, 1), nn.InstanceNorm2d(channels), nn.SiLU(inplace=True)]
        self.conv_layers = nn.Sequential(*layers)


class HeatmapHead(_UpsamplingHead):
    """mmpose `HeatmapHead` as Sapiens pose configures it: 2 deconvs (x4), 2 convs, 1x1 to K heatmaps."""

    def __init__(self, in_channels: int, num_keypoints: int, channels: int = 768) -> None:
        super().__init__(in_channels, channels, num_deconv=2, num_conv=2)
        self.final_layer = nn.Conv2d(channels, num_keypoints, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.final_layer(self.conv_layers(self.deconv_layers(features)))


class SegmentationHead(_UpsamplingHead):
    """Sapiens' mmseg `VitHead`: 3 deconvs (x8), 3 convs, 1x1 to class logits (`conv_seg`)."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = 768) -> None:
        super().__init__(in_channels, channels, num_deconv=3, num_conv=3)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.conv_seg(self.conv_layers(self.deconv_layers(features)))


def _feature_map(backbone: VisionTransformer, images: torch.Tensor) -> torch.Tensor:
    """(N, E, H/16, W/16) patch features after the final norm."""
    tokens = backbone.forward_features(images)
    return tokens.transpose(1, 2).unflatten(2, backbone.patch_embed.grid_size)  # no batch size baked into traces


class SapiensPose(nn.Module):
    """(N, 3, H, W) normalised images -> (N, K, H/4, W/4) heatmaps. Keys: `backbone.*` (timm), `head.*`."""

    def __init__(self, arch: SapiensArch, image_size: tuple[int, int], num_keypoints: int) -> None:
        super().__init__()
        self.backbone = build_backbone(arch, image_size, PATCH_PADDING["pose"])
        self.head = HeatmapHead(arch.embed_dim, num_keypoints, arch.head_channels)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(_feature_map(self.backbone, images))


class SapiensSegmentation(nn.Module):
    """(N, 3, H, W) normalised images -> (N, C, H/2, W/2) logits. Keys: `backbone.*` (timm), `decode_head.*`."""

    def __init__(self, arch: SapiensArch, image_size: tuple[int, int], num_classes: int) -> None:
        super().__init__()
        self.backbone = build_backbone(arch, image_size, PATCH_PADDING["segmentation"])
        self.decode_head = SegmentationHead(arch.embed_dim, num_classes, arch.head_channels)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decode_head(_feature_map(self.backbone, images))


def build_sapiens(task: Task, arch: str, image_size: tuple[int, int], num_outputs: int) -> nn.Module:
    """The network for `task` at size `arch` (a `SAPIENS_ARCHS` key); build under `torch.device('meta')` to skip
    allocating weights that a checkpoint will replace."""
    network = SapiensPose if task == "pose" else SapiensSegmentation
    return network(SAPIENS_ARCHS[arch], image_size, num_outputs)


def sapiens_key(key: str) -> str:
    """This module's name for an official (mmpretrain/mmpose/mmseg) checkpoint key; head keys are unchanged."""
    if not key.startswith("backbone."):
        return key
    name = key.removeprefix("backbone.")
    for pattern, replacement in BACKBONE_KEY_RENAMES:
        name = re.sub(pattern, replacement, name)
    return f"backbone.{name}"


def checkpoint_format(path: str | Path) -> CheckpointFormat:
    """Which of the released formats a file is, from its contents (file names vary)."""
    if not zipfile.is_zipfile(path):
        return "pickle"  # legacy (pre-zip) torch.save
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    if any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names):
        return "torchscript"
    if any(n.endswith(("archive_format", "serialized_exported_program.json")) for n in names):
        return "export"
    return "pickle"


class SapiensNetwork:
    """A loaded Sapiens network of any format: float32 normalised images in, float32 outputs out."""

    def __init__(self, module: nn.Module, device: torch.device, dtype: torch.dtype = torch.float32,
                 fixed_batch: int | None = None) -> None:
        self.module = module
        self.device = device
        self.dtype = dtype
        self.fixed_batch = fixed_batch  # exported with a static batch size: inputs are padded to it

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        step = self.fixed_batch or len(images)
        outputs = []
        for start in range(0, len(images), step):
            chunk = images[start : start + step].to(self.device, self.dtype)
            count = len(chunk)
            if self.fixed_batch and count < self.fixed_batch:
                chunk = torch.cat([chunk, chunk.new_zeros((self.fixed_batch - count, *chunk.shape[1:]))])
            with torch.inference_mode():
                outputs.append(self.module(chunk)[:count].float())
        return torch.cat(outputs)


def load_sapiens(path: str | Path, task: Task, arch: str, image_size: tuple[int, int], num_outputs: int,
                 device: torch.device, trust_code: bool = False) -> SapiensNetwork:
    """Load a Sapiens checkpoint in any released format onto `device`.

    `arch`, `image_size` and `num_outputs` describe the network a `.pth` holds; the
    compiled formats carry their own. A `.pth` must match it exactly (strict keys and shapes).
    TorchScript and `torch.export` files can run code when loaded: refused (`UntrustedCodeError`)
    unless `trust_code` (the config's `trust_code: true`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Sapiens {task} checkpoint not found: {path}")
    kind = checkpoint_format(path)
    if kind != "pickle":
        section = "keypoints" if task == "pose" else "segmentation"
        refuse_untrusted_code(path, kind, f"perception.{section}.trust_code", trust_code)
    if kind == "torchscript":
        with warnings.catch_warnings():  # TorchScript is deprecated, but it is how Sapiens was released
            warnings.filterwarnings("ignore", category=FutureWarning, module="torch.jit")
            module = torch.jit.load(str(path), map_location=device).eval()
        return SapiensNetwork(module, device)
    if kind == "export":
        program = torch.export.load(str(path))
        module = program.module().to(device)
        dtype = next(module.parameters()).dtype
        return SapiensNetwork(module, device, dtype, _static_batch(program))
    with torch.device("meta"):
        network = build_sapiens(task, arch, image_size, num_outputs)
    try:
        load_weights(network, open_weights(path), rename=sapiens_key, device=device)
    except CheckpointError as error:
        raise CheckpointError(f"not a Sapiens {arch} {task} network for {image_size[0]}x{image_size[1]} input "
                              f"with {num_outputs} outputs: {error}") from error
    return SapiensNetwork(network.eval(), device)


def _static_batch(program: torch.export.ExportedProgram) -> int | None:
    """The batch size an exported program was traced with, when it is fixed (None when dynamic)."""
    first = program.graph_signature.user_inputs[0]
    node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == first)
    batch = node.meta["val"].shape[0]
    return batch if isinstance(batch, int) else None


def normalise(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 RGB -> (N, 3, H, W) float32 with Sapiens' mean and std."""
    tensor = images_to_tensor(images, scale=1)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (tensor - mean) / std
