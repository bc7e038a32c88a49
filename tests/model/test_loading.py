"""Checkpoint compatibility: SD 1.5-layout UNets, AnimateDiff .ckpt, ArcFace, save/load round trips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers import MotionAdapter, UNet2DConditionModel

from data_specs.model import ModelFlavour
from model.builders import (
    durian_from_unet,
    identity_motion_adapter,
    load_motion_adapter,
    pretrained_components,
    random_components,
    reference_net_from_unet,
)
from model.durian import DurianModel
from model.encoders import IResNet, identity_embeds
from durian_testing import FACE, make_clip, make_references


def test_sd15_layout_unet_loads_into_every_network(tiny: ModelFlavour) -> None:
    torch.manual_seed(3)
    unet = UNet2DConditionModel(**tiny.unet.diffusers_config())  # SD 1.5 block layout, tiny widths
    adapter = MotionAdapter(**tiny.motion.diffusers_config(tiny.unet))
    model = durian_from_unet(unet, adapter, tiny.pose_guider_channels, identity_dim=16)
    source = unet.state_dict()
    for net in (model.attribute_net, model.portrait_net):
        loaded = net.state_dict()
        assert loaded.keys() == source.keys()
        differing = [k for k in source if loaded[k].shape != source[k].shape or not torch.equal(loaded[k], source[k])]
        assert differing == ["conv_in.weight"]  # the only expected difference: the extra mask channel
        torch.testing.assert_close(loaded["conv_in.weight"][:, :4], source["conv_in.weight"], rtol=0, atol=0)
        assert loaded["conv_in.weight"].shape[1] == 5 and not loaded["conv_in.weight"][:, 4].any()
    denoiser = model.denoiser.state_dict()
    assert set(source) <= set(denoiser)
    assert all("motion_modules" in k for k in set(denoiser) - set(source))
    assert all(torch.equal(denoiser[k], source[k]) for k in source)
    for k, v in adapter.state_dict().items():
        block = k.split(".motion_modules.")[0]
        torch.testing.assert_close(denoiser[f"{block}.motion_modules.{k.split('.motion_modules.')[1]}"], v)
    # Pretrained behaviour at init: the 5-channel net computes what the SD UNet computes, whatever the mask.
    sample, context = torch.randn(1, 4, 16, 16), torch.randn(1, 3, 32)
    with torch.no_grad():
        expected = unet(sample, 10, context).sample
        got = model.attribute_net(torch.cat([sample, torch.rand(1, 1, 16, 16)], 1), 10, context).sample
        model.clear_references()
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


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


def test_original_motion_checkpoint_loads_through_the_adapter_path(tiny: ModelFlavour, tmp_path: Path) -> None:
    original = original_animatediff_state_dict(tiny)
    path = tmp_path / "mm_sd_v15_v2.ckpt"
    torch.save(original, path)
    adapter = load_motion_adapter(path, tiny)
    # Every learned tensor arrives (the positional encodings are fixed sinusoids diffusers recomputes).
    loaded = {k: v for k, v in adapter.state_dict().items() if not k.endswith("pos_embed.pe")}
    learned = {k: v for k, v in original.items() if not k.endswith("pos_encoder.pe")}
    assert len(loaded) == len(learned)
    by_value = {v.sum().item(): v for v in loaded.values()}
    for key, value in learned.items():
        match = by_value.get(value.sum().item())
        assert match is not None and torch.equal(match, value), key
    # And it builds the denoiser.
    unet = UNet2DConditionModel(**tiny.unet.diffusers_config())
    model = durian_from_unet(unet, adapter, tiny.pose_guider_channels, identity_dim=16)
    torch.testing.assert_close(
        model.denoiser.state_dict()["mid_block.motion_modules.0.proj_in.weight"],
        original["mid_block.motion_modules.0.temporal_transformer.proj_in.weight"])


def test_arcface_iresnet_loads_insightface_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    state = IResNet("r18", embedding_dim=16).state_dict()
    assert {"conv1.weight", "prelu.weight", "layer1.0.bn1.weight", "layer2.0.downsample.0.weight",
            "bn2.weight", "fc.weight", "features.weight"} <= set(state)
    torch.save(state, tmp_path / "backbone.pth")
    encoder = IResNet.from_insightface(tmp_path / "backbone.pth", "r18")
    assert all(torch.equal(encoder.state_dict()[k], v) for k, v in state.items())
    images = torch.rand(2, 3, 64, 64)
    embeds = identity_embeds(images, np.stack([FACE, FACE + 1]), encoder, image_encoder=None)
    assert embeds.shape == (2, 1, 16)
    torch.testing.assert_close(embeds.norm(dim=-1), torch.ones(2, 1))


def test_reference_net_keeps_the_source_dtype(tiny: ModelFlavour) -> None:
    unet = UNet2DConditionModel(**tiny.unet.diffusers_config()).to(torch.bfloat16)
    assert reference_net_from_unet(unet).dtype == torch.bfloat16


def test_save_pretrained_round_trips_exactly(model: DurianModel, tmp_path: Path) -> None:
    torch.nn.init.normal_(model.pose_guider.conv_out.weight)  # no zero tensors hiding a bad load
    model.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    loaded = DurianModel.from_pretrained(tmp_path)
    original_state, loaded_state = model.state_dict(), loaded.state_dict()
    assert original_state.keys() == loaded_state.keys()
    assert all(torch.equal(original_state[k], loaded_state[k]) for k in original_state)
    latents, timesteps, guidance = make_clip()
    references = make_references()
    with torch.no_grad():
        outputs = [m(latents, timesteps, guidance, references) for m in (model, loaded)]
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)


def test_pretrained_components_from_local_folders(tiny: ModelFlavour, tmp_path: Path) -> None:
    """An SD 1.5 diffusers folder, the original motion .ckpt, the sd-image-variations
    encoder folder and ArcFace weights, all local."""
    parts = random_components(tiny, seed=5)
    unet = UNet2DConditionModel(**tiny.unet.diffusers_config())
    unet.save_pretrained(tmp_path / "sd15" / "unet")
    parts.vae.save_pretrained(tmp_path / "sd15" / "vae")
    parts.image_encoder.save_pretrained(tmp_path / "variations" / "image_encoder")
    torch.save(original_animatediff_state_dict(tiny), tmp_path / "mm_sd_v15_v2.ckpt")
    torch.save(IResNet("r18", embedding_dim=16).state_dict(), tmp_path / "backbone.pth")
    loaded = pretrained_components(
        tiny, sd15=str(tmp_path / "sd15"), motion_adapter=str(tmp_path / "mm_sd_v15_v2.ckpt"),
        image_encoder=str(tmp_path / "variations"), arcface=str(tmp_path / "backbone.pth"), arcface_arch="r18")
    assert torch.equal(loaded.model.denoiser.state_dict()["conv_out.weight"], unet.state_dict()["conv_out.weight"])
    key = "decoder.conv_out.weight"
    assert torch.equal(loaded.vae.state_dict()[key], parts.vae.state_dict()[key])
    assert loaded.identity_encoder is not None and loaded.model.identity_proj.in_features == 16


def test_stage1_denoiser_without_temporal_layers_is_the_sd_unet(tiny: ModelFlavour) -> None:
    torch.manual_seed(4)
    unet = UNet2DConditionModel(**tiny.unet.diffusers_config())
    model = durian_from_unet(unet, identity_motion_adapter(tiny), tiny.pose_guider_channels, identity_dim=16)
    latents, timesteps, guidance = make_clip(frames=3)
    context = torch.randn(1, 1, 32)
    with torch.no_grad():
        video = model.denoise(latents, timesteps, guidance, context, use_references=False)
        frames = unet(latents[0].transpose(0, 1), timesteps, context.expand(3, -1, -1)).sample
    torch.testing.assert_close(video[0].transpose(0, 1), frames, atol=1e-5, rtol=1e-5)
