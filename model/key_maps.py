"""Parameter names of the original checkpoints in diffusers' terms: one declarative table per network.

The released Stable Diffusion 1.5 single file keeps the LDM names (`model.diffusion_model.input_blocks.1.0.
in_layers.0.weight`), AnimateDiff's `mm_sd_v15_v2.ckpt` its own (`...motion_modules.0.temporal_transformer.
transformer_blocks.0.attention_blocks.0.to_q.weight`). A table maps each original block prefix to a diffusers
block prefix plus the renames of the names inside that block; it is built from the network's block layout, so
the tiny flavour and SD 1.5 share it. `KeyMap` applies a table in both directions: `to_diffusers` when loading,
`to_original` to write a file in the original layout (the memory benchmark).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

# Original checkpoint prefixes of the networks inside the SD 1.5 single file.
LDM_UNET_PREFIX = "model.diffusion_model."
LDM_VAE_PREFIX = "first_stage_model."

# Names inside one block: original -> diffusers.
_UNET_RESNET = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
                "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
_VAE_RESNET = {"nin_shortcut": "conv_shortcut"}
_VAE_ATTENTION = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_MOTION_BLOCK = {"attention_blocks.0": "attn1", "attention_blocks.1": "attn2", "norms.0": "norm1",
                 "norms.1": "norm2", "ff_norm": "norm3"}

Block = tuple[str, str, Mapping[str, str]]  # (original prefix, diffusers prefix, inner renames)


class KeyMap:
    """Renames parameter keys between an original layout and diffusers', block by block.

    A key is renamed by its longest block prefix in the table; inside the block, a leading name found in
    the block's renames is replaced. A key under no block keeps its name (the two layouts agree there).
    """

    def __init__(self, blocks: Iterable[Block]) -> None:
        blocks = list(blocks)
        self._to_diffusers = {original: (target, dict(renames)) for original, target, renames in blocks}
        self._to_original = {target: (original, {new: old for old, new in renames.items()})
                             for original, target, renames in blocks}

    def to_diffusers(self, key: str) -> str:
        """The diffusers name of an original key (without the network's file prefix)."""
        return _rename(key, self._to_diffusers)

    def to_original(self, key: str) -> str:
        """The original name of a diffusers key."""
        return _rename(key, self._to_original)


def _rename(key: str, table: dict[str, tuple[str, dict[str, str]]]) -> str:
    parts = key.split(".")
    for end in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in table:
            target, renames = table[prefix]
            inner = ".".join(parts[end:])
            for old, new in renames.items():
                if inner.startswith(old + "."):
                    inner = new + inner[len(old):]
                    break
            return f"{target}.{inner}"
    return key


def unet_key_map(config: Mapping) -> KeyMap:
    """LDM `UNetModel` <-> diffusers `UNet2DConditionModel` (SD 1.x layout: `layers_per_block` an int).

    LDM numbers its blocks in one flat list per side: input block 0 is conv_in, then each level has
    `layers_per_block` (resnet, attention) blocks and, except the last, one downsampler; output blocks have one
    more layer per level, the upsampler riding on the level's last block after its attention (if any).
    """
    layers = config["layers_per_block"]
    levels = len(config["down_block_types"])
    blocks: list[Block] = [
        ("time_embed.0", "time_embedding.linear_1", {}), ("time_embed.2", "time_embedding.linear_2", {}),
        ("input_blocks.0.0", "conv_in", {}), ("out.0", "conv_norm_out", {}), ("out.2", "conv_out", {}),
        ("middle_block.0", "mid_block.resnets.0", _UNET_RESNET), ("middle_block.1", "mid_block.attentions.0", {}),
        ("middle_block.2", "mid_block.resnets.1", _UNET_RESNET),
    ]
    for level, block_type in enumerate(config["down_block_types"]):
        for layer in range(layers):
            index = 1 + level * (layers + 1) + layer
            blocks.append((f"input_blocks.{index}.0", f"down_blocks.{level}.resnets.{layer}", _UNET_RESNET))
            if "CrossAttn" in block_type:
                blocks.append((f"input_blocks.{index}.1", f"down_blocks.{level}.attentions.{layer}", {}))
        if level < levels - 1:
            downsampler = (level + 1) * (layers + 1)
            blocks.append((f"input_blocks.{downsampler}.0.op", f"down_blocks.{level}.downsamplers.0.conv", {}))
    for level, block_type in enumerate(config["up_block_types"]):
        attention = "CrossAttn" in block_type
        for layer in range(layers + 1):
            index = level * (layers + 1) + layer
            blocks.append((f"output_blocks.{index}.0", f"up_blocks.{level}.resnets.{layer}", _UNET_RESNET))
            if attention:
                blocks.append((f"output_blocks.{index}.1", f"up_blocks.{level}.attentions.{layer}", {}))
        if level < levels - 1:
            last = level * (layers + 1) + layers
            slot = 2 if attention else 1  # after the attention, if the level has one
            blocks.append((f"output_blocks.{last}.{slot}.conv", f"up_blocks.{level}.upsamplers.0.conv", {}))
    return KeyMap(blocks)


def vae_key_map(config: Mapping) -> KeyMap:
    """LDM `AutoencoderKL` <-> diffusers `AutoencoderKL`.

    The decoder's levels are numbered from the bottom in LDM (`up.0` is the last to run) and from the top in
    diffusers. The mid-block attention's projections are 1x1 convolutions in LDM and linear layers in
    diffusers: the same numbers, reshaped when loaded.
    """
    layers = config["layers_per_block"]
    levels = len(config["block_out_channels"])
    blocks: list[Block] = [("encoder.norm_out", "encoder.conv_norm_out", {}),
                           ("decoder.norm_out", "decoder.conv_norm_out", {})]
    for side in ("encoder", "decoder"):
        blocks += [(f"{side}.mid.block_1", f"{side}.mid_block.resnets.0", _VAE_RESNET),
                   (f"{side}.mid.block_2", f"{side}.mid_block.resnets.1", _VAE_RESNET),
                   (f"{side}.mid.attn_1", f"{side}.mid_block.attentions.0", _VAE_ATTENTION)]
    for level in range(levels):
        up = levels - 1 - level
        for layer in range(layers):
            blocks.append((f"encoder.down.{level}.block.{layer}", f"encoder.down_blocks.{level}.resnets.{layer}",
                           _VAE_RESNET))
        for layer in range(layers + 1):
            blocks.append((f"decoder.up.{up}.block.{layer}", f"decoder.up_blocks.{level}.resnets.{layer}", _VAE_RESNET))
        if level < levels - 1:
            blocks.append((f"encoder.down.{level}.downsample", f"encoder.down_blocks.{level}.downsamplers.0", {}))
            blocks.append((f"decoder.up.{up}.upsample", f"decoder.up_blocks.{level}.upsamplers.0", {}))
    return KeyMap(blocks)


def motion_key_map(config: Mapping) -> KeyMap:
    """AnimateDiff `VanillaTemporalModule`s <-> diffusers `MotionAdapter` (int layer counts, as in v1/v2).

    The original's per-attention `pos_encoder.pe` tables have no counterpart: diffusers computes one
    sinusoidal table per transformer block (`is_position_table` tells loaders to skip them).
    """
    levels = len(config["block_out_channels"])
    layers = config["motion_layers_per_block"]
    modules = [f"down_blocks.{level}.motion_modules.{m}" for level in range(levels) for m in range(layers)]
    modules += [f"up_blocks.{level}.motion_modules.{m}" for level in range(levels) for m in range(layers + 1)]
    if config["use_motion_mid_block"]:
        modules += [f"mid_block.motion_modules.{m}" for m in range(config["motion_mid_block_layers_per_block"])]
    blocks: list[Block] = []
    for module in modules:
        blocks.append((f"{module}.temporal_transformer", module, {}))
        for index in range(config["motion_transformer_layers_per_block"]):
            blocks.append((f"{module}.temporal_transformer.transformer_blocks.{index}",
                           f"{module}.transformer_blocks.{index}", _MOTION_BLOCK))
    return KeyMap(blocks)


def is_position_table(original_key: str) -> bool:
    """An AnimateDiff positional-encoding table (a fixed sinusoid that diffusers recomputes)."""
    return ".pos_encoder." in original_key
