"""Tiny inputs and checkpoint writers shared by the model tests (imported by module name: tests/model is no
package)."""

from __future__ import annotations

import re

import numpy as np
import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from data_specs.model import ModelFlavour
from model.durian import ReferenceInputs

LATENT = 16  # latent side of the tiny flavour (64 px / 4)
CROSS_DIM = 32  # the tiny flavour's cross-attention (CLIP projection) width
IDENTITY_DIM = 16  # the tiny flavour's ArcFace embedding width
# Synthetic face keypoints in a 64x64 frame, ArcFace's order: eyes, nose, mouth corners.
FACE = np.array([[24, 28], [40, 28], [32, 36], [26, 46], [38, 46]], np.float32)


def make_references(batch: int = 1, attributes: int = 1, seed: int = 0) -> ReferenceInputs:
    """Random reference inputs of the tiny flavour's shapes."""
    g = torch.Generator().manual_seed(seed)
    return ReferenceInputs(
        portrait=torch.randn(batch, 5, LATENT, LATENT, generator=g),
        attributes=torch.randn(batch, attributes, 5, LATENT, LATENT, generator=g),
        identity_embeds=torch.randn(batch, 1, IDENTITY_DIM, generator=g),
        attribute_embeds=torch.randn(batch, attributes, CROSS_DIM, generator=g),
    )


def make_clip(batch: int = 1, frames: int = 2, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(noisy latents (B, 4, F, 16, 16), timesteps (B,), pose frames (B, 3, F, 64, 64))."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 4, frames, LATENT, LATENT, generator=g), torch.full((batch,), 500),
            torch.rand(batch, 3, frames, 4 * LATENT, 4 * LATENT, generator=g))


def face_image(seed: int) -> np.ndarray:
    """A random 64x64 RGB uint8 image."""
    return np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)


# ---------------------------------------------------------------- original checkpoint layouts

_LDM_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
               "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_LDM_UNET_FIXED = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
                   "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
_LDM_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def ldm_unet_key(key: str, flavour: ModelFlavour) -> str:
    """The original LDM name of a diffusers UNet key: the reverse of the loader's map, written independently
    (one regular expression per diffusers block kind)."""
    layers = flavour.unet.layers_per_block
    stride = layers + 1
    module, _, leaf = key.rpartition(".")
    if module in _LDM_UNET_FIXED:
        return f"{_LDM_UNET_FIXED[module]}.{leaf}"
    if m := re.fullmatch(r"(down|up)_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)", module):
        side, level, layer, name = m[1], int(m[2]), int(m[3]), m[4]
        index = 1 + level * stride + layer if side == "down" else level * stride + layer
        return f"{'input' if side == 'down' else 'output'}_blocks.{index}.0.{_LDM_RESNET[name]}.{leaf}"
    if m := re.fullmatch(r"(down|up)_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", module):
        side, level, layer, rest = m[1], int(m[2]), int(m[3]), m[4]
        index = 1 + level * stride + layer if side == "down" else level * stride + layer
        return f"{'input' if side == 'down' else 'output'}_blocks.{index}.1.{rest}.{leaf}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv", module):
        return f"input_blocks.{(int(m[1]) + 1) * stride}.0.op.{leaf}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv", module):
        level = int(m[1])
        slot = 2 if "CrossAttn" in flavour.unet.up_block_types[level] else 1
        return f"output_blocks.{level * stride + layers}.{slot}.conv.{leaf}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d)\.(\w+)", module):
        return f"middle_block.{2 * int(m[1])}.{_LDM_RESNET[m[2]]}.{leaf}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", module):
        return f"middle_block.1.{m[1]}.{leaf}"
    raise KeyError(key)


def ldm_vae_key(key: str, flavour: ModelFlavour) -> str:
    """The original LDM name of a diffusers VAE key (written independently of the loader's map)."""
    levels = len(flavour.vae.block_out_channels)
    key = key.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")
    key = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", key)
    key = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", key)
    key = re.sub(r"decoder\.up_blocks\.(\d+)\.resnets\.", lambda m: f"decoder.up.{levels - 1 - int(m[1])}.block.", key)
    key = re.sub(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
                 lambda m: f"decoder.up.{levels - 1 - int(m[1])}.upsample.", key)
    key = re.sub(r"mid_block\.resnets\.(\d)\.", lambda m: f"mid.block_{int(m[1]) + 1}.", key)
    if m := re.fullmatch(r"(\w+)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)", key):
        return f"{m[1]}.mid.attn_1.{_LDM_VAE_ATTENTION[m[2]]}.{m[3]}"
    return key


def ldm_single_file_state(unet: torch.nn.Module, vae: torch.nn.Module, flavour: ModelFlavour
                          ) -> dict[str, torch.Tensor]:
    """An SD 1.x single-file state dict of `unet` and `vae` in the original layout, with the extra entries the
    released file carries (text encoder, schedule buffers, EMA bookkeeping) that a loader must skip."""
    state = {f"model.diffusion_model.{ldm_unet_key(k, flavour)}": v.clone() for k, v in unet.state_dict().items()}
    for key, value in vae.state_dict().items():
        original = ldm_vae_key(key, flavour)
        if ".mid.attn_1." in original and original.endswith("weight") and value.ndim == 2:
            value = value[:, :, None, None]  # LDM's attention projections are 1x1 convolutions
        state[f"first_stage_model.{original}"] = value.clone()
    state["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"] = torch.randn(10, 8)
    state["alphas_cumprod"] = torch.linspace(1, 0, 10)
    state["model_ema.decay"] = torch.tensor(0.9999)
    return state


def original_animatediff_state_dict(flavour: ModelFlavour, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random motion module in the key layout of the original mm_sd_v15_v2.ckpt
    (guoyww/AnimateDiff `VanillaTemporalModule`), for the flavour's widths."""
    g = torch.Generator().manual_seed(seed)
    channels = flavour.unet.block_out_channels
    layers = flavour.unet.layers_per_block
    modules = [(f"down_blocks.{i}", c, layers) for i, c in enumerate(channels)]
    modules += [(f"up_blocks.{i}", c, layers + 1) for i, c in enumerate(reversed(channels))]
    modules += [("mid_block", channels[-1], 1)]
    state = {}
    for block, c, count in modules:
        for m in range(count):
            t = f"{block}.motion_modules.{m}.temporal_transformer"
            shapes = {f"{t}.norm.weight": (c,), f"{t}.norm.bias": (c,), f"{t}.proj_in.weight": (c, c),
                      f"{t}.proj_in.bias": (c,), f"{t}.proj_out.weight": (c, c), f"{t}.proj_out.bias": (c,)}
            b = f"{t}.transformer_blocks.0"
            for a in (0, 1):
                for proj in ("to_q", "to_k", "to_v"):
                    shapes[f"{b}.attention_blocks.{a}.{proj}.weight"] = (c, c)
                shapes[f"{b}.attention_blocks.{a}.to_out.0.weight"] = (c, c)
                shapes[f"{b}.attention_blocks.{a}.to_out.0.bias"] = (c,)
                shapes[f"{b}.attention_blocks.{a}.pos_encoder.pe"] = (1, flavour.motion.motion_max_seq_length, c)
                shapes[f"{b}.norms.{a}.weight"] = shapes[f"{b}.norms.{a}.bias"] = (c,)
            shapes.update({f"{b}.ff.net.0.proj.weight": (8 * c, c), f"{b}.ff.net.0.proj.bias": (8 * c,),
                           f"{b}.ff.net.2.weight": (c, 4 * c), f"{b}.ff.net.2.bias": (c,),
                           f"{b}.ff_norm.weight": (c,), f"{b}.ff_norm.bias": (c,)})
            state.update({k: torch.randn(s, generator=g) for k, s in shapes.items()})
    return state


# ---------------------------------------------------------------- memory


class PeakTensorBytes(TorchDispatchMode):
    """Counts the bytes of CPU tensor storage alive at once while active, at every op that returns a tensor.

    Storages are tracked by weak reference, so a tensor freed as soon as it is used (a loaded weight after its
    cast) stops counting. Only storage created or touched while the mode is active is seen.
    """

    def __init__(self) -> None:
        super().__init__()
        self._live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 (torch's signature)
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor) and tensor.device.type == "cpu":
                storage = tensor.untyped_storage()
                self._live[storage.data_ptr()] = (StorageWeakRef(storage), storage.nbytes())
        self._live = {ptr: entry for ptr, entry in self._live.items() if not entry[0].expired()}
        self.peak = max(self.peak, sum(size for _, size in self._live.values()))
        return out


def module_bytes(*modules: torch.nn.Module) -> int:
    """Bytes of every parameter and buffer of `modules`."""
    return sum(t.numel() * t.element_size() for m in modules for t in [*m.parameters(), *m.buffers()])
