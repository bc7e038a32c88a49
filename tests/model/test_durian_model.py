"""DurianModel: what the references, masks and pose guider do, gradients and stages."""

from __future__ import annotations

import copy
from collections import Counter

import pytest
import torch
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.attention_processor import AttnProcessor2_0
from durian_testing import make_clip, make_references

from data_specs.model import model_flavour
from model.builders import random_motion_adapter
from model.durian import MOTION_MODULES, DurianModel, ReferenceInputs
from model.reference_attention import UNCONDITIONAL, ReadMode


def predict(model: DurianModel, references: ReferenceInputs, frames: int = 2, mode: ReadMode = ReadMode(),
            pose_frames: torch.Tensor | None = None) -> torch.Tensor:
    latents, timesteps, default_pose_frames = make_clip(frames=frames)
    pose_frames = default_pose_frames if pose_frames is None else pose_frames
    with torch.no_grad():
        model.encode_references(references)
        try:
            return model.denoise(latents, timesteps, pose_frames, references.attribute_embeds, mode)
        finally:
            model.clear_references()


def attribute(references: ReferenceInputs, index: int) -> ReferenceInputs:
    """The same references with attribute `index` alone."""
    return ReferenceInputs(references.portrait, references.attributes[:, index:index + 1],
                           references.identity_embeds, references.attribute_embeds[:, index:index + 1])


def test_references_change_the_output(model: DurianModel) -> None:
    references = make_references()
    with_refs = predict(model, references)
    assert with_refs.shape == (1, 4, 2, 16, 16)
    assert (with_refs - predict(model, references, mode=UNCONDITIONAL)).abs().max() > 1e-3
    other = make_references(seed=5)
    other.attribute_embeds = references.attribute_embeds  # same cross-attention tokens, other reference latents
    assert (with_refs - predict(model, other)).abs().max() > 1e-3


def test_masking_the_reference_changes_the_output(model: DurianModel) -> None:
    references = make_references()
    masked = copy.copy(references)
    masked.portrait = references.portrait.clone()
    masked.portrait[:, :4, :8] = 0  # hide the top half of the portrait latent...
    masked.portrait[:, 4:, :8] = 1  # ...and say so in the mask channel
    assert (predict(model, references) - predict(model, masked)).abs().max() > 1e-3


def test_untrained_pose_guider_adds_nothing_and_a_trained_one_does(model: DurianModel) -> None:
    references = make_references()
    other_pose = torch.rand(1, 3, 2, 64, 64, generator=torch.Generator().manual_seed(7))
    base = predict(model, references)
    torch.testing.assert_close(predict(model, references, pose_frames=other_pose), base, rtol=0, atol=0)
    torch.nn.init.normal_(model.pose_guider.conv_out.weight, std=0.1)
    assert (predict(model, references, pose_frames=other_pose) - base).abs().max() > 1e-3


def test_mask_channel_starts_at_zero_so_the_mask_alone_changes_nothing(model: DurianModel) -> None:
    references = make_references()
    other_mask = copy.copy(references)
    other_mask.portrait = references.portrait.clone()
    other_mask.portrait[:, 4] = 1 - other_mask.portrait[:, 4]
    torch.testing.assert_close(predict(model, other_mask), predict(model, references))


def test_interpolation_ends_and_zero_weight_are_the_single_attributes(model: DurianModel) -> None:
    """Through the whole model: reference attention and cross-attention both follow the read mode, so
    nothing of the other attribute leaks in (its latents nor its CLIP embedding)."""
    two = make_references(attributes=2)
    first, second = predict(model, attribute(two, 0)), predict(model, attribute(two, 1))
    assert (first - second).abs().max() > 1e-3
    torch.testing.assert_close(predict(model, two, mode=ReadMode(alpha=0.0)), first, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(predict(model, two, mode=ReadMode(alpha=1.0)), second, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(predict(model, two, mode=ReadMode(attribute_weights=(1.0, 0.0))), first,
                               atol=1e-5, rtol=1e-4)
    halfway = predict(model, two, mode=ReadMode(alpha=0.5))
    composed = predict(model, two)
    for out in (halfway, composed):
        assert torch.isfinite(out).all()
        assert min((out - first).abs().max(), (out - second).abs().max()) > 1e-4


def test_a_reference_layer_without_recorded_tokens_raises(model: DurianModel) -> None:
    latents, timesteps, pose_frames = make_clip()
    embeds = make_references().attribute_embeds
    with torch.no_grad():
        with pytest.raises(RuntimeError, match=f"{model.reference_layers[0]} found no recorded"):
            model.denoise(latents, timesteps, pose_frames, embeds)  # nothing encoded
        # Writers replaced behind the model's back (stock processors set on the reference nets): loud, not silent.
        model.attribute_net.set_attn_processor(AttnProcessor2_0())
        model.portrait_net.set_attn_processor(AttnProcessor2_0())
        model.encode_references(make_references())
        with pytest.raises(RuntimeError, match="found no recorded reference tokens"):
            model.denoise(latents, timesteps, pose_frames, embeds)
        # The documented unconditional branch reads none.
        assert model.denoise(latents, timesteps, pose_frames, embeds, UNCONDITIONAL).shape == latents.shape


def training_grads(model: DurianModel, checkpointing: bool, steps: int = 2
                   ) -> tuple[dict[str, torch.Tensor], Counter[str]]:
    """Accumulate gradients over `steps` micro-batches (the bank must not grow); also count the runs of every
    spatial transformer block of the three UNets."""
    if checkpointing:
        model.enable_gradient_checkpointing()
    trainable = model.select_trainable(1)
    runs: Counter[str] = Counter()
    for name, module in model.named_modules():
        if isinstance(module, BasicTransformerBlock) and "motion_modules" not in name:
            module.register_forward_pre_hook(lambda *_, name=name: runs.update([name]))
    model.zero_grad()
    sizes = []
    for step in range(steps):
        latents, timesteps, pose_frames = make_clip(seed=10 + step)
        loss = model(latents, timesteps, pose_frames, make_references(seed=step)).pow(2).mean()
        sizes.append(len(model.bank))
        loss.backward()
        model.clear_references()
        assert len(model.bank) == 0
    assert sizes == [sizes[0]] * steps and sizes[0] == 2 * len(model.reference_layers)
    assert all(p.grad is not None for p in trainable)
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, runs


def test_gradients_equal_with_and_without_checkpointing(model: DurianModel) -> None:
    """Both reference nets and the denoiser are checkpointed down to each spatial transformer block: every block
    runs again in backward, and the gradients are those of the plain run."""
    torch.nn.init.normal_(model.pose_guider.conv_out.weight, std=0.1)
    reference, plain_runs = training_grads(copy.deepcopy(model), checkpointing=False)
    checkpointed, checkpointed_runs = training_grads(model, checkpointing=True)
    assert {name.split(".")[0] for name in plain_runs} == {"attribute_net", "portrait_net", "denoiser"}
    assert checkpointed_runs == {name: 2 * count for name, count in plain_runs.items()}
    assert reference.keys() == checkpointed.keys()
    for net in ("attribute_net.", "portrait_net."):
        assert any(n.startswith(net) for n in reference)
    for name in reference:
        torch.testing.assert_close(checkpointed[name], reference[name], atol=1e-6, rtol=1e-4, msg=name)


def stage2_grads(model: DurianModel) -> tuple[dict[str, torch.Tensor], Counter[str]]:
    """One stage-2 training step's gradients, and the runs of every transformer block of the denoiser (the
    spatial ones and those inside the motion modules)."""
    model.select_trainable(2)
    runs: Counter[str] = Counter()
    for name, module in model.denoiser.named_modules():
        if isinstance(module, BasicTransformerBlock):
            module.register_forward_pre_hook(lambda *_, name=name: runs.update([name]))
    latents, timesteps, pose_frames = make_clip()
    model(latents, timesteps, pose_frames, make_references()).pow(2).mean().backward()
    model.clear_references()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, runs


def test_stage2_checkpoints_its_motion_modules_and_spatial_transformer_blocks(model: DurianModel) -> None:
    """diffusers' motion blocks checkpoint only their resnets; the spatial transformers checkpoint each block and
    the model checkpoints each motion module, when checkpointing was on before the motion modules' insertion
    (and after). Gradients are those of the plain run."""
    torch.nn.init.normal_(model.pose_guider.conv_out.weight, std=0.1)
    plain = copy.deepcopy(model)
    plain.add_motion_modules(random_motion_adapter(model_flavour("tiny")))
    model.enable_gradient_checkpointing()
    model.add_motion_modules(random_motion_adapter(model_flavour("tiny")))
    assert model.state_dict().keys() == plain.state_dict().keys()
    reference, plain_runs = stage2_grads(plain)
    checkpointed, runs = stage2_grads(model)
    assert set(plain_runs.values()) == {1} and runs.keys() == plain_runs.keys()
    assert any(MOTION_MODULES in name for name in runs)
    # Each runs in the forward and again in backward, but the first: before the first motion module nothing
    # needs a gradient (stage 2 trains the motion modules only), so no backward passes through it.
    first = "down_blocks.0.attentions.0.transformer_blocks.0"
    assert runs.pop(first) == 1 and set(runs.values()) == {2}
    assert reference.keys() == checkpointed.keys() and all(MOTION_MODULES in name for name in reference)
    for name in reference:
        torch.testing.assert_close(checkpointed[name], reference[name], atol=1e-6, rtol=1e-4, msg=name)
    # Off again: every block runs once.
    model.disable_gradient_checkpointing()
    model.zero_grad()
    assert set(stage2_grads(model)[1].values()) == {1}


def test_stage_selection(model: DurianModel) -> None:
    stage1 = {id(p) for p in model.select_trainable(1)}
    names1 = {n for n, p in model.named_parameters() if id(p) in stage1}
    unreached = model.unreached_reference_parameters()
    assert "attribute_net.conv_out.weight" in unreached and "portrait_net.conv_in.weight" not in unreached
    assert not names1 & unreached
    assert not any("motion_modules" in n for n in names1)
    assert {"pose_guider.conv_out.weight", "denoiser.conv_in.weight", "attribute_net.conv_in.weight"} <= names1
    # Every selected parameter really gets a gradient (DDP needs no find_unused_parameters).
    latents, timesteps, pose_frames = make_clip()
    model(latents, timesteps, pose_frames, make_references()).mean().backward()
    model.clear_references()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)

    with pytest.raises(ValueError, match="call add_motion_modules"):
        model.select_trainable(2)
    model.add_motion_modules(random_motion_adapter(model_flavour("tiny")))
    stage2 = model.select_trainable(2)
    names2 = {n for n, p in model.named_parameters() if p.requires_grad}
    assert len(stage2) == len(names2) > 0 and all("denoiser." in n and "motion_modules" in n for n in names2)
    # Frozen reference nets run without a graph: nothing of theirs is kept for backward.
    model.encode_references(make_references())
    assert not any(t.requires_grad for t in model.bank.tokens("portrait"))
    model.clear_references()


def test_a_dropped_sample_is_the_unconditional_branch_in_the_same_graph(model: DurianModel) -> None:
    """Per-sample classifier-free-guidance drop: the reference nets always run (one static graph for DDP), a
    dropped sample predicts what the unconditional branch predicts and sends the reference nets nothing."""
    torch.nn.init.normal_(model.pose_guider.conv_out.weight, std=0.1)
    model.select_trainable(1)
    latents, timesteps, pose_frames = make_clip(batch=2)
    references = make_references(batch=2)
    calls = []
    model.attribute_net.register_forward_pre_hook(lambda *_: calls.append(1))
    out = model(latents, timesteps, pose_frames, references, drop_references=torch.tensor([False, True]))
    assert calls == [1] and len(model.bank) == 2 * len(model.reference_layers)
    with torch.no_grad():
        unconditional = model.denoise(latents[1:], timesteps[1:], pose_frames[1:], references.attribute_embeds[1:],
                                      UNCONDITIONAL)
        kept = model.denoise(latents, timesteps, pose_frames, references.attribute_embeds)[:1]  # nothing dropped
    # The masked reference keys get a weight of exactly 0; what remains differs from the unconditional branch's
    # sum only in the order the softmax adds (rounding).
    torch.testing.assert_close(out[1:], unconditional, rtol=0, atol=1e-5)
    torch.testing.assert_close(out[:1], kept, rtol=0, atol=1e-6)
    assert (out[1:] - kept).abs().max() > 1e-3  # (the branches do differ)
    # The dropped sample's loss reaches every reference parameter the kept one does, with a gradient of exactly 0.
    out[1].pow(2).mean().backward(retain_graph=True)
    reference_grads = {n: p.grad for n, p in model.named_parameters() if n.startswith(("attribute_net.",
                                                                                       "portrait_net."))}
    assert all(g is not None and not g.any() for g in reference_grads.values() if g is not None)
    out[0].pow(2).mean().backward()
    model.clear_references()
    assert any(p.grad.abs().max() > 0 for n, p in model.named_parameters()
               if n.startswith("portrait_net.") and p.grad is not None)
