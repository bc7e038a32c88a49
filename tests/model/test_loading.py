"""Checkpoint compatibility: building from an SD UNet, the original SD 1.5 single file, the original AnimateDiff
.ckpt, the sd-image-variations encoder and ArcFace weights, offline and within memory; pickles read safely;
save/load round trips."""

from __future__ import annotations

import copy
import socket
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel
from durian_testing import (
    FACE,
    PeakTensorBytes,
    ldm_single_file_state,
    make_clip,
    make_references,
    module_bytes,
    original_animatediff_state_dict,
)
from safetensors.torch import save_file

from data_specs.model import ModelFlavour, PretrainedPaths
from model.builders import (
    DurianComponents,
    load_identity_encoder,
    load_image_encoder,
    load_motion_adapter,
    load_sd15,
    load_vae,
    pretrained_components,
    random_components,
    random_motion_adapter,
)
from model.durian import DurianModel
from model.encoders import IResNet, identity_embeds
from model.reference_attention import UNCONDITIONAL
from weight_files.pickles import CheckpointError
from weight_files.tensors import weights_fingerprint


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection fails the test."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the network was used")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def sd_parts(tiny: ModelFlavour) -> tuple[UNet2DConditionModel, AutoencoderKL]:
    """A random UNet and VAE of the flavour, no tensor zero (a bad load cannot hide)."""
    torch.manual_seed(3)
    unet = UNet2DConditionModel(**tiny.unet.diffusers_config())
    vae = AutoencoderKL(**tiny.vae.diffusers_config())
    for tensor in [*unet.parameters(), *vae.parameters()]:
        torch.nn.init.normal_(tensor.data)
    return unet, vae


def fake_lightning_callback(monkeypatch: pytest.MonkeyPatch) -> type:
    """A class importable as pytorch_lightning's ModelCheckpoint, for writing a legacy-style .ckpt."""
    names = ["pytorch_lightning", "pytorch_lightning.callbacks", "pytorch_lightning.callbacks.model_checkpoint"]
    for name in names:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    callback = type("ModelCheckpoint", (), {"__module__": names[-1]})
    sys.modules[names[-1]].ModelCheckpoint = callback
    return callback


def assert_same_tensors(loaded: torch.nn.Module, source: dict[str, torch.Tensor]) -> None:
    state = loaded.state_dict()
    assert state.keys() == source.keys()
    different = [k for k in source if not torch.equal(state[k], source[k])]
    assert not different, different[:5]


# ---------------------------------------------------------------- DurianModel from an SD UNet


def test_from_unet2d_builds_every_network_once_from_the_sd_unet(tiny: ModelFlavour) -> None:
    torch.manual_seed(3)
    unet = UNet2DConditionModel(**tiny.unet.diffusers_config())  # SD 1.5 block layout, tiny widths
    adapter = MotionAdapter(**tiny.motion.diffusers_config(tiny.unet))
    source, motion = copy.deepcopy(unet).state_dict(), adapter.state_dict()
    sample, context = torch.randn(1, 4, 16, 16), torch.randn(1, 3, 32)
    with torch.no_grad():
        expected = unet(sample, 10, context).sample
    model = DurianModel.from_unet2d(unet, adapter, tiny.pose_guider_channels, identity_dim=16)
    # The sources are emptied: the denoiser took their tensors, nothing is held twice.
    assert all(p.is_meta for p in [*unet.parameters(), *adapter.parameters()])
    for net in (model.attribute_net, model.portrait_net):
        loaded = net.state_dict()
        assert loaded.keys() == source.keys()
        differing = [k for k in source if loaded[k].shape != source[k].shape or not torch.equal(loaded[k], source[k])]
        assert differing == ["conv_in.weight"]  # the only expected difference: the extra mask channel
        torch.testing.assert_close(loaded["conv_in.weight"][:, :4], source["conv_in.weight"], rtol=0, atol=0)
        assert loaded["conv_in.weight"].shape[1] == 5 and not loaded["conv_in.weight"][:, 4].any()
    assert model.attribute_net.conv_in.weight.data_ptr() != model.portrait_net.conv_in.weight.data_ptr()
    assert model.has_motion_modules
    assert_same_tensors(model.denoiser, {**source, **motion})
    # Pretrained behaviour at init: the 5-channel net computes what the SD UNet computes, whatever the mask.
    with torch.no_grad():
        got = model.attribute_net(torch.cat([sample, torch.rand(1, 1, 16, 16)], 1), 10, context).sample
        model.clear_references()
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_from_unet2d_keeps_the_source_dtype(tiny: ModelFlavour) -> None:
    unet = UNet2DConditionModel(**tiny.unet.diffusers_config()).to(torch.bfloat16)
    model = DurianModel.from_unet2d(unet, None, tiny.pose_guider_channels, 16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    model.add_motion_modules(random_motion_adapter(tiny))  # a float32 adapter, cast tensor by tensor
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_stage1_denoiser_is_the_sd_unet(tiny: ModelFlavour) -> None:
    torch.manual_seed(4)
    unet = UNet2DConditionModel(**tiny.unet.diffusers_config())
    reference = copy.deepcopy(unet)
    model = DurianModel.from_unet2d(unet, None, tiny.pose_guider_channels, 16)
    assert type(model.denoiser) is UNet2DConditionModel and not model.has_motion_modules
    latents, timesteps, pose_frames = make_clip(frames=3)
    with torch.no_grad():
        video = model.denoise(latents, timesteps, pose_frames, torch.randn(1, 1, 32), UNCONDITIONAL)
        frames = reference(latents[0].transpose(0, 1), timesteps, torch.zeros(3, 1, 32)).sample
    torch.testing.assert_close(video[0].transpose(0, 1), frames, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- the two stages


def test_stage1_has_no_temporal_layers_and_stage2_adds_the_adapters_bit_for_bit(components: DurianComponents,
                                                                               tiny: ModelFlavour) -> None:
    model = components.model
    assert not model.has_motion_modules
    assert not any("motion" in name for name, _ in [*model.named_parameters(), *model.named_modules()])
    ran: set[str] = set()
    hook = torch.nn.modules.module.register_module_forward_hook(lambda m, *_: ran.add(type(m).__name__))
    try:
        latents, timesteps, pose_frames = make_clip(frames=3)
        with torch.no_grad():
            model(latents, timesteps, pose_frames, make_references())
        model.clear_references()
    finally:
        hook.remove()
    assert "BasicTransformerBlock" in ran and not any("Motion" in name or "3D" in name for name in ran)

    stage1 = {k: v.clone() for k, v in model.state_dict().items()}
    readers = list(model.reference_layers)
    adapter = random_motion_adapter(tiny, seed=1)
    for tensor in adapter.parameters():  # no zero tensors (diffusers zero-inits proj_out) hiding a bad insert
        torch.nn.init.normal_(tensor.data)
    motion = {f"denoiser.{k}": v.clone() for k, v in adapter.state_dict().items()}
    model.add_motion_modules(adapter)
    assert model.has_motion_modules and model.reference_layers == readers
    assert model.config.denoiser_config["down_block_types"] == ["CrossAttnDownBlockMotion", "DownBlockMotion"]
    state = model.state_dict()
    assert state.keys() == stage1.keys() | motion.keys() and all("motion_modules" in k for k in motion)
    assert not [k for k in stage1 if not torch.equal(state[k], stage1[k])]
    assert not [k for k in motion if not torch.equal(state[k], motion[k])]
    assert all(p.is_meta for p in adapter.parameters())  # moved, not copied
    with torch.no_grad():
        assert model(latents, timesteps, pose_frames, make_references()).shape == latents.shape
    model.clear_references()


@pytest.mark.parametrize("stage", [1, 2])
def test_a_pipeline_of_either_stage_round_trips(components: DurianComponents, tiny: ModelFlavour, tmp_path: Path,
                                                stage: int) -> None:
    from model.pipeline import DurianPipeline

    if stage == 2:
        components.model.add_motion_modules(random_motion_adapter(tiny))
    torch.nn.init.normal_(components.model.pose_guider.conv_out.weight)
    components.pipeline().save_pretrained(tmp_path)
    loaded = DurianPipeline.from_pretrained(tmp_path)
    assert loaded.model.has_motion_modules == (stage == 2)
    assert type(loaded.model.denoiser) is type(components.model.denoiser)
    assert_same_tensors(loaded.model, components.model.state_dict())


# ---------------------------------------------------------------- the original SD 1.5 single file


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_original_single_file_loads_offline_with_no_config(tiny: ModelFlavour, sd_parts, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch, no_network: None,
                                                           suffix: str) -> None:
    unet, vae = sd_parts
    state = ldm_single_file_state(unet, vae, tiny)
    path = tmp_path / f"v1-5-pruned-emaonly{suffix}"
    if suffix == ".safetensors":
        save_file(state, path)
    else:  # the released .ckpt: a Lightning checkpoint whose callbacks are keyed by the callback class
        callback = fake_lightning_callback(monkeypatch)
        torch.save({"state_dict": state, "global_step": 840000, "callbacks": {callback: {"best_model_score": None}}},
                   path)
        for name in [n for n in sys.modules if n.startswith("pytorch_lightning")]:
            monkeypatch.delitem(sys.modules, name)  # the loader runs without Lightning installed
    loaded_unet, loaded_vae = load_sd15(path, tiny)
    assert_same_tensors(loaded_unet, unet.state_dict())
    assert_same_tensors(loaded_vae, vae.state_dict())
    # Cross-check the key map against diffusers' own converter (given a local config, from memory).
    config = tmp_path / "config"
    unet.save_config(config / "unet")
    vae.save_config(config / "vae")
    for model_class, loaded, subfolder in ((UNet2DConditionModel, loaded_unet, "unet"),
                                           (AutoencoderKL, loaded_vae, "vae")):
        reference = model_class.from_single_file(dict(state), config=str(config), subfolder=subfolder)
        assert_same_tensors(loaded, reference.state_dict())


def test_single_file_in_bf16_on_load(tiny: ModelFlavour, sd_parts, tmp_path: Path) -> None:
    unet, vae = sd_parts
    save_file(ldm_single_file_state(unet, vae, tiny), tmp_path / "sd.safetensors")
    loaded_unet, loaded_vae = load_sd15(tmp_path / "sd.safetensors", tiny, dtype=torch.bfloat16)
    assert {p.dtype for p in [*loaded_unet.parameters(), *loaded_vae.parameters()]} == {torch.bfloat16}
    assert torch.equal(loaded_unet.conv_out.weight, unet.conv_out.weight.to(torch.bfloat16))


def test_a_single_file_that_does_not_match_names_the_keys(tiny: ModelFlavour, sd_parts, tmp_path: Path) -> None:
    state = ldm_single_file_state(*sd_parts, tiny)
    del state["model.diffusion_model.out.2.weight"]
    state["model.diffusion_model.extra.weight"] = torch.zeros(1)
    save_file(state, tmp_path / "sd.safetensors")
    with pytest.raises(CheckpointError, match=r"1 missing \(conv_out.weight\), 1 unexpected \(.*extra.weight\)"):
        load_sd15(tmp_path / "sd.safetensors", tiny)
    save_file({"conv_in.weight": torch.zeros(1)}, tmp_path / "unet.safetensors")
    with pytest.raises(CheckpointError, match="not an original SD 1.x checkpoint"):
        load_sd15(tmp_path / "unet.safetensors", tiny)


# ---------------------------------------------------------------- pickles


def test_a_pickle_naming_a_disallowed_global_is_refused(tiny: ModelFlavour, tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self) -> tuple:
            # Not `print`: Ray, started in-process by an earlier test, replaces `builtins.print` with its own.
            return (eval, ("1 + 1",))

    torch.save({"state_dict": original_animatediff_state_dict(tiny), "hook": Payload()}, tmp_path / "mm.ckpt")
    with pytest.raises(CheckpointError, match=r"refusing to unpickle builtins\.eval.*convert it once"):
        load_motion_adapter(tmp_path / "mm.ckpt", tiny)


def test_original_motion_checkpoint_loads_every_learned_tensor(tiny: ModelFlavour, tmp_path: Path) -> None:
    original = original_animatediff_state_dict(tiny)
    torch.save(original, tmp_path / "mm_sd_v15_v2.ckpt")
    adapter = load_motion_adapter(tmp_path / "mm_sd_v15_v2.ckpt", tiny)
    # Every learned tensor arrives, by value (the positional tables are fixed sinusoids diffusers recomputes).
    loaded = {k: v for k, v in adapter.state_dict().items() if not k.endswith("pos_embed.pe")}
    learned = {k: v for k, v in original.items() if not k.endswith("pos_encoder.pe")}
    assert len(loaded) == len(learned)
    by_value = {v.sum().item(): v for v in loaded.values()}
    for key, value in learned.items():
        match = by_value.get(value.sum().item())
        assert match is not None and torch.equal(match, value), key
    torch.testing.assert_close(
        adapter.state_dict()["mid_block.motion_modules.0.proj_in.weight"],
        original["mid_block.motion_modules.0.temporal_transformer.proj_in.weight"], rtol=0, atol=0)


def test_arcface_iresnet_loads_insightface_weights(tiny: ModelFlavour, tmp_path: Path) -> None:
    spec = tiny.identity_encoder
    torch.manual_seed(0)
    state = IResNet(spec.arch, spec.embedding_dim, spec.widths).state_dict()
    assert {"conv1.weight", "prelu.weight", "layer1.0.bn1.weight", "layer2.0.downsample.0.weight",
            "bn2.weight", "fc.weight", "features.weight"} <= set(state)
    torch.save(state, tmp_path / "backbone.pth")
    encoder = load_identity_encoder(tmp_path / "backbone.pth", spec)
    assert_same_tensors(encoder, state)
    embeds = identity_embeds(encoder, torch.rand(2, 3, 64, 64), np.stack([FACE, FACE + 1]))
    assert embeds.shape == (2, 1, 16)
    torch.testing.assert_close(embeds.norm(dim=-1), torch.ones(2, 1))
    with pytest.raises(CheckpointError, match=r"ArcFace weights not found: .*missing\.pth"):
        load_identity_encoder(tmp_path / "missing.pth", spec)
    # Older releases use PyTorch's legacy (pre-zip) format: read with the same allow-list.
    torch.save(state, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    assert_same_tensors(load_identity_encoder(tmp_path / "legacy.pth", spec), state)


# ---------------------------------------------------------------- every part, as the README loads them


def write_original_files(tiny: ModelFlavour, sd_parts, folder: Path, encoder_form: str) -> dict[str, Path]:
    """The files a user downloads, in their released layouts, with random weights of the tiny flavour."""
    parts = random_components(tiny, seed=5)
    save_file(ldm_single_file_state(*sd_parts, tiny), folder / "v1-5-pruned-emaonly.safetensors")
    torch.save(original_animatediff_state_dict(tiny), folder / "mm_sd_v15_v2.ckpt")
    torch.save(parts.identity_encoder.state_dict(), folder / "backbone.pth")
    encoder = folder / "sd-image-variations" / "image_encoder"
    if encoder_form == "folder":
        parts.image_encoder.save_pretrained(encoder)
    else:  # the older release: a config and a pickled state dict
        parts.image_encoder.config.save_pretrained(encoder)
        torch.save(parts.image_encoder.state_dict(), encoder / "pytorch_model.bin")
    return {"sd15": folder / "v1-5-pruned-emaonly.safetensors", "motion_adapter": folder / "mm_sd_v15_v2.ckpt",
            "image_encoder": folder / "sd-image-variations", "arcface": folder / "backbone.pth",
            "encoder_state": parts.image_encoder.state_dict(), "arcface_state": parts.identity_encoder.state_dict()}


def released_paths(files: dict) -> PretrainedPaths:
    return PretrainedPaths(sd15=str(files["sd15"]), motion_adapter=str(files["motion_adapter"]),
                           image_encoder=str(files["image_encoder"]), arcface=str(files["arcface"]))


@pytest.mark.parametrize("encoder_form", ["folder", "bin"])
def test_pretrained_components_from_the_released_files(tiny: ModelFlavour, sd_parts, tmp_path: Path,
                                                       no_network: None, encoder_form: str) -> None:
    files = write_original_files(tiny, sd_parts, tmp_path, encoder_form)
    unet_state = sd_parts[0].state_dict()
    parts = pretrained_components(tiny, released_paths(files))
    assert not parts.model.has_motion_modules  # stage 1: the motion modules come with stage 2
    assert torch.equal(parts.model.denoiser.conv_out.weight, unet_state["conv_out.weight"])
    assert torch.equal(parts.model.portrait_net.conv_out.weight, unet_state["conv_out.weight"])
    assert_same_tensors(parts.image_encoder, files["encoder_state"])
    assert_same_tensors(parts.identity_encoder, files["arcface_state"])
    assert parts.model.identity_proj.in_features == tiny.identity_encoder.embedding_dim
    with pytest.raises(CheckpointError, match="ArcFace weights not found"):
        pretrained_components(tiny, released_paths(files).model_copy(
            update={"arcface": str(tmp_path / "nowhere" / "backbone.pth")}))


def test_pretrained_components_from_diffusers_folders(tiny: ModelFlavour, sd_parts, tmp_path: Path) -> None:
    unet, vae = sd_parts
    unet.save_pretrained(tmp_path / "sd15" / "unet")
    vae.save_pretrained(tmp_path / "sd15" / "vae")
    adapter = MotionAdapter(**tiny.motion.diffusers_config(tiny.unet))
    adapter.save_pretrained(tmp_path / "motion")
    files = write_original_files(tiny, sd_parts, tmp_path, "folder")
    paths = PretrainedPaths(sd15=str(tmp_path / "sd15"), motion_adapter=str(tmp_path / "motion"),
                            image_encoder=str(files["image_encoder"]), arcface=str(files["arcface"]))
    parts = pretrained_components(tiny, paths)
    assert torch.equal(parts.model.denoiser.conv_out.weight, unet.conv_out.weight)
    assert_same_tensors(parts.vae, vae.state_dict())
    parts.model.add_motion_modules(load_motion_adapter(paths.motion_adapter, tiny))
    key = "mid_block.motion_modules.0.proj_in.weight"
    assert torch.equal(parts.model.denoiser.state_dict()[key], adapter.state_dict()[key])
    assert_same_tensors(load_image_encoder(files["image_encoder"]), files["encoder_state"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_loading_peak_memory_is_bounded_by_the_model(tiny: ModelFlavour, sd_parts, tmp_path: Path,
                                                     dtype: torch.dtype) -> None:
    """Counted, not timed: the bytes of tensor storage alive at once while loading every part from the
    released files, against the bytes of the loaded components."""
    files = write_original_files(tiny, sd_parts, tmp_path, "folder")
    with PeakTensorBytes() as counter:
        parts = pretrained_components(tiny, released_paths(files), dtype=dtype)
    final = module_bytes(parts.model, parts.vae, parts.image_encoder, parts.identity_encoder)
    assert counter.peak <= 1.3 * final, (counter.peak, final)


# ---------------------------------------------------------------- a separate VAE (sd-vae-ft-mse)


@pytest.mark.parametrize("form", ["folder", "diffusers_file", "ldm_file"])
def test_a_separate_vae_replaces_sd15s(tiny: ModelFlavour, sd_parts, tmp_path: Path, no_network: None,
                                       form: str) -> None:
    """sd-vae-ft-mse as released: a diffusers AutoencoderKL folder (stabilityai/sd-vae-ft-mse) or one file,
    in diffusers keys or the original LDM keys (vae-ft-mse-840000-ema-pruned, with its loss's weights)."""
    torch.manual_seed(6)
    ft_mse = AutoencoderKL(**tiny.vae.diffusers_config())
    for tensor in ft_mse.parameters():
        torch.nn.init.normal_(tensor.data)
    if form == "folder":
        ft_mse.save_pretrained(tmp_path / "sd-vae-ft-mse")
        source = tmp_path / "sd-vae-ft-mse"
    elif form == "diffusers_file":
        source = tmp_path / "diffusion_pytorch_model.safetensors"
        save_file(ft_mse.state_dict(), source)
    else:
        state = {k.removeprefix("first_stage_model."): v
                 for k, v in ldm_single_file_state(sd_parts[0], ft_mse, tiny).items() if "first_stage_model." in k}
        state["loss.discriminator.main.0.weight"] = torch.zeros(2)
        source = tmp_path / "vae-ft-mse-840000-ema-pruned.safetensors"
        save_file(state, source)
    assert_same_tensors(load_vae(source, tiny), ft_mse.state_dict())
    files = write_original_files(tiny, sd_parts, tmp_path, "folder")
    parts = pretrained_components(tiny, released_paths(files).model_copy(update={"vae": str(source)}))
    assert_same_tensors(parts.vae, ft_mse.state_dict())
    # Latents record the VAE that made them: sd-vae-ft-mse is not SD's own.
    assert weights_fingerprint(parts.vae) != weights_fingerprint(sd_parts[1])


# ---------------------------------------------------------------- round trips


def test_save_pretrained_round_trips_exactly(model: DurianModel, tmp_path: Path) -> None:
    torch.nn.init.normal_(model.pose_guider.conv_out.weight)  # no zero tensors hiding a bad load
    model.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    loaded = DurianModel.from_pretrained(tmp_path)
    assert_same_tensors(loaded, model.state_dict())
    latents, timesteps, pose_frames = make_clip()
    references = make_references()
    with torch.no_grad():
        outputs = [m(latents, timesteps, pose_frames, references) for m in (model, loaded)]
    # The tensors are equal bit for bit; the outputs to rounding only: a tensor loaded from safetensors sits at
    # another memory alignment, which can change the matmul kernel's summation order.
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)


def test_components_make_a_pipeline(components: DurianComponents) -> None:
    pipe = components.pipeline()
    assert pipe.identity_encoder is components.identity_encoder and pipe.vae_scale_factor == 4
