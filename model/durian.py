"""DurianModel: the trainable networks and how they are wired.

- attribute_net, portrait_net: `UNet2DConditionModel(in_channels=5)` (SD 1.5 layout),
  run once per clip at timestep 0; their spatial self-attentions write to the bank.
- denoiser: stage 1 a `UNet2DConditionModel` (SD 1.5, no temporal layers: the frames of a clip are
  folded into the batch); from stage 2 on a `UNetMotionModel`, the same spatial weights plus AnimateDiff
  motion modules (`add_motion_modules`), as Moore-AnimateAnyone and Champ train. Its spatial
  self-attentions read the bank, its spatial cross-attentions combine the attributes' embeddings
  the same way (see `model.reference_attention`).
- pose_guider: rendered keypoints (pose frames) -> features added to the output of the
  denoiser's conv_in (through a forward hook, since neither diffusers UNet has such an input and
  neither is forked).
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
from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D
from torch import nn
from torch.utils.checkpoint import checkpoint

from model.pose_guider import PoseGuider
from model.reference_attention import (
    ATTRIBUTE,
    PORTRAIT,
    ReadMode,
    ReferenceBank,
    install_reference_readers,
    install_reference_writers,
    reference_drop_bias,
)

MOTION_MODULES = "motion_modules"  # the name of every temporal layer in a diffusers UNetMotionModel


class CheckpointedMotionModule(AnimateDiffTransformer3D):
    """An AnimateDiff motion module whose activations are recomputed in backward (non-reentrant).

    diffusers' `UNetMotionModel` checkpoints its resnets and spatial transformer blocks but calls its motion
    modules plainly, so at 24 frames their activations dominate stage 2's memory. `DurianModel` switches a
    motion module's class to this one and back (same parameters and state-dict keys, so checkpoints, EMA,
    export and DDP see the same module).
    """

    def forward(self, *args, **kwargs):  # noqa: D102 - AnimateDiffTransformer3D.forward, recomputed
        if torch.is_grad_enabled():
            return checkpoint(super().forward, *args, use_reentrant=False, **kwargs)
        return super().forward(*args, **kwargs)


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


def is_motion_config(denoiser_config: dict) -> bool:
    """Whether a denoiser config is a `UNetMotionModel`'s (its blocks are the motion kinds) rather than a
    `UNet2DConditionModel`'s."""
    return any("Motion" in block for block in denoiser_config["down_block_types"])


class DurianModel(ModelMixin, ConfigMixin):
    """The dual-ReferenceNet video denoiser.

    Args:
        reference_config: `UNet2DConditionModel` config of both reference nets (in_channels 5).
        denoiser_config: the denoiser's config: a `UNet2DConditionModel`'s (stage 1) or a `UNetMotionModel`'s
            (with motion modules, see `is_motion_config`).
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
        denoiser_class = UNetMotionModel if is_motion_config(denoiser_config) else UNet2DConditionModel
        self.denoiser = denoiser_class.from_config(denoiser_config)
        self.pose_guider, self.identity_proj = _new_small_parts(
            pose_guider_channels, self.denoiser.config.block_out_channels[0], identity_dim,
            reference_config["cross_attention_dim"])

        # 1. Reference attention: one bank shared by the writers and the reader.
        self.bank = ReferenceBank()
        install_reference_writers(self.attribute_net, self.bank, ATTRIBUTE)
        install_reference_writers(self.portrait_net, self.bank, PORTRAIT)
        self._pose_features: torch.Tensor | None = None
        self._wire_denoiser()

    def _wire_denoiser(self) -> None:
        """Reference readers on the denoiser's spatial attentions, and the pose features added after its
        conv_in while `denoise` runs (again whenever the denoiser is replaced)."""
        self.reference_layers = install_reference_readers(self.denoiser, self.bank)
        self.denoiser.conv_in.register_forward_hook(self._add_pose_features)

    @property
    def has_motion_modules(self) -> bool:
        """Whether the denoiser has temporal layers (stage 2 and after) or is the 2D stage-1 UNet."""
        return isinstance(self.denoiser, UNetMotionModel)

    @classmethod
    def from_unet2d(cls, unet: UNet2DConditionModel, motion_adapter: MotionAdapter | None = None,
                    pose_guider_channels: tuple[int, ...] = (16, 32, 96, 256), identity_dim: int = 512
                    ) -> DurianModel:
        """Durian whose three UNets start from the SD `unet`, building every part once.

        The denoiser takes over the tensors of `unet` (and of `motion_adapter`, through `add_motion_modules`);
        the sources are left empty (on the meta device), so no weight is held twice and nothing aliases the
        denoiser. Without `motion_adapter` the denoiser is the 2D UNet of stage 1. The two reference nets are
        copies of `unet` whose conv_in gets a zero mask channel, so at init they compute exactly what `unet`
        computes. The pose guider (zero output) and the identity projection are new. Everything keeps
        `unet`'s dtype and device.
        """
        # 1. An empty shell with the configs diffusers writes (built on the meta device: no weights).
        dtype, device = unet.dtype, unet.device
        reference_config = {**unet.config, "in_channels": unet.config.in_channels + 1}
        with init_empty_weights():
            model = cls(reference_config, dict(unet.config), tuple(pose_guider_channels), identity_dim)

        # 2. The denoiser: the UNet's own tensors (same key names).
        unet_state = unet.state_dict()
        model.denoiser.load_state_dict(unet_state, strict=True, assign=True)
        unet.to("meta")

        # 3. The reference nets: copies with the extra (zero) mask channel in conv_in.
        for net in (model.attribute_net, model.portrait_net):
            state = {k: v.clone() for k, v in unet_state.items()}
            weight = state["conv_in.weight"]
            state["conv_in.weight"] = torch.cat([weight, weight.new_zeros(weight.shape[0], 1, *weight.shape[2:])],
                                                dim=1)
            net.load_state_dict(state, strict=True, assign=True)
        del unet_state

        # 4. The new small parts, initialised on the UNet's device, in its dtype.
        with torch.device(device):
            new_parts = _new_small_parts(pose_guider_channels, unet.config.block_out_channels[0], identity_dim,
                                         unet.config.cross_attention_dim)
        for part, new in zip((model.pose_guider, model.identity_proj), new_parts):
            part.load_state_dict({k: v.to(dtype) for k, v in new.state_dict().items()}, assign=True)
        if motion_adapter is not None:
            model.add_motion_modules(motion_adapter)
        return model

    def add_motion_modules(self, motion_adapter: MotionAdapter) -> None:
        """Stage 2 begins: the 2D denoiser becomes a `UNetMotionModel` holding the same spatial tensors (moved,
        not copied) plus the adapter's motion modules, cast to the denoiser's dtype and device.

        As `UNetMotionModel.from_unet2d` does, without its copies. The adapter is left empty (on the meta
        device), so nothing aliases the denoiser. The denoiser's parameter names change only by the added
        `motion_modules`; the reference readers, the pose-feature hook and gradient checkpointing are set up
        again, and the config records the new denoiser, so `save_pretrained` / `from_pretrained` restore it.
        """
        if self.has_motion_modules:
            raise ValueError("the denoiser already has motion modules")
        checkpointing = self.denoiser.is_gradient_checkpointing
        dtype, device = self.denoiser.dtype, self.denoiser.device
        with init_empty_weights():
            denoiser = UNetMotionModel.from_unet2d(self.denoiser, motion_adapter, load_weights=False)
        motion_state = {k: v.to(dtype=dtype, device=device) for k, v in motion_adapter.state_dict().items()}
        denoiser.load_state_dict({**self.denoiser.state_dict(), **motion_state}, strict=True, assign=True)
        del motion_state
        motion_adapter.to("meta")
        self.denoiser = denoiser
        self._wire_denoiser()
        self.register_to_config(denoiser_config=dict(denoiser.config))
        if checkpointing:
            self.enable_gradient_checkpointing()

    def enable_gradient_checkpointing(self) -> None:
        """Recompute activations in backward, in the denoiser and in both reference nets: every resnet and
        every spatial transformer block (diffusers' `Transformer2DModel` checkpoints each of its blocks), the
        reference attention included (its bank contract makes recomputation safe), and every motion module
        (`CheckpointedMotionModule`; diffusers does not checkpoint them). Motion modules added later by
        `add_motion_modules` are checkpointed too.

        Non-reentrant checkpointing (diffusers' default): one gradient hook per parameter per step, as DDP's
        static graph expects.
        """
        for net in (self.denoiser, self.attribute_net, self.portrait_net):
            net.enable_gradient_checkpointing()
        self._set_motion_module_class(CheckpointedMotionModule)

    def disable_gradient_checkpointing(self) -> None:
        """Keep every activation again (the default)."""
        for net in (self.denoiser, self.attribute_net, self.portrait_net):
            net.disable_gradient_checkpointing()
        self._set_motion_module_class(AnimateDiffTransformer3D)

    def _set_motion_module_class(self, module_class: type[AnimateDiffTransformer3D]) -> None:
        for name, module in self.denoiser.named_modules():
            if name.rpartition(".")[0].endswith(MOTION_MODULES) and isinstance(module, AnimateDiffTransformer3D):
                module.__class__ = module_class

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
                attribute_embeds: torch.Tensor, read_mode: ReadMode = ReadMode(),
                drop_references: torch.Tensor | None = None) -> torch.Tensor:
        """Predict the noise (or v) of a batch of clips, reading the references in the bank.

        noisy_latents: (B, c, F, h, w); timesteps: (B,) or scalar;
        pose_frames: (B, 3, F, H, W) rendered keypoints in [0, 1];
        attribute_embeds: (B, N, D) the attributes' CLIP image embeddings (one cross-attention token each);
        read_mode: how the N attributes combine, in the reference attention and the cross-attention alike.
            `UNCONDITIONAL` (the classifier-free-guidance branch) reads no references and zeroes the
            attribute embeddings.
        drop_references: optional (B,) bool, the samples that take the unconditional branch: their reference
            tokens are masked out of the reference attention and their attribute embeddings zeroed, while
            the other samples read the references (the graph is the same whichever samples drop).
        A 2D denoiser (stage 1) sees the F frames of a clip as F images.
        Returns (B, c, F, h, w).
        """
        batch, frames = noisy_latents.shape[0], noisy_latents.shape[2]
        if not read_mode.use_references:
            attribute_embeds = torch.zeros_like(attribute_embeds)
        elif drop_references is not None:
            drop_references = drop_references.to(attribute_embeds.device, torch.bool)
            attribute_embeds = attribute_embeds.masked_fill(drop_references[:, None, None], 0)
        # 1. Pose features, frames of a clip adjacent like UNetMotionModel's (B * F) rows.
        pose = self.pose_guider(pose_frames.transpose(1, 2).flatten(0, 1).to(self.dtype))
        # 2. Cross-attention tokens repeated to B * F rows in the same order.
        context = attribute_embeds.to(self.dtype).repeat_interleave(frames, dim=0)
        # 3. Denoiser, with the pose features added after conv_in and the read mode passed to its processors.
        drop_bias = (None if drop_references is None or not read_mode.use_references
                     else reference_drop_bias(drop_references, frames, self.dtype))
        attention_kwargs = {"read_mode": read_mode, "drop_bias": drop_bias}
        latents = noisy_latents.to(self.dtype)
        self._pose_features = pose
        try:
            if self.has_motion_modules:
                return self.denoiser(latents, timesteps, context, cross_attention_kwargs=attention_kwargs).sample
            # The 2D UNet: (B, c, F, h, w) -> (B * F, c, h, w), each frame with its clip's timestep.
            timesteps = torch.as_tensor(timesteps, device=latents.device)
            if timesteps.ndim == 1:
                timesteps = timesteps.repeat_interleave(frames)
            out = self.denoiser(latents.transpose(1, 2).flatten(0, 1), timesteps, context,
                                cross_attention_kwargs=attention_kwargs).sample
            return out.unflatten(0, (batch, frames)).transpose(1, 2)
        finally:
            self._pose_features = None

    def forward(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, pose_frames: torch.Tensor,
                references: ReferenceInputs, drop_references: torch.Tensor | None = None) -> torch.Tensor:
        """One training prediction: references then denoiser. Shapes as `denoise`.

        drop_references: (B,) bool, the classifier-free-guidance drop of each sample (None: keep all). The
        reference nets always run, so every step has the same autograd graph (DDP's static graph needs no
        `find_unused_parameters`); a dropped sample's prediction is the unconditional branch's, as at inference.
        """
        self.encode_references(references)
        return self.denoise(noisy_latents, timesteps, pose_frames, references.attribute_embeds,
                            drop_references=drop_references)

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
        Stage 2: the denoiser's temporal layers (`motion_modules`) only; they must have been added
        (`add_motion_modules`).
        """
        if stage == 1:
            unreached = self.unreached_reference_parameters()

            def trainable(name: str) -> bool:
                if name.startswith("denoiser."):
                    return MOTION_MODULES not in name
                return name not in unreached
        elif stage == 2:
            if not self.has_motion_modules:
                raise ValueError("stage 2 trains the motion modules, and this model has none: call "
                                 "add_motion_modules(adapter) first")

            def trainable(name: str) -> bool:
                return name.startswith("denoiser.") and MOTION_MODULES in name
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
