"""Reference attention: how the two ReferenceNets talk to the denoiser.

The reference nets record the input of every spatial self-attention (`attn1`) in a
`ReferenceBank`; the denoiser's spatial self-attention of the same name then attends
to its own tokens concatenated with the portrait's and the attributes' tokens (same
projection weights, only the key count grows). Both sides are diffusers attention
processors installed by module name, so no UNet code is forked or patched, and the
temporal attentions (`motion_modules`) keep their stock processor.

Contract that makes gradient checkpointing and accumulation safe:
  * a write overwrites the slot of its (source, layer): recomputation during backward
    and repeated steps never grow the bank;
  * a read never consumes: a checkpointed block re-run during backward sees the same
    tensors, so gradients still reach the reference nets;
  * `clear()` is explicit, called by the owner after backward (or after sampling).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention

PORTRAIT = "portrait"
ATTRIBUTE = "attribute"


@dataclass(frozen=True)
class ReadMode:
    """How the attribute references are combined in the denoiser.

    alpha: None composes every attribute into one set of keys and values; a float
        requires exactly two attributes and blends the two attention outputs,
        `(1 - alpha) * out_1 + alpha * out_2`.
    attribute_weights: optional per-attribute weights for composition, applied as a
        `log(w)` bias on that attribute's attention logits (w = 0 removes it).
    """

    alpha: float | None = None
    attribute_weights: tuple[float, ...] | None = None


class ReferenceBank:
    """Reference tokens by (source, layer), shared by the write and read processors.

    Portrait tokens are stored as (B, L, C); attribute tokens as (B * N, L, C) with
    the N attributes of a sample adjacent (index b * N + n).
    """

    def __init__(self) -> None:
        self._tokens: dict[tuple[str, str], torch.Tensor] = {}
        self.mode = ReadMode()
        self._reading = True

    def write(self, source: str, layer: str, tokens: torch.Tensor) -> None:
        """Store `tokens` for (source, layer), replacing what was there."""
        self._tokens[(source, layer)] = tokens

    def read(self, layer: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The (portrait (B, L, C), attributes (B, N, L, C)) tokens of `layer`, or None.

        None when reading is suspended or nothing was recorded for the layer; the
        tokens stay in the bank (reads never consume).
        """
        if not self._reading:
            return None
        portrait = self._tokens.get((PORTRAIT, layer))
        attribute = self._tokens.get((ATTRIBUTE, layer))
        if portrait is None and attribute is None:
            return None
        if portrait is None or attribute is None:
            raise RuntimeError(f"reference bank holds only one of portrait/attribute for {layer}")
        batch = portrait.shape[0]
        if attribute.shape[0] % batch:
            raise RuntimeError(f"{attribute.shape[0]} attribute rows for a batch of {batch} at {layer}")
        return portrait, attribute.unflatten(0, (batch, -1))

    def clear(self) -> None:
        """Drop every stored tensor (and the graph it holds) and reset the read mode."""
        self._tokens.clear()
        self.mode = ReadMode()

    @contextlib.contextmanager
    def suspended(self) -> Iterator[None]:
        """Within this block the denoiser ignores the references (unconditional branch)."""
        previous, self._reading = self._reading, False
        try:
            yield
        finally:
            self._reading = previous

    def __len__(self) -> int:
        return len(self._tokens)

    def tokens(self, source: str) -> list[torch.Tensor]:
        """Every tensor recorded by `source`, in recording order."""
        return [tokens for (name, _), tokens in self._tokens.items() if name == source]


def _heads(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """(B, L, heads * d) -> (B, heads, L, d)."""
    return x.unflatten(-1, (attn.heads, -1)).transpose(1, 2)


def _attend(attn: Attention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
            bias: torch.Tensor | None = None) -> torch.Tensor:
    """SDPA over head-split tensors, returning (B, Lq, heads * d) before `to_out`."""
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias, scale=attn.scale)
    return out.transpose(1, 2).flatten(2)


def _finish(attn: Attention, out: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """Output projection, dropout, optional residual and rescale, as the stock processor."""
    out = attn.to_out[1](attn.to_out[0](out.to(residual.dtype)))
    if attn.residual_connection:
        out = out + residual
    return out / attn.rescale_output_factor


def _check_supported(attn: Attention) -> None:
    if attn.group_norm is not None or attn.spatial_norm is not None:
        raise NotImplementedError("reference attention supports plain self-attention layers only")


class ReferenceWriteProcessor:
    """Self-attention that also records its input tokens in the bank (reference nets)."""

    def __init__(self, bank: ReferenceBank, source: str, layer: str) -> None:
        self.bank, self.source, self.layer = bank, source, layer

    def __call__(self, attn: Attention, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None
                 ) -> torch.Tensor:
        """hidden_states: (B, L, C) -> (B, L, C)."""
        _check_supported(attn)
        self.bank.write(self.source, self.layer, hidden_states)
        query, key, value = (_heads(attn, proj(hidden_states)) for proj in (attn.to_q, attn.to_k, attn.to_v))
        return _finish(attn, _attend(attn, query, key, value), hidden_states)


class ReferenceReadProcessor:
    """Self-attention whose keys and values include the references (denoiser).

    The query has B * F rows (frames of a sample adjacent, the order of
    `UNetMotionModel`); the references have B rows and are shared by all F frames.
    Their key/value projections run once per sample, before the expansion to frames,
    so the reference cost of this layer does not grow with F.
    """

    def __init__(self, bank: ReferenceBank, layer: str) -> None:
        self.bank, self.layer = bank, layer

    def __call__(self, attn: Attention, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None
                 ) -> torch.Tensor:
        """hidden_states: (B * F, L, C) -> (B * F, L, C)."""
        _check_supported(attn)
        # 1. Own tokens.
        query = _heads(attn, attn.to_q(hidden_states))
        key = _heads(attn, attn.to_k(hidden_states))
        value = _heads(attn, attn.to_v(hidden_states))
        references = self.bank.read(self.layer)
        if references is None:
            return _finish(attn, _attend(attn, query, key, value), hidden_states)

        # 2. Reference keys/values, projected once per sample: (B, heads, L_ref, d).
        portrait, attributes = (r.to(hidden_states.dtype) for r in references)
        batch, num_attributes = attributes.shape[:2]
        if hidden_states.shape[0] % batch:
            raise RuntimeError(f"{hidden_states.shape[0]} query rows for {batch} reference samples")
        frames = hidden_states.shape[0] // batch

        def project(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return _heads(attn, attn.to_k(tokens)), _heads(attn, attn.to_v(tokens))

        def expand(x: torch.Tensor) -> torch.Tensor:
            # (B, ...) -> (B * F, ...), frames of a sample adjacent, like the query.
            return x.repeat_interleave(frames, dim=0)

        portrait_kv = project(portrait)
        attribute_kv = [project(attributes[:, n]) for n in range(num_attributes)]

        def attend_with(groups: list[tuple[torch.Tensor, torch.Tensor]], bias: torch.Tensor | None
                        ) -> torch.Tensor:
            keys = torch.cat([key] + [expand(k) for k, _ in groups], dim=2)
            values = torch.cat([value] + [expand(v) for _, v in groups], dim=2)
            return _attend(attn, query, keys, values, bias)

        # 3. Interpolation: blend two attention outputs (to_out is affine, so blending
        #    before it is the same as blending after it).
        mode = self.bank.mode
        if mode.alpha is not None:
            if num_attributes != 2:
                raise ValueError(f"interpolation needs exactly 2 attributes, got {num_attributes}")
            out_1 = attend_with([portrait_kv, attribute_kv[0]], None)
            out_2 = attend_with([portrait_kv, attribute_kv[1]], None)
            return _finish(attn, torch.lerp(out_1, out_2, mode.alpha), hidden_states)

        # 4. Composition: all attributes in the same keys/values, optionally weighted.
        bias = None
        if mode.attribute_weights is not None:
            if len(mode.attribute_weights) != num_attributes:
                raise ValueError(f"{len(mode.attribute_weights)} weights for {num_attributes} attributes")
            lengths = [key.shape[2], portrait_kv[0].shape[2]] + [k.shape[2] for k, _ in attribute_kv]
            logits = [0.0, 0.0] + [math.log(w) if w > 0 else -math.inf for w in mode.attribute_weights]
            bias = torch.cat([query.new_full((n,), b) for n, b in zip(lengths, logits)])[None, None, None]
        return _finish(attn, attend_with([portrait_kv, *attribute_kv], bias), hidden_states)


def spatial_self_attention_layers(unet: torch.nn.Module) -> list[str]:
    """Names (without `.processor`) of the spatial self-attentions of a diffusers UNet.

    Chosen by name: every `attn1` outside `motion_modules` (AnimateDiff's temporal
    attention uses the same block class, so selecting by class would hit it too).
    """
    return [
        name.removesuffix(".processor")
        for name in unet.attn_processors
        if name.endswith("attn1.processor") and "motion_modules" not in name
    ]


def install_reference_processors(unet: torch.nn.Module, bank: ReferenceBank, source: str | None) -> list[str]:
    """Install write processors (source given: a reference net) or read processors
    (source None: the denoiser) on every spatial self-attention of `unet`.

    Every other attention keeps its processor. Returns the layer names.
    """
    layers = set(spatial_self_attention_layers(unet))
    processors = {}
    for name, processor in unet.attn_processors.items():
        layer = name.removesuffix(".processor")
        if layer not in layers:
            processors[name] = processor
        elif source is None:
            processors[name] = ReferenceReadProcessor(bank, layer)
        else:
            processors[name] = ReferenceWriteProcessor(bank, source, layer)
    unet.set_attn_processor(processors)
    return sorted(layers)
