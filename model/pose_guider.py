"""The pose guider: pose frames (rendered keypoints) -> features added after the denoiser's conv_in."""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn
from torch.nn import functional as F


class PoseGuider(ModelMixin, ConfigMixin):
    """Small conv encoder, Animate Anyone style.

    conv_in (3 -> channels[0]); then for each following width a 3x3 conv and a
    stride-2 3x3 conv, so the output is `2 ** (len(channels) - 1)` times smaller
    (SD 1.5: 16, 32, 96, 256 -> 1/8, the VAE's factor); a zero-initialised 3x3
    conv_out to the denoiser's first width, so an untrained guider adds nothing.
    """

    @register_to_config
    def __init__(self, in_channels: int = 3, channels: tuple[int, ...] = (16, 32, 96, 256),
                 out_channels: int = 320) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, channels[0], kernel_size=3, padding=1)
        blocks = []
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            blocks.append(nn.Conv2d(c_in, c_in, kernel_size=3, padding=1))
            blocks.append(nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, stride=2))
        self.blocks = nn.ModuleList(blocks)
        self.conv_out = nn.Conv2d(channels[-1], out_channels, kernel_size=3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, pose_frames: torch.Tensor) -> torch.Tensor:
        """pose_frames: (N, 3, H, W) in [0, 1] -> (N, out_channels, H / s, W / s)."""
        x = F.silu(self.conv_in(pose_frames))
        for block in self.blocks:
            x = F.silu(block(x))
        return self.conv_out(x)
