"""Reference attention processors on one bare diffusers Attention, and the bank contract."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from model.reference_attention import (
    ATTRIBUTE,
    PORTRAIT,
    ReadMode,
    ReferenceBank,
    ReferenceReadProcessor,
    ReferenceWriteProcessor,
)

DIM, HEADS, TOKENS = 16, 2, 6


@pytest.fixture
def attn() -> Attention:
    torch.manual_seed(0)
    return Attention(query_dim=DIM, heads=HEADS, dim_head=DIM // HEADS).eval()


def reference_attention(attn: Attention, x: torch.Tensor, refs: torch.Tensor, bias: torch.Tensor | None = None
                        ) -> torch.Tensor:
    """Plain-softmax reference: x (L, C) attends to [x, refs] (L + R, C); bias over keys."""
    kv = torch.cat([x, refs])
    q = attn.to_q(x).unflatten(-1, (HEADS, -1)).transpose(0, 1)
    k = attn.to_k(kv).unflatten(-1, (HEADS, -1)).transpose(0, 1)
    v = attn.to_v(kv).unflatten(-1, (HEADS, -1)).transpose(0, 1)
    logits = q @ k.transpose(-1, -2) / math.sqrt(DIM // HEADS)
    if bias is not None:
        logits = logits + bias
    out = (logits.softmax(-1) @ v).transpose(0, 1).flatten(1)
    return attn.to_out[0](out)


def fill(bank: ReferenceBank, batch: int, attributes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    portrait = torch.randn(batch, TOKENS, DIM, generator=g)
    attribute = torch.randn(batch * attributes, TOKENS, DIM, generator=g)
    bank.write(PORTRAIT, "layer", portrait)
    bank.write(ATTRIBUTE, "layer", attribute)
    return portrait, attribute


def test_write_processor_is_stock_attention_and_records_its_input(attn: Attention) -> None:
    bank = ReferenceBank()
    x = torch.randn(2, TOKENS, DIM)
    stock = attn(x)
    attn.set_processor(ReferenceWriteProcessor(bank, PORTRAIT, "layer"))
    torch.testing.assert_close(attn(x), stock)
    assert bank.tokens(PORTRAIT)[0] is x


def test_read_without_references_is_stock_attention(attn: Attention) -> None:
    x = torch.randn(2, TOKENS, DIM)
    stock = attn(x)
    attn.set_processor(ReferenceReadProcessor(ReferenceBank(), "layer"))
    torch.testing.assert_close(attn(x), stock)


def test_read_concatenates_references_shared_by_every_frame(attn: Attention) -> None:
    bank = ReferenceBank()
    batch, frames, attributes = 2, 3, 2
    portrait, attribute = fill(bank, batch, attributes)
    attn.set_processor(ReferenceReadProcessor(bank, "layer"))
    x = torch.randn(batch * frames, TOKENS, DIM)
    out = attn(x)
    for row in range(batch * frames):
        b = row // frames  # frames of a sample are adjacent
        refs = torch.cat([portrait[b], attribute[b * attributes], attribute[b * attributes + 1]])
        torch.testing.assert_close(out[row], reference_attention(attn, x[row], refs), atol=1e-5, rtol=1e-5)
    # Reads never consume.
    assert len(bank) == 2
    torch.testing.assert_close(attn(x), out)


def test_attribute_weights_bias_the_logits_and_zero_removes_an_attribute(attn: Attention) -> None:
    bank = ReferenceBank()
    portrait, attribute = fill(bank, 1, 2)
    attn.set_processor(ReferenceReadProcessor(bank, "layer"))
    x = torch.randn(1, TOKENS, DIM)
    bank.mode = ReadMode(attribute_weights=(2.0, 0.5))
    bias = torch.cat([torch.zeros(2 * TOKENS), torch.full((TOKENS,), math.log(2.0)),
                      torch.full((TOKENS,), math.log(0.5))])
    expected = reference_attention(attn, x[0], torch.cat([portrait[0], attribute[0], attribute[1]]), bias)
    torch.testing.assert_close(attn(x)[0], expected, atol=1e-5, rtol=1e-5)
    bank.mode = ReadMode(attribute_weights=(1.0, 0.0))
    only_first = reference_attention(attn, x[0], torch.cat([portrait[0], attribute[0]]))
    torch.testing.assert_close(attn(x)[0], only_first, atol=1e-5, rtol=1e-5)


def test_interpolation_blends_two_single_attribute_outputs(attn: Attention) -> None:
    bank = ReferenceBank()
    portrait, attribute = fill(bank, 1, 2)
    attn.set_processor(ReferenceReadProcessor(bank, "layer"))
    x = torch.randn(1, TOKENS, DIM)
    first = reference_attention(attn, x[0], torch.cat([portrait[0], attribute[0]]))
    second = reference_attention(attn, x[0], torch.cat([portrait[0], attribute[1]]))
    for alpha in (0.0, 0.3, 1.0):
        bank.mode = ReadMode(alpha=alpha)
        torch.testing.assert_close(attn(x)[0], (1 - alpha) * first + alpha * second, atol=1e-5, rtol=1e-5)


def test_bank_overwrites_suspends_and_clears() -> None:
    bank = ReferenceBank()
    for seed in range(3):
        fill(bank, 1, 1, seed)
    assert len(bank) == 2
    with bank.suspended():
        assert bank.read("layer") is None
    assert bank.read("layer") is not None
    bank.clear()
    assert len(bank) == 0 and bank.read("layer") is None


def test_stock_processor_untouched_on_temporal_layers(model) -> None:
    for name, processor in model.denoiser.attn_processors.items():
        if "motion_modules" in name:
            assert isinstance(processor, AttnProcessor2_0), name
        elif name.endswith("attn1.processor"):
            assert isinstance(processor, ReferenceReadProcessor), name
    for net in (model.attribute_net, model.portrait_net):
        writers = [p for p in net.attn_processors.values() if isinstance(p, ReferenceWriteProcessor)]
        assert len(writers) == len(model.reference_layers) > 0
