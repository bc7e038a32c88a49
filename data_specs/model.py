"""Model flavours: the sizes of every network in Durian, by name.

`"sd15"` is the real architecture (Stable Diffusion 1.5 UNets and VAE, AnimateDiff
`mm_sd_v15_v2` motion modules, the ViT-L/14 image encoder of sd-image-variations, the
insightface iresnet100 ArcFace identity encoder).
`"tiny"` has the same layout with small widths, so tests and the demo exercise the
production code on a CPU in seconds. `model/` builds networks from these specs only.
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class UNetSpec(_Spec):
    """A UNet2DConditionModel in the SD 1.5 layout (shared by the three UNets)."""

    block_out_channels: tuple[int, ...] = Field(description="Channels of each resolution level.")
    layers_per_block: int = Field(2, description="Resnet/attention pairs per down block (SD 1.5: 2).")
    down_block_types: tuple[str, ...] = Field(description="diffusers down block class names.")
    up_block_types: tuple[str, ...] = Field(description="diffusers up block class names.")
    attention_head_dim: int = Field(8, description="diffusers' legacy name: the number of heads in SD 1.5.")
    norm_num_groups: int = Field(32, description="GroupNorm groups.")
    cross_attention_dim: int = Field(768, description="Width of the cross-attention conditioning tokens.")

    def diffusers_config(self, in_channels: int = 4) -> dict:
        """Keyword arguments of `UNet2DConditionModel` for this spec."""
        return {
            "in_channels": in_channels,
            "out_channels": 4,
            "block_out_channels": list(self.block_out_channels),
            "layers_per_block": self.layers_per_block,
            "down_block_types": list(self.down_block_types),
            "up_block_types": list(self.up_block_types),
            "attention_head_dim": self.attention_head_dim,
            "norm_num_groups": self.norm_num_groups,
            "cross_attention_dim": self.cross_attention_dim,
        }


class MotionSpec(_Spec):
    """The AnimateDiff motion adapter (diffusers `MotionAdapter`)."""

    motion_num_attention_heads: int = Field(8, description="Heads of every temporal attention.")
    motion_norm_num_groups: int = Field(32, description="GroupNorm groups of the temporal transformers.")
    motion_max_seq_length: int = Field(32, description="Positional-encoding length (v2: 32 frames).")
    use_motion_mid_block: bool = Field(True, description="v2 has a mid-block motion module.")

    def diffusers_config(self, unet: UNetSpec) -> dict:
        """Keyword arguments of `MotionAdapter` matching `unet`."""
        return {
            "block_out_channels": list(unet.block_out_channels),
            "motion_layers_per_block": unet.layers_per_block,
            "motion_mid_block_layers_per_block": 1,
            "motion_num_attention_heads": self.motion_num_attention_heads,
            "motion_norm_num_groups": self.motion_norm_num_groups,
            "motion_max_seq_length": self.motion_max_seq_length,
            "use_motion_mid_block": self.use_motion_mid_block,
        }


class VAESpec(_Spec):
    """An AutoencoderKL; the latent is `vae_scale_factor` times smaller than the image."""

    block_out_channels: tuple[int, ...]
    layers_per_block: int = 2
    norm_num_groups: int = 32
    latent_channels: int = 4
    scaling_factor: float = Field(0.18215, description="Stored in the VAE config; code reads it from there.")

    def diffusers_config(self) -> dict:
        """Keyword arguments of `AutoencoderKL` for this spec."""
        n = len(self.block_out_channels)
        return {
            "block_out_channels": list(self.block_out_channels),
            "down_block_types": ["DownEncoderBlock2D"] * n,
            "up_block_types": ["UpDecoderBlock2D"] * n,
            "layers_per_block": self.layers_per_block,
            "norm_num_groups": self.norm_num_groups,
            "latent_channels": self.latent_channels,
            "scaling_factor": self.scaling_factor,
        }

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent along each side (diffusers' name): each level after the first halves the size."""
        return 2 ** (len(self.block_out_channels) - 1)


class ImageEncoderSpec(_Spec):
    """A transformers `CLIPVisionModelWithProjection` (sd-image-variations: ViT-L/14)."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    image_size: int
    patch_size: int
    projection_dim: int
    hidden_act: str = "quick_gelu"

    def transformers_config(self) -> dict:
        """Keyword arguments of `CLIPVisionConfig`."""
        return self.model_dump()


class IdentityEncoderSpec(_Spec):
    """The ArcFace IResNet that embeds the portrait's identity (the paper's phi_port)."""

    arch: Literal["r18", "r34", "r50", "r100"] = Field(
        "r100", description="insightface IResNet depth (the released arcface_torch backbones are r18 to r100).")
    embedding_dim: int = Field(512, description="Width of the identity embedding.")
    widths: tuple[int, int, int, int] = Field((64, 128, 256, 512),
                                              description="Channels of the four residual layers (layer1 to layer4).")


class NoiseScheduleSpec(_Spec):
    """The noise schedule, shared by the training (DDPM) and inference (DDIM) schedulers.

    The default is the references' recipe (Moore-AnimateAnyone, Champ: `enable_zero_snr`): SD 1.5's
    scaled-linear betas rescaled to zero terminal SNR, v-prediction (epsilon is undefined at zero SNR) and
    trailing timestep spacing, so sampling starts at t = 999 from pure noise, the state training ends in.
    """

    num_train_timesteps: int = Field(1000, ge=1, description="Diffusion steps of training.")
    beta_start: float = Field(0.00085, gt=0, description="First beta (SD 1.5).")
    beta_end: float = Field(0.012, gt=0, description="Last beta before any rescaling (SD 1.5).")
    beta_schedule: Literal["linear", "scaled_linear"] = Field("scaled_linear", description="diffusers' beta curve.")
    rescale_betas_zero_snr: bool = Field(
        True, description="Rescale the betas so the last timestep has zero SNR (Lin et al. 2024), as the "
        "references do; needs `prediction_type='v_prediction'`.")
    prediction_type: Literal["epsilon", "v_prediction"] = Field(
        "v_prediction", description="What the denoiser predicts: the noise, or v = sqrt(a) * noise - sqrt(1 - a) * x0.")
    timestep_spacing: Literal["leading", "trailing", "linspace"] = Field(
        "trailing", description="How sampling picks its timesteps; 'trailing' starts at the last one (t = 999).")

    @model_validator(mode="after")
    def _zero_snr_needs_v(self) -> NoiseScheduleSpec:
        if self.rescale_betas_zero_snr and self.prediction_type == "epsilon":
            raise ValueError("zero terminal SNR with epsilon prediction cannot denoise the last timestep (pure "
                             "noise holds no signal to predict the noise from): use prediction_type='v_prediction'")
        return self

    def diffusers_config(self) -> dict:
        """Keyword arguments shared by diffusers' `DDPMScheduler` and `DDIMScheduler`."""
        return self.model_dump()


# The schedule SD 1.5 itself was trained with (epsilon prediction, no zero-SNR rescaling, SD's "leading"
# spacing): what its ControlNets and inpainting models sample with (`tasks.samples.diffusion`), not Durian's.
SD15_NOISE_SCHEDULE = NoiseScheduleSpec(rescale_betas_zero_snr=False, prediction_type="epsilon",
                                        timestep_spacing="leading")


class PretrainedPaths(_Spec):
    """Where the pretrained parts of the `sd15` flavour are: local paths, or hub ids already in the local
    Hugging Face cache (see `model.builders`)."""

    sd15: str = Field(description="SD 1.5: the original single file (.safetensors/.ckpt) or a diffusers folder.")
    motion_adapter: str | None = Field(
        None, description="AnimateDiff motion modules (`mm_sd_v15_v2.ckpt` or a diffusers MotionAdapter folder), "
        "inserted when stage 2 starts. None: random motion modules.")
    image_encoder: str = Field(description="The sd-image-variations CLIP image encoder (folder or hub id).")
    arcface: str = Field(description="insightface arcface_torch `backbone.pth` (or .safetensors) of the flavour's "
                         "IResNet.")
    vae: str | None = Field(
        None, description="A separate VAE instead of SD 1.5's own, e.g. sd-vae-ft-mse (the references' choice): a "
        "diffusers AutoencoderKL folder or a single weights file in either layout.")


class ModelFlavour(_Spec):
    """Every size needed to build Durian's networks."""

    name: str
    resolution: int = Field(description="Square frame size in pixels.")
    unet: UNetSpec
    motion: MotionSpec
    vae: VAESpec
    image_encoder: ImageEncoderSpec
    pose_guider_channels: tuple[int, ...] = Field(
        (16, 32, 96, 256),
        description="Conv widths of the pose guider; each step after the first halves the size.",
    )
    identity_encoder: IdentityEncoderSpec = Field(
        IdentityEncoderSpec(), description="ArcFace encoder of the portrait's identity (the portrait net's condition).")
    noise_schedule: NoiseScheduleSpec = NoiseScheduleSpec()


_SD15_UNET = UNetSpec(
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
)

FlavourName = Literal["tiny", "sd15"]  # the one list of flavour names: configs' `flavour` fields take these

FLAVOURS: dict[str, ModelFlavour] = {
    "sd15": ModelFlavour(
        name="sd15",
        resolution=512,
        unet=_SD15_UNET,
        motion=MotionSpec(),
        vae=VAESpec(block_out_channels=(128, 256, 512, 512)),
        image_encoder=ImageEncoderSpec(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            image_size=224,
            patch_size=14,
            projection_dim=768,
        ),
    ),
    "tiny": ModelFlavour(
        name="tiny",
        resolution=64,
        unet=UNetSpec(
            block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            attention_head_dim=4,
            norm_num_groups=8,
            cross_attention_dim=32,
        ),
        motion=MotionSpec(motion_num_attention_heads=4, motion_norm_num_groups=8),
        vae=VAESpec(block_out_channels=(16, 32, 32), layers_per_block=1, norm_num_groups=8),
        image_encoder=ImageEncoderSpec(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
            projection_dim=32,
        ),
        pose_guider_channels=(8, 16, 32),
        identity_encoder=IdentityEncoderSpec(arch="r18", embedding_dim=16, widths=(8, 8, 16, 16)),
    ),
}


assert set(FLAVOURS) == set(get_args(FlavourName)), "every flavour name has its sizes, and no others"


def model_flavour(name: str) -> ModelFlavour:
    """The flavour registered under `name` ("tiny" or "sd15")."""
    try:
        return FLAVOURS[name]
    except KeyError:
        raise ValueError(f"unknown model flavour {name!r}; known: {sorted(FLAVOURS)}") from None
