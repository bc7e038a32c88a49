"""Building Durian from a flavour (random weights) or from pretrained parts.

Pretrained parts, from local paths or hub ids:
  - SD 1.5: a diffusers folder (`unet/`, `vae/` subfolders) or a single-file
    checkpoint (`.safetensors`/`.ckpt`, original LDM keys);
  - AnimateDiff motion modules: a diffusers MotionAdapter folder, or the original
    `mm_sd_v15_v2.ckpt` through `MotionAdapter.from_single_file`;
  - the image encoder of sd-image-variations (`image_encoder/` subfolder or a folder
    with the CLIPVisionModelWithProjection config);
  - optionally ArcFace IResNet weights (local `.pth`/`.safetensors`).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, MotionAdapter, UNet2DConditionModel, UNetMotionModel
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from data_specs.model import ModelFlavour, NoiseScheduleSpec
from model.durian import DurianModel
from model.encoders import IResNet
from model.pose_guider import PoseGuider

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


@dataclass
class DurianComponents:
    """What a DurianPipeline is made of."""

    model: DurianModel
    vae: AutoencoderKL
    image_encoder: CLIPVisionModelWithProjection
    scheduler: DDIMScheduler
    identity_encoder: IResNet | None = None


# ---------------------------------------------------------------- schedulers


def _schedule_kwargs(spec: NoiseScheduleSpec) -> dict:
    return {"num_train_timesteps": spec.num_train_timesteps, "beta_start": spec.beta_start,
            "beta_end": spec.beta_end, "beta_schedule": spec.beta_schedule,
            "prediction_type": spec.prediction_type}


def inference_scheduler(spec: NoiseScheduleSpec) -> DDIMScheduler:
    """DDIM over the flavour's beta schedule (SD 1.5 settings: no clipping, steps_offset 1)."""
    return DDIMScheduler(**_schedule_kwargs(spec), clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def training_scheduler(spec: NoiseScheduleSpec) -> DDPMScheduler:
    """DDPM for adding noise in training: the same betas as `inference_scheduler`."""
    return DDPMScheduler(**_schedule_kwargs(spec), clip_sample=False)


# ---------------------------------------------------------------- networks from a UNet


def identity_motion_adapter(flavour: ModelFlavour) -> MotionAdapter:
    """Motion modules that pass their input through unchanged (zero `proj_out`, and
    each module adds its output to its input).

    Stage 1 trains on single frames without temporal layers: building the denoiser
    with this adapter keeps its spatial path exactly the SD UNet's. Stage 2 then
    loads the real modules with `model.denoiser.load_motion_modules(adapter)`.
    """
    adapter = MotionAdapter(**flavour.motion.diffusers_config(flavour.unet))
    for name, module in adapter.named_modules():
        if name.endswith("proj_out"):
            torch.nn.init.zeros_(module.weight)
            torch.nn.init.zeros_(module.bias)
    return adapter


def reference_net_from_unet(unet: UNet2DConditionModel) -> UNet2DConditionModel:
    """A 5-channel copy of `unet`: latent + mask. The mask channel's conv_in weights
    are zero, so the copy computes exactly what `unet` computes at init."""
    config = dict(unet.config)
    config["in_channels"] = unet.config.in_channels + 1
    net = UNet2DConditionModel.from_config(config)
    state = {k: v.clone() for k, v in unet.state_dict().items()}
    weight = state["conv_in.weight"]
    state["conv_in.weight"] = torch.cat([weight, weight.new_zeros(weight.shape[0], 1, *weight.shape[2:])], dim=1)
    net.load_state_dict(state, assign=True)  # assign: the copy takes the source's dtype too
    return net


def durian_from_unet(unet: UNet2DConditionModel, motion_adapter: MotionAdapter,
                     pose_guider_channels: tuple[int, ...], identity_dim: int) -> DurianModel:
    """DurianModel whose three UNets start from `unet` and whose temporal layers come
    from `motion_adapter`; the pose guider (zero output) and the identity projection
    are freshly initialised."""
    # 1. The pretrained networks, in their final form.
    reference = reference_net_from_unet(unet)
    denoiser = UNetMotionModel.from_unet2d(unet, motion_adapter)
    # 2. An empty shell with the same configs (no second random init of 3 UNets).
    with init_empty_weights():
        model = DurianModel(dict(reference.config), dict(denoiser.config), pose_guider_channels, identity_dim)
    # 3. Fill it: the shell's parameters are replaced, its processors and hook stay.
    pose_guider = PoseGuider(channels=tuple(pose_guider_channels), out_channels=unet.config.block_out_channels[0])
    identity_proj = torch.nn.Linear(identity_dim, unet.config.cross_attention_dim) \
        if identity_dim != unet.config.cross_attention_dim else torch.nn.Identity()
    state = {}
    for prefix, part in (("attribute_net", reference), ("portrait_net", reference), ("denoiser", denoiser),
                         ("pose_guider", pose_guider), ("identity_proj", identity_proj)):
        state.update({f"{prefix}.{k}": v.clone() for k, v in part.state_dict().items()})
    model.load_state_dict({k: v.to(unet.dtype) for k, v in state.items()}, strict=True, assign=True)
    return model


# ---------------------------------------------------------------- random weights


def random_components(flavour: ModelFlavour, seed: int = 0, arcface: bool = False) -> DurianComponents:
    """Every component of `flavour` with random weights (tests, demo, benchmarks).

    arcface: add a random IResNet-18 identity encoder of width `flavour.identity_dim`;
    without it the portrait identity is the CLIP embedding.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**flavour.unet.diffusers_config())
        adapter = MotionAdapter(**flavour.motion.diffusers_config(flavour.unet))
        image_encoder = CLIPVisionModelWithProjection(
            CLIPVisionConfig(**flavour.image_encoder.transformers_config())).eval()
        identity_encoder = IResNet("r18", embedding_dim=flavour.identity_dim).eval() if arcface else None
        identity_dim = flavour.identity_dim if arcface else flavour.image_encoder.projection_dim
        model = durian_from_unet(unet, adapter, flavour.pose_guider_channels, identity_dim)
        vae = AutoencoderKL(**flavour.vae.diffusers_config()).eval()
    return DurianComponents(model, vae, image_encoder, inference_scheduler(flavour.noise_schedule),
                            identity_encoder)


# ---------------------------------------------------------------- pretrained parts


def _is_single_file(path: str | Path) -> bool:
    return str(path).endswith(SINGLE_FILE_SUFFIXES)


def load_sd15_unet(source: str | Path, config: str | None = None) -> UNet2DConditionModel:
    """SD 1.5 UNet from a diffusers folder/hub id (`unet/` subfolder) or a single file.

    config: for a single file offline, a local diffusers SD 1.5 folder or hub id
    whose `unet/config.json` describes it (diffusers otherwise fetches one).
    """
    if _is_single_file(source):
        return UNet2DConditionModel.from_single_file(str(source), config=config, subfolder="unet" if config else None)
    return UNet2DConditionModel.from_pretrained(str(source), subfolder="unet")


def load_vae(source: str | Path, config: str | None = None) -> AutoencoderKL:
    """SD 1.5 VAE from a diffusers folder/hub id (`vae/` subfolder) or a single file."""
    if _is_single_file(source):
        return AutoencoderKL.from_single_file(str(source), config=config, subfolder="vae" if config else None)
    return AutoencoderKL.from_pretrained(str(source), subfolder="vae")


def load_motion_adapter(source: str | Path, flavour: ModelFlavour) -> MotionAdapter:
    """AnimateDiff motion modules: a diffusers MotionAdapter folder/hub id, or an
    original checkpoint such as `mm_sd_v15_v2.ckpt`.

    For a checkpoint the adapter's config is written from the flavour into a
    temporary folder, so nothing is fetched from the hub.
    """
    if not _is_single_file(source):
        return MotionAdapter.from_pretrained(str(source))
    with tempfile.TemporaryDirectory() as folder:
        config = {"_class_name": "MotionAdapter", **flavour.motion.diffusers_config(flavour.unet)}
        (Path(folder) / "config.json").write_text(json.dumps(config))
        return MotionAdapter.from_single_file(str(source), config=folder)


def load_image_encoder(source: str | Path) -> CLIPVisionModelWithProjection:
    """The sd-image-variations CLIP image encoder: its repo/folder (`image_encoder/`)
    or a folder holding the encoder itself."""
    if Path(source, "config.json").is_file():
        return CLIPVisionModelWithProjection.from_pretrained(str(source))
    return CLIPVisionModelWithProjection.from_pretrained(str(source), subfolder="image_encoder")


def pretrained_components(flavour: ModelFlavour, sd15: str, motion_adapter: str | None, image_encoder: str,
                          arcface: str | None = None, sd15_config: str | None = None,
                          arcface_arch: str = "r100") -> DurianComponents:
    """Durian initialised from pretrained parts (see the module docstring).

    motion_adapter None: pass-through temporal layers (`identity_motion_adapter`),
    for stage 1. Without `arcface` the portrait identity is the CLIP embedding, so
    the identity width is the image encoder's projection width.
    """
    unet = load_sd15_unet(sd15, sd15_config)
    if motion_adapter is None:
        adapter = identity_motion_adapter(flavour)
    else:
        adapter = load_motion_adapter(motion_adapter, flavour)
    encoder = load_image_encoder(image_encoder)
    identity_encoder = IResNet.from_insightface(arcface, arcface_arch) if arcface else None
    identity_dim = identity_encoder.config.embedding_dim if identity_encoder else encoder.config.projection_dim
    model = durian_from_unet(unet, adapter, flavour.pose_guider_channels, identity_dim)
    return DurianComponents(model, load_vae(sd15, sd15_config).eval(), encoder.eval(),
                            inference_scheduler(flavour.noise_schedule), identity_encoder)
