"""Reference attention processors on one bare diffusers Attention, and the bank contract."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from model.reference_attention import (
    ATTRIBUTE,
    PORTRAIT,
    UNCONDITIONAL,
    AttributeCrossAttnProcessor,
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


def plain_attention(attn: Attention, x: torch.Tensor, kv: torch.Tensor, bias: torch.Tensor | None = None
                    ) -> torch.Tensor:
    """Plain-softmax reference: x (L, C) attends to kv (L', C); bias over keys."""
    q = attn.to_q(x).unflatten(-1, (HEADS, -1)).transpose(0, 1)
    k = attn.to_k(kv).unflatten(-1, (HEADS, -1)).transpose(0, 1)
    v = attn.to_v(kv).unflatten(-1, (HEADS, -1)).transpose(0, 1)
    logits = q @ k.transpose(-1, -2) / math.sqrt(DIM // HEADS)
    if bias is not None:
        logits = logits + bias
    out = (logits.softmax(-1) @ v).transpose(0, 1).flatten(1)
    return attn.to_out[0](out)


def reference_attention(attn: Attention, x: torch.Tensor, refs: torch.Tensor, bias: torch.Tensor | None = None
                        ) -> torch.Tensor:
    """x (L, C) attends to [x, refs]."""
    return plain_attention(attn, x, torch.cat([x, refs]), bias)


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


def test_unconditional_read_is_stock_attention(attn: Attention) -> None:
    x = torch.randn(2, TOKENS, DIM)
    stock = attn(x)
    bank = ReferenceBank()
    fill(bank, 2, 1)  # present, and still ignored
    attn.set_processor(ReferenceReadProcessor(bank, "layer"))
    torch.testing.assert_close(attn(x, read_mode=UNCONDITIONAL), stock)


def test_a_reference_layer_without_tokens_fails_loudly(attn: Attention) -> None:
    attn.set_processor(ReferenceReadProcessor(ReferenceBank(), "down_blocks.0.attentions.0.transformer_blocks.0.attn1"))
    with pytest.raises(RuntimeError, match=r"down_blocks\.0\.attentions\.0\.transformer_blocks\.0\.attn1 found no"):
        attn(torch.randn(1, TOKENS, DIM))


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
    bias = torch.cat([torch.zeros(2 * TOKENS), torch.full((TOKENS,), math.log(2.0)),
                      torch.full((TOKENS,), math.log(0.5))])
    expected = reference_attention(attn, x[0], torch.cat([portrait[0], attribute[0], attribute[1]]), bias)
    torch.testing.assert_close(attn(x, read_mode=ReadMode(attribute_weights=(2.0, 0.5)))[0], expected,
                               atol=1e-5, rtol=1e-5)
    only_first = reference_attention(attn, x[0], torch.cat([portrait[0], attribute[0]]))
    torch.testing.assert_close(attn(x, read_mode=ReadMode(attribute_weights=(1.0, 0.0)))[0], only_first,
                               atol=1e-5, rtol=1e-5)


def test_interpolation_blends_two_single_attribute_outputs(attn: Attention) -> None:
    bank = ReferenceBank()
    portrait, attribute = fill(bank, 1, 2)
    attn.set_processor(ReferenceReadProcessor(bank, "layer"))
    x = torch.randn(1, TOKENS, DIM)
    first = reference_attention(attn, x[0], torch.cat([portrait[0], attribute[0]]))
    second = reference_attention(attn, x[0], torch.cat([portrait[0], attribute[1]]))
    for alpha in (0.0, 0.3, 1.0):
        torch.testing.assert_close(attn(x, read_mode=ReadMode(alpha=alpha))[0], (1 - alpha) * first + alpha * second,
                                   atol=1e-5, rtol=1e-5)


def test_cross_attention_combines_attributes_like_the_references(attn: Attention) -> None:
    x = torch.randn(2, TOKENS, DIM)
    context = torch.randn(2, 2, DIM)  # two attributes, one token each
    stock = attn(x, context)
    attn.set_processor(AttributeCrossAttnProcessor())
    torch.testing.assert_close(attn(x, context), stock)  # composition: one softmax over every token
    first = torch.stack([plain_attention(attn, x[b], context[b, :1]) for b in range(2)])
    second = torch.stack([plain_attention(attn, x[b], context[b, 1:]) for b in range(2)])
    for alpha in (0.0, 0.3, 1.0):
        torch.testing.assert_close(attn(x, context, read_mode=ReadMode(alpha=alpha)),
                                   (1 - alpha) * first + alpha * second, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attn(x, context, read_mode=ReadMode(attribute_weights=(1.0, 0.0))), first,
                               atol=1e-5, rtol=1e-5)


def test_read_mode_rejects_contradictions() -> None:
    with pytest.raises(ValueError, match="exclude"):
        ReadMode(alpha=0.5, attribute_weights=(1.0, 1.0))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ReadMode(alpha=1.5)
    with pytest.raises(ValueError, match="one at least > 0"):
        ReadMode(attribute_weights=(0.0, 0.0))


def test_bank_overwrites_and_clears() -> None:
    bank = ReferenceBank()
    for seed in range(3):
        fill(bank, 1, 1, seed)
    assert len(bank) == 2 and bank.read("layer") is not None
    bank.clear()
    assert len(bank) == 0 and bank.read("layer") is None


def test_processors_are_chosen_by_name(model) -> None:
    for name, processor in model.denoiser.attn_processors.items():
        if "motion_modules" in name:
            assert isinstance(processor, AttnProcessor2_0), name
        elif name.endswith("attn1.processor"):
            assert isinstance(processor, ReferenceReadProcessor), name
        else:
            assert isinstance(processor, AttributeCrossAttnProcessor), name
    for net in (model.attribute_net, model.portrait_net):
        writers = [p for p in net.attn_processors.values() if isinstance(p, ReferenceWriteProcessor)]
        assert len(writers) == len(model.reference_layers) > 0
        assert all(isinstance(p, AttnProcessor2_0) for n, p in net.attn_processors.items() if "attn2" in n)
