"""DurianModel: the trainable networks and how they are wired.

- attribute_net, portrait_net: `UNet2DConditionModel(in_channels=5)` (SD 1.5 layout),
  run once per clip at timestep 0; their spatial self-attentions write to the bank.
- denoiser: `UNetMotionModel` (SD 1.5 + AnimateDiff motion modules); its spatial
  self-attentions read the bank.
- pose_guider: rendered keypoints -> features added to the output of the denoiser's
  conv_in (through a forward hook, since UNetMotionModel has no such input and is not
  forked).
- identity_proj: maps the identity embedding to the portrait net's cross-attention
  width (identity when they already match, e.g. a CLIP identity).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Literal

import torch
from diffusers import UNet2DConditionModel, UNetMotionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from model.pose_guider import PoseGuider
from model.reference_attention import (
    ATTRIBUTE,
    PORTRAIT,
    ReadMode,
    ReferenceBank,
    install_reference_processors,
)


@dataclass
class ReferenceInputs:
    """Everything the reference side needs for a batch of B clips with N attributes.

    portrait: (B, c + 1, h, w) latent of I_port * (1 - M_port) plus M_port.
    attributes: (B, N, c + 1, h, w) latents of I_attr * M_attr plus M_attr.
    identity_embeds: (B, 1, identity_dim) portrait identity (ArcFace or CLIP).
    attribute_embeds: (B, N, cross_attention_dim) CLIP image embedding of each attribute.
    """

    portrait: torch.Tensor
    attributes: torch.Tensor
    identity_embeds: torch.Tensor
    attribute_embeds: torch.Tensor


class DurianModel(ModelMixin, ConfigMixin):
    """The dual-ReferenceNet video denoiser.

    Args:
        reference_config: `UNet2DConditionModel` config of both reference nets (in_channels 5).
        denoiser_config: `UNetMotionModel` config of the denoiser.
        pose_guider_channels: conv widths of the pose guider.
        identity_dim: width of the identity embedding given to the portrait net.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(self, reference_config: dict, denoiser_config: dict,
                 pose_guider_channels: tuple[int, ...] = (16, 32, 96, 256), identity_dim: int = 768) -> None:
        super().__init__()
        self.attribute_net = UNet2DConditionModel.from_config(reference_config)
        self.portrait_net = UNet2DConditionModel.from_config(reference_config)
        self.denoiser = UNetMotionModel.from_config(denoiser_config)
        self.pose_guider = PoseGuider(channels=tuple(pose_guider_channels),
                                      out_channels=self.denoiser.config.block_out_channels[0])
        cross_dim = reference_config["cross_attention_dim"]
        self.identity_proj = nn.Linear(identity_dim, cross_dim) if identity_dim != cross_dim else nn.Identity()

        # 1. Reference attention: one bank shared by the writers and the reader.
        self.bank = ReferenceBank()
        install_reference_processors(self.attribute_net, self.bank, ATTRIBUTE)
        install_reference_processors(self.portrait_net, self.bank, PORTRAIT)
        self.reference_layers = install_reference_processors(self.denoiser, self.bank, None)

        # 2. Pose features are added after the denoiser's conv_in, while `denoise` runs.
        self._pose_features: torch.Tensor | None = None
        self.denoiser.conv_in.register_forward_hook(self._add_pose_features)

    def _add_pose_features(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return output if self._pose_features is None else output + self._pose_features

    # ------------------------------------------------------------ references

    def _reference_nets(self) -> list[nn.Module]:
        return [self.attribute_net, self.portrait_net, self.identity_proj]

    def encode_references(self, references: ReferenceInputs, mode: ReadMode = ReadMode()) -> None:
        """Run both reference nets once (per clip) and fill the bank.

        Any frame count, any number of denoising steps and windows then reuse the
        bank. It holds the reference nets' graph when they are trainable: call
        `clear_references()` after backward.
        """
        batch, num_attributes = references.attributes.shape[:2]
        device = references.portrait.device
        trainable = any(p.requires_grad for net in self._reference_nets() for p in net.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and trainable):
            # Clean references: timestep 0.
            self.portrait_net(references.portrait.to(self.dtype), torch.zeros(batch, device=device),
                              self.identity_proj(references.identity_embeds.to(self.dtype)))
            self.attribute_net(references.attributes.flatten(0, 1).to(self.dtype),
                               torch.zeros(batch * num_attributes, device=device),
                               references.attribute_embeds.flatten(0, 1)[:, None].to(self.dtype))
        self.bank.mode = mode

    def clear_references(self) -> None:
        """Empty the bank (after backward, or after sampling a clip)."""
        self.bank.clear()

    # ------------------------------------------------------------ denoiser

    def denoise(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, guidance: torch.Tensor,
                attribute_embeds: torch.Tensor, use_references: bool = True) -> torch.Tensor:
        """Predict the noise of a batch of clips, reading the references in the bank.

        noisy_latents: (B, c, F, h, w); timesteps: (B,) or scalar;
        guidance: (B, 3, F, H, W) rendered keypoints in [0, 1];
        attribute_embeds: (B, N, D) cross-attention tokens (zeros: unconditional).
        use_references False ignores the bank (unconditional branch at inference).
        Returns (B, c, F, h, w).
        """
        if not use_references and len(self.bank) and torch.is_grad_enabled():
            # A checkpointed block recomputed in backward would read the bank again.
            raise RuntimeError("clear the bank instead of suspending it when gradients are needed")
        batch, _, frames = noisy_latents.shape[:3]
        # 1. Pose features, frames of a clip adjacent like UNetMotionModel's (B * F) rows.
        pose = self.pose_guider(guidance.transpose(1, 2).flatten(0, 1).to(self.dtype))
        # 2. Cross-attention tokens repeated to B * F rows in the same order.
        context = attribute_embeds.to(self.dtype).repeat_interleave(frames, dim=0)
        # 3. Denoiser, with the pose features added after conv_in.
        suspend = contextlib.nullcontext() if use_references else self.bank.suspended()
        self._pose_features = pose
        try:
            with suspend:
                return self.denoiser(noisy_latents.to(self.dtype), timesteps, context).sample
        finally:
            self._pose_features = None

    def forward(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, guidance: torch.Tensor,
                references: ReferenceInputs, drop_references: bool = False) -> torch.Tensor:
        """One training prediction: references then denoiser. Shapes as `denoise`.

        drop_references: the classifier-free-guidance drop for this step: no reference
        net runs and the denoiser gets zero attribute embeddings, like the
        unconditional branch at inference.
        """
        if drop_references:
            self.clear_references()
            context = torch.zeros_like(references.attribute_embeds)
        else:
            self.encode_references(references)
            context = references.attribute_embeds
        return self.denoise(noisy_latents, timesteps, guidance, context)

    # ------------------------------------------------------------ training stages

    def unreached_reference_parameters(self) -> set[str]:
        """Names of reference-net parameters that cannot influence any recorded token.

        E.g. the last up block's self-attention projections, cross-attention and
        feed-forward, and conv_out: they never get a gradient, so they are frozen
        rather than handed to DDP. Found by one tiny autograd probe, so the answer
        holds for any UNet layout.
        """
        depth = len(self.attribute_net.config.block_out_channels) - 1
        size = 2**depth  # the smallest latent the UNet accepts
        unreached = set()
        saved_flags = {name: p.requires_grad for name, p in self.named_parameters()}
        self.requires_grad_(True)
        try:
            for prefix, net, source in (("attribute_net", self.attribute_net, ATTRIBUTE),
                                        ("portrait_net", self.portrait_net, PORTRAIT)):
                parameter = next(net.parameters())
                sample = parameter.new_zeros(1, net.config.in_channels, size, size)
                context = parameter.new_zeros(1, 1, net.config.cross_attention_dim)
                with torch.enable_grad():
                    net(sample, torch.zeros(1, device=sample.device), context)
                    recorded = sum(t.float().sum() for t in self.bank.tokens(source))
                    named = list(net.named_parameters())
                    grads = torch.autograd.grad(recorded, [p for _, p in named], allow_unused=True)
                unreached |= {f"{prefix}.{name}" for (name, _), g in zip(named, grads) if g is None}
        finally:
            self.clear_references()
            for name, p in self.named_parameters():
                p.requires_grad_(saved_flags[name])
        return unreached

    def select_trainable(self, stage: Literal[1, 2]) -> list[nn.Parameter]:
        """Freeze everything but the stage's parameters, and return those.

        Stage 1: both reference nets (less `unreached_reference_parameters`), the
        identity projection, the pose guider and the denoiser's spatial layers.
        Stage 2: the denoiser's temporal layers (`motion_modules`) only.
        """
        if stage == 1:
            unreached = self.unreached_reference_parameters()

            def trainable(name: str) -> bool:
                if name.startswith("denoiser."):
                    return "motion_modules" not in name
                return name not in unreached
        elif stage == 2:
            def trainable(name: str) -> bool:
                return name.startswith("denoiser.") and "motion_modules" in name
        else:
            raise ValueError(f"stage must be 1 or 2, got {stage}")
        selected = []
        for name, parameter in self.named_parameters():
            parameter.requires_grad_(trainable(name))
            if parameter.requires_grad:
                selected.append(parameter)
        return selected
