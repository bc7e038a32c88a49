"""Tiny configurations and random official-layout checkpoints of the evaluation's extractors."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection, Dinov2Config, Dinov2Model

from data_specs.model import IdentityEncoderSpec
from model.encoders import IResNet

TINY_VIT = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4,
            "image_size": 32, "patch_size": 8}
TINY_ARCFACE = IdentityEncoderSpec(arch="r18", embedding_dim=32, widths=(8, 16, 16, 32))


def torchvision_checkpoint(folder: Path, arch: str, **kwargs: object) -> Path:
    """A randomly initialised torchvision model's state dict under torchvision's own file name."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = torchvision.models.get_model(arch, weights=None, **kwargs)
    path = folder / torchvision.models.get_model_weights(arch).DEFAULT.url.rsplit("/", 1)[-1]
    torch.save(model.state_dict(), path)
    return path


def write_extractor_checkpoints(folder: Path) -> dict[str, Path]:
    """One random checkpoint per extractor under `folder`, in its official layout, by extractor name."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY_VIT, projection_dim=16)).save_pretrained(folder / "clip")
        Dinov2Model(Dinov2Config(**TINY_VIT)).save_pretrained(folder / "dino")
        torch.save(IResNet(TINY_ARCFACE.arch, TINY_ARCFACE.embedding_dim, TINY_ARCFACE.widths).state_dict(),
                   folder / "backbone.pth")
    return {
        "alex": torchvision_checkpoint(folder, "alexnet"),
        "squeeze": torchvision_checkpoint(folder, "squeezenet1_1"),
        "inception": torchvision_checkpoint(folder, "inception_v3", aux_logits=True, init_weights=False),
        "video": torchvision_checkpoint(folder, "r3d_18"),
        "clip": folder / "clip",
        "dino": folder / "dino",
        "arcface": folder / "backbone.pth",
    }
