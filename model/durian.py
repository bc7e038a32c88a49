"""DurianModel: the trainable networks and how they are wired.

- attribute_net, portrait_net: `UNet2DConditionModel(in_channels=5)` (SD 1.5 layout),
  run once per clip at timestep 0; their spatial self-attentions write to the bank.
- denoiser: `UNetMotionModel` (SD 1.5 + AnimateDiff motion modules); its spatial
  self-attentions read the bank, its spatial cross-attentions combine the attributes'
  embeddings the same way (see `model.reference_attention`).
- pose_guider: rendered keypoints (pose frames) -> features added to the output of the
  denoiser's conv_in (through a forward hook, since UNetMotionModel has no such input and
  is not forked).
- identity_proj: maps the ArcFace identity embedding to the portrait net's
  cross-attention width (identity when they already match).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from accelerate import init_empty_weights
from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from model.pose_guider import PoseGuider
from model.reference_attention import (
    ATTRIBUTE,
    PORTRAIT,
    UNCONDITIONAL,
    ReadMode,
    ReferenceBank,
    install_reference_readers,
    install_reference_writers,
)


@dataclass
class ReferenceInputs:
    """Everything the reference side needs for a batch of B clips with N attributes.

    portrait: (B, c + 1, h, w) latent of I_port * (1 - M_port) plus M_port.
    attributes: (B, N, c + 1, h, w) latents of I_attr * M_attr plus M_attr.
    identity_embeds: (B, 1, identity_dim) ArcFace identity embedding of the portrait.
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
                 pose_guider_channels: tuple[int, ...] = (16, 32, 96, 256), identity_dim: int = 512) -> None:
        super().__init__()
        self.attribute_net = UNet2DConditionModel.from_config(reference_config)
        self.portrait_net = UNet2DConditionModel.from_config(reference_config)
        self.denoiser = UNetMotionModel.from_config(denoiser_config)
        self.pose_guider, self.identity_proj = _new_small_parts(
            pose_guider_channels, self.denoiser.config.block_out_channels[0], identity_dim,
            reference_config["cross_attention_dim"])

        # 1. Reference attention: one bank shared by the writers and the reader.
        self.bank = ReferenceBank()
        install_reference_writers(self.attribute_net, self.bank, ATTRIBUTE)
        install_reference_writers(self.portrait_net, self.bank, PORTRAIT)
        self.reference_layers = install_reference_readers(self.denoiser, self.bank)

        # 2. Pose features are added after the denoiser's conv_in, while `denoise` runs.
        self._pose_features: torch.Tensor | None = None
        self.denoiser.conv_in.register_forward_hook(self._add_pose_features)

    @classmethod
    def from_unet2d(cls, unet: UNet2DConditionModel, motion_adapter: MotionAdapter,
                    pose_guider_channels: tuple[int, ...] = (16, 32, 96, 256), identity_dim: int = 512
                    ) -> DurianModel:
        """Durian whose three UNets start from the SD `unet` and whose temporal layers are `motion_adapter`'s,
        building every part once (like `UNetMotionModel.from_unet2d`, which copies instead).

        The denoiser takes over the tensors of `unet` and `motion_adapter`; both are left empty (on the meta
        device), so no weight is held twice and nothing aliases the denoiser. The two reference nets are copies
        of `unet` whose conv_in gets a zero mask channel, so at init they compute exactly what `unet` computes.
        The pose guider (zero output) and the identity projection are new. Everything keeps `unet`'s dtype and
        device.
        """
        # 1. An empty shell with the configs diffusers writes (built on the meta device: no weights).
        dtype, device = unet.dtype, unet.device
        reference_config = {**unet.config, "in_channels": unet.config.in_channels + 1}
        with init_empty_weights():
            denoiser_config = dict(UNetMotionModel.from_unet2d(unet, motion_adapter, load_weights=False).config)
            model = cls(reference_config, denoiser_config, tuple(pose_guider_channels), identity_dim)

        # 2. The denoiser: the UNet's spatial layers and the adapter's motion modules (same key names). The
        #    sources are emptied before the copies below, so an adapter cast to the UNet's dtype is gone by then.
        unet_state = unet.state_dict()
        motion_state = {k: v.to(dtype) for k, v in motion_adapter.state_dict().items()}
        model.denoiser.load_state_dict({**unet_state, **motion_state}, strict=True, assign=True)
        del motion_state
        unet.to("meta")
        motion_adapter.to("meta")

        # 3. The reference nets: copies with the extra (zero) mask channel in conv_in.
        for net in (model.attribute_net, model.portrait_net):
            state = {k: v.clone() for k, v in unet_state.items()}
            weight = state["conv_in.weight"]
            state["conv_in.weight"] = torch.cat([weight, weight.new_zeros(weight.shape[0], 1, *weight.shape[2:])],
                                                dim=1)
            net.load_state_dict(state, strict=True, assign=True)

        # 4. The new small parts, initialised on the UNet's device, in its dtype.
        with torch.device(device):
            new_parts = _new_small_parts(pose_guider_channels, unet.config.block_out_channels[0], identity_dim,
                                         unet.config.cross_attention_dim)
        for part, new in zip((model.pose_guider, model.identity_proj), new_parts):
            part.load_state_dict({k: v.to(dtype) for k, v in new.state_dict().items()}, assign=True)
        return model

    def _add_pose_features(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return output if self._pose_features is None else output + self._pose_features

    # ------------------------------------------------------------ references

    def _reference_nets(self) -> list[nn.Module]:
        return [self.attribute_net, self.portrait_net, self.identity_proj]

    def encode_references(self, references: ReferenceInputs) -> None:
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

    def clear_references(self) -> None:
        """Empty the bank (after backward, or after sampling a clip)."""
        self.bank.clear()

    # ------------------------------------------------------------ denoiser

    def denoise(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, pose_frames: torch.Tensor,
                attribute_embeds: torch.Tensor, read_mode: ReadMode = ReadMode()) -> torch.Tensor:
        """Predict the noise of a batch of clips, reading the references in the bank.

        noisy_latents: (B, c, F, h, w); timesteps: (B,) or scalar;
        pose_frames: (B, 3, F, H, W) rendered keypoints in [0, 1];
        attribute_embeds: (B, N, D) the attributes' CLIP image embeddings (one cross-attention token each);
        read_mode: how the N attributes combine, in the reference attention and the cross-attention alike.
            `UNCONDITIONAL` (the classifier-free-guidance branch) reads no references and zeroes the
            attribute embeddings.
        Returns (B, c, F, h, w).
        """
        frames = noisy_latents.shape[2]
        if not read_mode.use_references:
            attribute_embeds = torch.zeros_like(attribute_embeds)
        # 1. Pose features, frames of a clip adjacent like UNetMotionModel's (B * F) rows.
        pose = self.pose_guider(pose_frames.transpose(1, 2).flatten(0, 1).to(self.dtype))
        # 2. Cross-attention tokens repeated to B * F rows in the same order.
        context = attribute_embeds.to(self.dtype).repeat_interleave(frames, dim=0)
        # 3. Denoiser, with the pose features added after conv_in and the read mode passed to its processors.
        self._pose_features = pose
        try:
            return self.denoiser(noisy_latents.to(self.dtype), timesteps, context,
                                 cross_attention_kwargs={"read_mode": read_mode}).sample
        finally:
            self._pose_features = None

    def forward(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, pose_frames: torch.Tensor,
                references: ReferenceInputs, drop_references: bool = False) -> torch.Tensor:
        """One training prediction: references then denoiser. Shapes as `denoise`.

        drop_references: the classifier-free-guidance drop for this step: no reference net runs and the
        denoiser takes the unconditional branch, as at inference.
        """
        if drop_references:
            self.clear_references()
            return self.denoise(noisy_latents, timesteps, pose_frames, references.attribute_embeds, UNCONDITIONAL)
        self.encode_references(references)
        return self.denoise(noisy_latents, timesteps, pose_frames, references.attribute_embeds)

    # ------------------------------------------------------------ training stages

    def unreached_reference_parameters(self) -> set[str]:
        """Names of reference-net parameters that cannot influence any recorded token.

        E.g. the last up block's self-attention projections, cross-attention and
        feed-forward, and conv_out: they never get a gradient, so they are frozen
        rather than handed to DDP. Found by one tiny forward whose autograd graph is
        walked from the recorded tokens back to the parameters (no gradient is
        computed, so the probe costs no parameter-sized memory), so the answer holds
        for any UNet layout.
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
                reached = _graph_leaves(self.bank.tokens(source))
                unreached |= {f"{prefix}.{name}" for name, p in net.named_parameters() if id(p) not in reached}
                self.clear_references()
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


def _graph_leaves(outputs: list[torch.Tensor]) -> set[int]:
    """`id`s of the leaf tensors (parameters) that the autograd graph of `outputs` reaches."""
    stack = [t.grad_fn for t in outputs]
    seen, leaves = set(), set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if hasattr(node, "variable"):  # AccumulateGrad: the end of the graph at a leaf
            leaves.add(id(node.variable))
        stack.extend(next_node for next_node, _ in node.next_functions)
    return leaves


def _new_small_parts(pose_guider_channels: tuple[int, ...], first_width: int, identity_dim: int,
                     cross_attention_dim: int) -> tuple[PoseGuider, nn.Module]:
    """A new pose guider (zero output) and identity projection (none when the widths already match)."""
    pose_guider = PoseGuider(channels=tuple(pose_guider_channels), out_channels=first_width)
    identity_proj = (nn.Linear(identity_dim, cross_attention_dim) if identity_dim != cross_attention_dim
                     else nn.Identity())
    return pose_guider, identity_proj
