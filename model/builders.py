"""Building Durian from a flavour (random weights) or from pretrained parts, offline and within memory.

Pretrained parts, from local paths (or hub ids already in the local Hugging Face cache):
  - SD 1.5: the original single file (`v1-5-pruned-emaonly.safetensors` or `.ckpt`, LDM keys), whose layout
    is the flavour's, or a diffusers folder (`unet/`, `vae/` with their config.json);
  - AnimateDiff motion modules: the original `mm_sd_v15_v2.ckpt`, or a diffusers MotionAdapter folder;
  - the CLIP image encoder of sd-image-variations (a folder with `image_encoder/`, or the encoder's own
    folder; `model.safetensors` or `pytorch_model.bin`);
  - the ArcFace identity encoder: insightface's `backbone.pth` (or `.safetensors`) of the flavour's IResNet;
  - optionally a separate VAE (sd-vae-ft-mse, the references' choice): a diffusers AutoencoderKL folder, or a
    single file (`diffusion_pytorch_model.safetensors`, or the original `vae-ft-mse-840000-ema-pruned` file in
    LDM keys).

The stage-1 model is a 2D denoiser; the motion modules are added when stage 2 starts
(`DurianModel.add_motion_modules(load_motion_adapter(...))`).

Every network is built on the meta device and filled one tensor at a time (`weight_files.tensors`), straight in the
requested dtype on the requested device: loading needs about the final model's memory, not a multiple of it.
Pickles are read through the allow-listed unpickler of `weight_files.pickles`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, DDIMScheduler, MotionAdapter, UNet2DConditionModel
from diffusers.models.modeling_utils import ModelMixin
from huggingface_hub import snapshot_download
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from data_specs.model import IdentityEncoderSpec, ModelFlavour, NoiseScheduleSpec, PretrainedPaths
from model.durian import DurianModel
from model.encoders import IResNet
from model.key_maps import (
    LDM_UNET_PREFIX,
    LDM_VAE_PREFIX,
    is_position_table,
    motion_key_map,
    unet_key_map,
    vae_key_map,
)
from model.pipeline import DurianPipeline
from weight_files.pickles import CheckpointError
from weight_files.tensors import TensorFile, load_weights, open_weights

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
# Weight file names in a diffusers / transformers folder, in order of preference.
DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
TRANSFORMERS_WEIGHTS = ("model.safetensors", "pytorch_model.bin")

Device = str | torch.device


@dataclass
class DurianComponents:
    """What a DurianPipeline is made of."""

    model: DurianModel
    vae: AutoencoderKL
    image_encoder: CLIPVisionModelWithProjection
    identity_encoder: IResNet
    scheduler: DDIMScheduler

    def pipeline(self) -> DurianPipeline:
        """The inference pipeline over these components."""
        return DurianPipeline(self.model, self.vae, self.image_encoder, self.identity_encoder, self.scheduler)


# ---------------------------------------------------------------- schedulers


def inference_scheduler(spec: NoiseScheduleSpec) -> DDIMScheduler:
    """DDIM over the spec's schedule (SD 1.5's DDIM settings otherwise: no clipping, steps_offset 1)."""
    return DDIMScheduler(**spec.diffusers_config(), clip_sample=False, set_alpha_to_one=False, steps_offset=1)


# ---------------------------------------------------------------- random weights


def random_motion_adapter(flavour: ModelFlavour, seed: int = 0) -> MotionAdapter:
    """AnimateDiff motion modules of the flavour's layout with random weights (tiny, or sd15 without
    `motion_adapter`), built in the current default device; diffusers' init (zero `proj_out`: each module
    starts as a pass-through)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MotionAdapter(**flavour.motion.diffusers_config(flavour.unet))


def _identity_encoder(spec: IdentityEncoderSpec) -> IResNet:
    return IResNet(spec.arch, embedding_dim=spec.embedding_dim, widths=spec.widths)


def random_components(flavour: ModelFlavour, seed: int = 0) -> DurianComponents:
    """Every component of `flavour` with random weights (tests, demo, benchmarks), built in the current
    default device (`with torch.device(...)`). The denoiser is the 2D one of stage 1 (see `random_motion_adapter`
    for stage 2)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**flavour.unet.diffusers_config())
        image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**flavour.image_encoder.transformers_config()))
        identity_encoder = _identity_encoder(flavour.identity_encoder)
        model = DurianModel.from_unet2d(unet, None, flavour.pose_guider_channels,
                                        flavour.identity_encoder.embedding_dim)
        vae = AutoencoderKL(**flavour.vae.diffusers_config())
    return DurianComponents(model, vae.eval(), image_encoder.eval(), identity_encoder.eval(),
                            inference_scheduler(flavour.noise_schedule))


# ---------------------------------------------------------------- pretrained parts


def _local(source: str | Path, allow_patterns: list[str]) -> Path:
    """A local path as it is; otherwise a hub id (`namespace/name`), resolved to its snapshot of
    `allow_patterns` (from the local cache when offline)."""
    path = Path(source)
    if path.exists():
        return path
    if isinstance(source, Path) or str(source).count("/") != 1 or str(source).startswith((".", "/")):
        raise CheckpointError(f"not found: {source}")
    return Path(snapshot_download(str(source), allow_patterns=allow_patterns))


def _weights_in(folder: Path, names: tuple[str, ...]) -> TensorFile:
    for name in names:
        if (folder / name).is_file():
            return open_weights(folder / name)
    raise CheckpointError(f"no weights in {folder}: expected one of {', '.join(names)}")


def _empty(cls: type[ModelMixin], config: dict) -> ModelMixin:
    """`cls.from_config(config)` with meta parameters (no memory, no random init)."""
    with init_empty_weights():
        return cls.from_config(config)


def load_sd15(source: str | Path, flavour: ModelFlavour, dtype: torch.dtype = torch.float32,
              device: Device = "cpu", with_vae: bool = True) -> tuple[UNet2DConditionModel, AutoencoderKL | None]:
    """The SD 1.5 UNet and VAE (None without `with_vae`) from the original single file or a diffusers folder.

    A single file is read once for both, with the flavour's configs (no network, no config folder).
    """
    vae = None
    if str(source).endswith(SINGLE_FILE_SUFFIXES):
        unet = _empty(UNet2DConditionModel, flavour.unet.diffusers_config())
        weights = open_weights(source)
        if not any(key.startswith(LDM_UNET_PREFIX) for key in weights.keys()):
            raise CheckpointError(f"{source} has no {LDM_UNET_PREFIX}* keys: not an original SD 1.x checkpoint "
                                  "(a diffusers UNet file belongs in a folder with its config.json)")
        load_weights(unet, weights, prefix=LDM_UNET_PREFIX, rename=unet_key_map(unet.config).to_diffusers,
                     dtype=dtype, device=device)
        if with_vae:
            vae = _empty(AutoencoderKL, flavour.vae.diffusers_config())
            load_weights(vae, weights, prefix=LDM_VAE_PREFIX, rename=vae_key_map(vae.config).to_diffusers,
                         dtype=dtype, device=device)
    else:
        folder = _local(source, ["unet/*.json", "unet/*.safetensors", "vae/*.json", "vae/*.safetensors"])
        unet = _empty(UNet2DConditionModel, UNet2DConditionModel.load_config(folder / "unet"))
        load_weights(unet, _weights_in(folder / "unet", DIFFUSERS_WEIGHTS), dtype=dtype, device=device)
        if with_vae:
            vae = load_vae(folder / "vae", flavour, dtype, device)
    return unet.eval(), vae


# Top-level modules of an AutoencoderKL, in both layouts (a standalone LDM VAE file may carry its training
# loss's discriminator and LPIPS weights besides, under `loss.`, which are skipped).
_VAE_MODULES = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")


def load_vae(source: str | Path, flavour: ModelFlavour, dtype: torch.dtype = torch.float32,
             device: Device = "cpu") -> AutoencoderKL:
    """A VAE on its own, such as sd-vae-ft-mse (which both references train with) instead of SD 1.5's.

    source: a diffusers AutoencoderKL folder (`config.json` and `diffusion_pytorch_model.*`, as
    stabilityai/sd-vae-ft-mse is released) or hub id, or a single weights file with the flavour's VAE config:
    diffusers keys, or the original LDM keys (`vae-ft-mse-840000-ema-pruned.safetensors`, optionally under
    `first_stage_model.`).
    """
    if str(source).endswith(SINGLE_FILE_SUFFIXES):
        vae = _empty(AutoencoderKL, flavour.vae.diffusers_config())
        weights = open_weights(source)
        keys = weights.keys()
        prefix = LDM_VAE_PREFIX if any(key.startswith(LDM_VAE_PREFIX) for key in keys) else ""
        if any(key.startswith(f"{prefix}encoder.down_blocks.") for key in keys):
            def rename(key: str) -> str | None:
                return key if key.startswith(_VAE_MODULES) else None
        else:
            to_diffusers = vae_key_map(vae.config).to_diffusers

            def rename(key: str) -> str | None:
                return to_diffusers(key) if key.startswith(_VAE_MODULES) else None
        load_weights(vae, weights, prefix=prefix, rename=rename, dtype=dtype, device=device)
    else:
        folder = _local(source, ["*.json", "*.safetensors", "vae/*.json", "vae/*.safetensors"])
        if not (folder / "config.json").is_file() and (folder / "vae" / "config.json").is_file():
            folder = folder / "vae"  # a whole pipeline's folder
        vae = _empty(AutoencoderKL, AutoencoderKL.load_config(folder))
        load_weights(vae, _weights_in(folder, DIFFUSERS_WEIGHTS), dtype=dtype, device=device)
    return vae.eval()


def load_motion_adapter(source: str | Path, flavour: ModelFlavour, dtype: torch.dtype = torch.float32,
                        device: Device = "cpu") -> MotionAdapter:
    """AnimateDiff motion modules: an original checkpoint such as `mm_sd_v15_v2.ckpt` (the adapter's layout is
    the flavour's), or a diffusers MotionAdapter folder."""
    if str(source).endswith(SINGLE_FILE_SUFFIXES):
        adapter = _empty(MotionAdapter, flavour.motion.diffusers_config(flavour.unet))
        keys = motion_key_map(adapter.config)
        load_weights(adapter, open_weights(source), dtype=dtype, device=device,
                     rename=lambda key: None if is_position_table(key) else keys.to_diffusers(key))
        return adapter
    folder = _local(source, ["*.json", "*.safetensors"])
    adapter = _empty(MotionAdapter, MotionAdapter.load_config(folder))
    load_weights(adapter, _weights_in(folder, DIFFUSERS_WEIGHTS), dtype=dtype, device=device)
    return adapter


def load_image_encoder(source: str | Path, dtype: torch.dtype = torch.float32,
                       device: Device = "cpu") -> CLIPVisionModelWithProjection:
    """The sd-image-variations CLIP image encoder: its repo/folder (`image_encoder/`) or the encoder's folder."""
    folder = _local(source, ["*.json", "*.safetensors", "image_encoder/*.json", "image_encoder/*.safetensors"])
    if not (folder / "config.json").is_file():
        folder = folder / "image_encoder"
    with init_empty_weights():
        encoder = CLIPVisionModelWithProjection(CLIPVisionConfig.from_pretrained(folder))
    load_weights(encoder, _weights_in(folder, TRANSFORMERS_WEIGHTS), dtype=dtype, device=device)
    return encoder.eval()


def load_identity_encoder(path: str | Path, spec: IdentityEncoderSpec, dtype: torch.dtype = torch.float32,
                          device: Device = "cpu") -> IResNet:
    """The ArcFace IResNet from insightface's released weights (`backbone.pth` or `.safetensors`)."""
    if not Path(path).is_file():
        raise CheckpointError(f"ArcFace weights not found: {path} (the portrait identity is an insightface "
                              f"{spec.arch} ArcFace embedding: arcface_torch's backbone.pth)")
    with init_empty_weights():
        encoder = _identity_encoder(spec)
    load_weights(encoder, open_weights(path), dtype=dtype, device=device)
    return encoder.eval()


def pretrained_components(flavour: ModelFlavour, paths: PretrainedPaths, dtype: torch.dtype = torch.float32,
                          device: Device = "cpu") -> DurianComponents:
    """Stage-1 Durian initialised from pretrained parts (see the module docstring), in `dtype` on `device`.

    The denoiser is 2D; `paths.motion_adapter` is for stage 2 (`load_motion_adapter`, then
    `DurianModel.add_motion_modules`). `paths.vae`, when given, replaces SD 1.5's own VAE.
    """
    # Each part is built once; the UNet then moves into the DurianModel (no copy).
    encoder = load_image_encoder(paths.image_encoder, dtype, device)
    identity_encoder = load_identity_encoder(paths.arcface, flavour.identity_encoder, dtype, device)
    unet, vae = load_sd15(paths.sd15, flavour, dtype, device, with_vae=paths.vae is None)
    if paths.vae is not None:
        vae = load_vae(paths.vae, flavour, dtype, device)
    model = DurianModel.from_unet2d(unet, None, flavour.pose_guider_channels, flavour.identity_encoder.embedding_dim)
    return DurianComponents(model, vae, encoder, identity_encoder, inference_scheduler(flavour.noise_schedule))
