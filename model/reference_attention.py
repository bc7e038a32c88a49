"""Reference attention: how the two ReferenceNets and the attribute embeddings reach the denoiser.

The reference nets record the input of every spatial self-attention (`attn1`) in a `ReferenceBank`; the
denoiser's spatial self-attention of the same name then attends to its own tokens concatenated with the
portrait's and the attributes' tokens (same projection weights, only the key count grows). The denoiser's
spatial cross-attention (`attn2`) attends to the attributes' CLIP embeddings. Both combine several attributes
the same way, as a `ReadMode` says: composed in one softmax (optionally weighted), or two interpolated by
blending their attention outputs with alpha (Eq. 14). All of them are diffusers attention processors installed
by module name, so no UNet code is forked or patched, and the temporal attentions (`motion_modules`) keep their
stock processor.

The read mode travels per call, as diffusers passes attention options: `cross_attention_kwargs={"read_mode":
mode}` reaches the processors of the denoiser's spatial transformers (never the motion modules), with the
per-sample reference drop of training as a logit bias built once per forward (`reference_drop_bias`). The bank
only holds tensors.

Contract that makes gradient checkpointing and accumulation safe:
  * a write overwrites the slot of its (source, layer): recomputation during backward and repeated steps
    never grow the bank;
  * a read never consumes: a checkpointed block re-run during backward sees the same tensors, so gradients
    still reach the reference nets (and it gets the same read mode: the mode is an argument of the call);
  * `clear()` is explicit, called by the owner after backward (or after sampling).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention

PORTRAIT = "portrait"
ATTRIBUTE = "attribute"

KeysValues = tuple[torch.Tensor, torch.Tensor]  # (B, heads, L, d) each


@dataclass(frozen=True)
class ReadMode:
    """How the denoiser reads the references in one call.

    use_references: False only in the unconditional branch of classifier-free guidance: the spatial
        self-attentions ignore the bank (and `DurianModel.denoise` zeroes the attribute embeddings). Anywhere
        else a layer that finds no references raises.
    alpha: None composes every attribute into one set of keys and values; a float in [0, 1] requires exactly
        two attributes and blends the two attention outputs, `(1 - alpha) * out_1 + alpha * out_2`.
    attribute_weights: optional per-attribute weights for composition, applied as a `log(w)` bias on that
        attribute's attention logits (w = 0 removes it).
    """

    use_references: bool = True
    alpha: float | None = None
    attribute_weights: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.alpha is not None and self.attribute_weights is not None:
            raise ValueError("alpha (interpolation) and attribute_weights (composition) exclude each other")
        if self.alpha is not None and not 0 <= self.alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.attribute_weights is not None and (min(self.attribute_weights) < 0
                                                   or max(self.attribute_weights) <= 0):
            raise ValueError(f"attribute weights must be >= 0, one at least > 0; got {self.attribute_weights}")


UNCONDITIONAL = ReadMode(use_references=False)


class ReferenceBank:
    """Reference tokens by (source, layer), shared by the write and read processors.

    Portrait tokens are stored as (B, L, C); attribute tokens as (B * N, L, C) with the N attributes of a
    sample adjacent (index b * N + n).
    """

    def __init__(self) -> None:
        self._tokens: dict[tuple[str, str], torch.Tensor] = {}

    def write(self, source: str, layer: str, tokens: torch.Tensor) -> None:
        """Store `tokens` for (source, layer), replacing what was there."""
        self._tokens[(source, layer)] = tokens

    def read(self, layer: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The (portrait (B, L, C), attributes (B, N, L, C)) tokens of `layer`, or None if none were recorded.

        The tokens stay in the bank (reads never consume).
        """
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
        """Drop every stored tensor (and the graph it holds)."""
        self._tokens.clear()

    def __len__(self) -> int:
        return len(self._tokens)

    def tokens(self, source: str) -> list[torch.Tensor]:
        """Every tensor recorded by `source`, in recording order."""
        return [tokens for (name, _), tokens in self._tokens.items() if name == source]


def _heads(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """(B, L, heads * d) -> (B, heads, L, d)."""
    return x.unflatten(-1, (attn.heads, -1)).transpose(1, 2)


def _project(attn: Attention, tokens: torch.Tensor) -> KeysValues:
    """Keys and values of `tokens` (B, L, C), head-split."""
    return _heads(attn, attn.to_k(tokens)), _heads(attn, attn.to_v(tokens))


GroupBias = float | torch.Tensor  # a logit bias for every key of a group: a float, or (rows, 1, 1, 1) per row


def _attend(attn: Attention, query: torch.Tensor, groups: list[KeysValues],
            group_bias: list[GroupBias] | None = None) -> torch.Tensor:
    """SDPA of head-split `query` over the concatenated key/value groups: (B, Lq, heads * d), before `to_out`.

    group_bias: optionally one logit bias per group, added to every key of the group (-inf removes them).
    """
    if len(groups) == 1:  # a cat of one tensor would still copy it (and slice its gradient in backward)
        key, value = groups[0]
    else:
        key = torch.cat([k for k, _ in groups], dim=2)
        value = torch.cat([v for _, v in groups], dim=2)
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    mask = None if group_bias is None else _key_bias([k.shape[2] for k, _ in groups], group_bias, query)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=attn.scale)
    return out.transpose(1, 2).flatten(2)


def _is_zero(bias: GroupBias) -> bool:
    return not isinstance(bias, torch.Tensor) and bias == 0


def _key_bias(lengths: list[int], group_bias: list[GroupBias], query: torch.Tensor) -> torch.Tensor:
    """The (rows, 1, 1, keys) logit bias of key groups of `lengths` (broadcast over heads and queries).

    Zero-bias groups at either end (the own tokens) are padding of the rest: with one biased group between,
    the mask costs two ops (an expand and a pad) whatever the group count.
    """
    start, stop = 0, len(lengths)
    while start < stop and _is_zero(group_bias[start]):
        start += 1
    while stop > start and _is_zero(group_bias[stop - 1]):
        stop -= 1
    rows = max(b.shape[0] if isinstance(b, torch.Tensor) else 1 for b in group_bias)
    middle = [torch.as_tensor(b, dtype=query.dtype, device=query.device).expand(rows, 1, 1, n)
              for b, n in zip(group_bias[start:stop], lengths[start:stop])]
    bias = middle[0] if len(middle) == 1 else torch.cat(middle, dim=-1)
    return F.pad(bias, (sum(lengths[:start]), sum(lengths[stop:])))


def _attend_attributes(attn: Attention, query: torch.Tensor, shared: list[KeysValues],
                       attributes: list[KeysValues], mode: ReadMode, shared_bias: list[GroupBias] | None = None,
                       attribute_bias: GroupBias = 0.0) -> torch.Tensor:
    """Attention over the `shared` groups plus one group per attribute, combined as `mode` says.

    shared_bias, attribute_bias: logit biases of the shared groups and of every attribute group (the
    per-sample reference drop), on top of the mode's attribute weights.
    Interpolation blends two outputs before `to_out`: `to_out` is affine, so this equals blending after it.
    """
    shared_bias = shared_bias or [0.0] * len(shared)
    plain = all(isinstance(b, float) and b == 0 for b in [*shared_bias, attribute_bias])
    if mode.alpha is not None:
        if len(attributes) != 2:
            raise ValueError(f"interpolation needs exactly 2 attributes, got {len(attributes)}")
        bias = None if plain else [*shared_bias, attribute_bias]
        first, second = (_attend(attn, query, [*shared, group], bias) for group in attributes)
        return torch.lerp(first, second, mode.alpha)
    groups = [*shared, *attributes]
    if mode.attribute_weights is None:
        return _attend(attn, query, groups, None if plain else [*shared_bias, *[attribute_bias] * len(attributes)])
    if len(mode.attribute_weights) != len(attributes):
        raise ValueError(f"{len(mode.attribute_weights)} weights for {len(attributes)} attributes")
    weights = [math.log(w) if w > 0 else -math.inf for w in mode.attribute_weights]
    return _attend(attn, query, groups, [*shared_bias, *[attribute_bias + w for w in weights]])


def _finish(attn: Attention, out: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """Output projection, dropout, optional residual and rescale, as the stock processor."""
    out = attn.to_out[1](attn.to_out[0](out.to(residual.dtype)))
    if attn.residual_connection:
        out = out + residual
    # A division by 1 (every SD 1.5 attention) is still a kernel, in forward and in backward: skipped.
    return out if attn.rescale_output_factor == 1 else out / attn.rescale_output_factor


def _check_supported(attn: Attention, attention_mask: torch.Tensor | None) -> None:
    if attn.group_norm is not None or attn.spatial_norm is not None or attn.norm_cross is not None:
        raise NotImplementedError("reference attention supports plain (un-normalised) attention layers only")
    if attention_mask is not None:
        raise NotImplementedError("reference attention takes no attention mask")


class ReferenceWriteProcessor:
    """Self-attention that also records its input tokens in the bank (reference nets)."""

    def __init__(self, bank: ReferenceBank, source: str, layer: str) -> None:
        self.bank, self.source, self.layer = bank, source, layer

    def __call__(self, attn: Attention, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None
                 ) -> torch.Tensor:
        """hidden_states: (B, L, C) -> (B, L, C)."""
        _check_supported(attn, attention_mask)
        self.bank.write(self.source, self.layer, hidden_states)
        query = _heads(attn, attn.to_q(hidden_states))
        return _finish(attn, _attend(attn, query, [_project(attn, hidden_states)]), hidden_states)


class _ReadModeProcessor:
    """A processor of the denoiser's spatial attentions: diffusers' processor call, plus the read mode that
    `cross_attention_kwargs` brings. Subclasses say what the query attends to (`attend`)."""

    def __call__(self, attn: Attention, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 read_mode: ReadMode = ReadMode(), drop_bias: torch.Tensor | None = None) -> torch.Tensor:
        """hidden_states: (B * F, L, C) -> (B * F, L, C); drop_bias: optional `reference_drop_bias`, the logit
        bias of every row's reference keys (the per-sample classifier-free-guidance drop of training)."""
        _check_supported(attn, attention_mask)
        query = _heads(attn, attn.to_q(hidden_states))
        out = self.attend(attn, query, hidden_states, encoder_hidden_states, read_mode, drop_bias)
        return _finish(attn, out, hidden_states)

    def attend(self, attn: Attention, query: torch.Tensor, hidden_states: torch.Tensor,
               encoder_hidden_states: torch.Tensor | None, read_mode: ReadMode,
               drop_bias: torch.Tensor | None) -> torch.Tensor:
        """The attention output before `to_out`: (B * F, L, heads * d)."""
        raise NotImplementedError


def reference_drop_bias(drop_references: torch.Tensor, frames: int, dtype: torch.dtype) -> torch.Tensor:
    """(B,) bool, the samples that read no references -> the (B * F, 1, 1, 1) logit bias of their rows'
    reference keys: -inf (zero attention weight) for a dropped sample's F frames, 0 otherwise. Built once per
    forward and shared by every reference layer."""
    bias = torch.zeros(drop_references.shape, dtype=dtype, device=drop_references.device)
    bias = bias.masked_fill(drop_references, -math.inf)
    return (bias if frames == 1 else bias.repeat_interleave(frames))[:, None, None, None]


class ReferenceReadProcessor(_ReadModeProcessor):
    """Self-attention whose keys and values include the references (denoiser).

    The query has B * F rows (frames of a sample adjacent, the order of `UNetMotionModel`); the references
    have B rows and are shared by all F frames. Their key/value projections run once per sample, before the
    expansion to frames, so the reference cost of this layer does not grow with F.
    """

    def __init__(self, bank: ReferenceBank, layer: str) -> None:
        self.bank, self.layer = bank, layer

    def attend(self, attn: Attention, query: torch.Tensor, hidden_states: torch.Tensor,
               encoder_hidden_states: torch.Tensor | None, read_mode: ReadMode,
               drop_bias: torch.Tensor | None) -> torch.Tensor:
        # 1. Own tokens.
        own = _project(attn, hidden_states)
        if not read_mode.use_references:
            return _attend(attn, query, [own])
        references = self.bank.read(self.layer)
        if references is None:
            raise RuntimeError(
                f"reference layer {self.layer} found no recorded reference tokens: run encode_references() "
                "before denoising (only the unconditional branch, ReadMode(use_references=False), reads none)")

        # 2. Reference keys/values, projected once per sample, then shared by its F frames.
        portrait, attributes = (r.to(hidden_states.dtype) for r in references)
        batch, num_attributes = attributes.shape[:2]
        if hidden_states.shape[0] % batch:
            raise RuntimeError(f"{hidden_states.shape[0]} query rows for {batch} reference samples at {self.layer}")
        frames = hidden_states.shape[0] // batch

        def per_frame(tokens: torch.Tensor) -> KeysValues:
            # (B, ...) -> (B * F, ...), frames of a sample adjacent, like the query.
            keys_values = _project(attn, tokens)
            return keys_values if frames == 1 else tuple(x.repeat_interleave(frames, dim=0) for x in keys_values)

        # 3. Dropped samples: their reference keys get a -inf logit, i.e. zero attention weight, so they attend to
        #    their own tokens only, as the unconditional branch does, in the same graph as the others.
        if read_mode.alpha is None and read_mode.attribute_weights is None:
            # Plain composition: one softmax over every reference token, so the portrait's and the attributes'
            # tokens are projected together (one key and one value projection per layer, not 1 + N of each).
            references = per_frame(torch.cat([portrait, attributes.flatten(1, 2)], dim=1))
            return _attend(attn, query, [own, references], None if drop_bias is None else [0.0, drop_bias])
        shared = [own, per_frame(portrait)]
        attribute_groups = [per_frame(attributes[:, n]) for n in range(num_attributes)]
        if drop_bias is None:
            return _attend_attributes(attn, query, shared, attribute_groups, read_mode)
        return _attend_attributes(attn, query, shared, attribute_groups, read_mode, shared_bias=[0.0, drop_bias],
                                  attribute_bias=drop_bias)


class AttributeCrossAttnProcessor(_ReadModeProcessor):
    """Cross-attention to the attribute embeddings that combines attributes as the read mode says (denoiser).

    The context (encoder_hidden_states, (B * F, N * T, D)) holds the N attributes' tokens in order, the
    same count T each (one CLIP image embedding each).
    """

    def attend(self, attn: Attention, query: torch.Tensor, hidden_states: torch.Tensor,
               encoder_hidden_states: torch.Tensor | None, read_mode: ReadMode,
               drop_bias: torch.Tensor | None) -> torch.Tensor:
        # A dropped sample's attribute embeddings arrive zeroed (`DurianModel.denoise`): nothing to mask here.
        if read_mode.alpha is not None:
            num_attributes = 2
        elif read_mode.attribute_weights is not None:
            num_attributes = len(read_mode.attribute_weights)
        else:  # plain composition: one softmax over every token
            return _attend(attn, query, [_project(attn, encoder_hidden_states)])
        if encoder_hidden_states.shape[1] % num_attributes:
            raise ValueError(f"{encoder_hidden_states.shape[1]} context tokens for {num_attributes} attributes")
        groups = [_project(attn, tokens) for tokens in encoder_hidden_states.chunk(num_attributes, dim=1)]
        return _attend_attributes(attn, query, [], groups, read_mode)


def spatial_attention_layers(unet: torch.nn.Module, name: str) -> list[str]:
    """Names (without `.processor`) of a diffusers UNet's spatial attentions called `name` (attn1: self,
    attn2: cross).

    Chosen by name, outside `motion_modules`: AnimateDiff's temporal attention uses the same block class
    (and the same attn1/attn2 names), so selecting by class would hit it too.
    """
    return sorted(
        layer.removesuffix(".processor")
        for layer in unet.attn_processors
        if layer.endswith(f".{name}.processor") and "motion_modules" not in layer
    )


def _install(unet: torch.nn.Module, replacements: dict[str, object]) -> None:
    """Set the processors of the layers in `replacements`; every other attention keeps its processor."""
    processors = {name: replacements.get(name.removesuffix(".processor"), processor)
                  for name, processor in unet.attn_processors.items()}
    unet.set_attn_processor(processors)


def install_reference_writers(net: torch.nn.Module, bank: ReferenceBank, source: str) -> list[str]:
    """Make every spatial self-attention of a reference net record its tokens under `source`.

    Returns the layer names.
    """
    layers = spatial_attention_layers(net, "attn1")
    _install(net, {layer: ReferenceWriteProcessor(bank, source, layer) for layer in layers})
    return layers


def install_reference_readers(denoiser: torch.nn.Module, bank: ReferenceBank) -> list[str]:
    """Make the denoiser's spatial self-attentions read the bank and its spatial cross-attentions combine the
    attributes by read mode. Returns the self-attention (reference) layer names."""
    layers = spatial_attention_layers(denoiser, "attn1")
    readers = {layer: ReferenceReadProcessor(bank, layer) for layer in layers}
    cross = {layer: AttributeCrossAttnProcessor() for layer in spatial_attention_layers(denoiser, "attn2")}
    _install(denoiser, {**readers, **cross})
    return layers
