"""Contracts of the training-sample processor: how annotated clips become what the trainer reads.

Per clip the processor draws K self-reconstruction pairs (`PairConfig`): an attribute-reference
frame, a portrait-reference frame at least `min_ref_distance` frames away, and targets
(stage 1: one frame; stage 2: `frames` consecutive frames at `frame_stride`). The references
come from the clip's scene (or video, or the clip itself: `ReferenceConfig`), at least
`references.min_gap_s` from the targets. The two
references are masked complementarily: the attribute reference keeps only M_attr, the
portrait reference loses M_port_train = M_attr U M_gen, where M_gen comes from the mask
expansion (`ExpansionConfig`: none, random dilation and erosion, or the paper's
keypoint-conditioned generation with a ControlNet). Both references are augmented
(`AugmentConfig`) and every drawn parameter is recorded in the sample's `PairMeta`.

Nothing here imports torch: the data workers validate and read these without a model.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from data_specs.model import FlavourName
from data_specs.perception import ATTRIBUTES, RGB, PoseRenderSpec
from data_specs.scenes import ReferenceConfig, ReferenceScope
from data_specs.spec import RuntimeConfig, Spec

ExpansionMode = Literal["none", "dilate", "generate"]
ConditionRenderer = Literal["openpose_face", "pose_frames"]
FillMode = Literal["constant", "reflect", "inpaint"]
TrainingStage = Literal[1, 2]
DiffusionFlavour = Literal["sd15", "sdxl", "tiny"]

# Prompts that ask for more of the attribute than the person has: the generated attribute's mask then covers
# where a larger or different attribute could be, which is what the portrait reference must not show.
DEFAULT_PROMPTS: dict[str, tuple[str, ...]] = {
    "hair": (
        "a portrait photo of a person with very long voluminous hair",
        "a portrait photo of a person with big curly hair down to the shoulders",
        "a portrait photo of a person with a tall afro hairstyle",
    ),
    "eyeglasses": (
        "a portrait photo of a person wearing large thick-rimmed eyeglasses",
        "a portrait photo of a person wearing big round sunglasses",
    ),
    "beard": (
        "a portrait photo of a man with a full thick beard",
        "a portrait photo of a man with a long bushy beard",
    ),
    "hat": (
        "a portrait photo of a person wearing a big wide-brimmed hat",
        "a portrait photo of a person wearing a large knitted beanie",
        "a portrait photo of a person wearing a tall top hat",
    ),
}

# Weights used when a diffusion config names none (downloaded only with `allow_download`).
DEFAULT_CONTROLNET_WEIGHTS: dict[str, tuple[str, str]] = {  # flavour -> (base pipeline, ControlNet)
    "sd15": ("stable-diffusion-v1-5/stable-diffusion-v1-5", "lllyasviel/control_v11p_sd15_openpose"),
    "sdxl": ("stabilityai/stable-diffusion-xl-base-1.0", "thibaud/controlnet-openpose-sdxl-1.0"),
}
DEFAULT_INPAINT_WEIGHTS: dict[str, str] = {
    "sd15": "stable-diffusion-v1-5/stable-diffusion-inpainting",
    "sdxl": "diffusers/stable-diffusion-xl-1.0-inpainting-0.1",
}


class PairConfig(Spec):
    """Which frames of a clip make a self-reconstruction pair."""

    pairs_per_clip: int = Field(2, ge=1, le=1024, description="Pairs drawn per clip and training stage (K).")
    stages: tuple[TrainingStage, ...] = Field(
        (1, 2), min_length=1, description="Training stages to write samples for: 1 (one target frame), "
        "2 (`frames` consecutive target frames).")
    frames: int = Field(8, ge=1, le=256, description="Target frames of a stage-2 sample (F).")
    frame_stride: int = Field(1, ge=1, le=64, description="Clip frames between consecutive stage-2 targets.")
    min_ref_distance: int = Field(
        4, ge=0, le=1024, description="Least distance, in decoded frames, between the attribute and the portrait "
        "reference frames.")
    references: ReferenceConfig = Field(default_factory=ReferenceConfig,
                                        description="Where the two references come from: the scene, the video or "
                                        "the clip, and how far from the targets.")
    seed: int = Field(0, ge=0, description="Seed of every random draw; a clip's draws depend only on it and the "
                      "clip's key, so results do not depend on the order units run in.")

    @field_validator("stages")
    @classmethod
    def _unique(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if len(set(value)) != len(value):
            raise ValueError("stages must not repeat")
        return tuple(sorted(value))

    def target_span(self, stage: int) -> int:
        """Clip frames covered by the targets of a stage-`stage` sample."""
        return 1 if stage == 1 else (self.frames - 1) * self.frame_stride + 1

    def frames_needed(self) -> int:
        """The shortest clip that can give a pair for every configured stage."""
        targets = max(self.target_span(stage) for stage in self.stages)
        return max(targets, self.min_ref_distance + 1) if self.references.scope == "clip" else targets


class DilateConfig(Spec):
    """Random dilation then erosion of M_attr; sizes are fractions of the crop side."""

    dilate: tuple[float, float] = Field((0.01, 0.06), description="Range of the dilation radius.")
    erode: tuple[float, float] = Field((0.0, 0.015), description="Range of the erosion radius (after dilating).")

    @field_validator("dilate", "erode")
    @classmethod
    def _range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 <= value[0] <= value[1] <= 0.5:
            raise ValueError("must be (low, high) with 0 <= low <= high <= 0.5")
        return value


class DiffusionWeights(Spec):
    """Where a diffusers pipeline's weights come from, and where it runs."""

    flavour: DiffusionFlavour = Field(
        "sd15", description="'sd15' or 'sdxl' load real weights; 'tiny' builds the same pipeline classes with "
        "small random weights (tests, the demo: its images are noise).")
    allow_download: bool = Field(False, description="Let diffusers fetch weights missing from the local cache.")
    steps: int = Field(20, ge=1, le=1000, description="Denoising steps.")
    guidance_scale: float = Field(7.5, ge=0, description="Classifier-free guidance scale.")
    runtime: RuntimeConfig = Field(default_factory=lambda: RuntimeConfig(batch_size=4))


class GenerateConfig(DiffusionWeights):
    """The paper's mask expansion: a ControlNet image of the frame's keypoints, prompted for a larger attribute."""

    base_model: str | None = Field(
        None, description="Diffusers folder or hub id of the base pipeline (None: the flavour's default).")
    controlnet: str | None = Field(None, description="Diffusers folder or hub id of the ControlNet (None: the "
                                   "flavour's default, an OpenPose ControlNet).")
    conditioning_scale: float = Field(1.0, ge=0, le=5, description="ControlNet conditioning scale.")
    condition: ConditionRenderer = Field(
        "openpose_face", description="How the keypoints become the ControlNet's condition image; it must be the "
        "format the ControlNet was trained on. 'openpose_face': the 68 OpenPose face points (derived from Sapiens' "
        "Goliath points) as white dots on black, as controlnet_aux's OpenPose/DWPose annotators draw them: for "
        "OpenPose ControlNets (the defaults lllyasviel/control_v11p_sd15_openpose and "
        "thibaud/controlnet-openpose-sdxl-1.0, xinsir/controlnet-openpose-sdxl-1.0, ControlNet-Union's openpose "
        "mode); needs keypoints.backend 'sapiens'. 'pose_frames': the samples' own pose frames (each keypoint a dot "
        "in its facial region's colour, `PoseRenderSpec`), for a ControlNet trained on those renders; no public "
        "ControlNet was.")
    condition_min_confidence: float = Field(
        0.3, ge=0, description="'openpose_face': keypoints below this confidence are left out of the condition "
        "(as the annotators leave out points they did not find).")
    prompts: dict[str, tuple[str, ...]] = Field(
        default_factory=lambda: dict(DEFAULT_PROMPTS),
        description="Per attribute: prompt templates, one drawn per sample. Every masked attribute needs one.")
    negative_prompt: str = Field("blurry, deformed, cropped, lowres", description="Negative prompt.")

    @field_validator("prompts")
    @classmethod
    def _known(cls, value: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        for attribute, templates in value.items():
            if attribute not in ATTRIBUTES:
                raise ValueError(f"{attribute!r} is not an attribute ({', '.join(ATTRIBUTES)})")
            if not templates or not all(t.strip() for t in templates):
                raise ValueError(f"{attribute}: give at least one non-empty prompt")
        return value


class ExpansionConfig(Spec):
    """How M_port_train grows beyond M_attr."""

    mode: ExpansionMode = Field(
        "dilate", description="'none': M_port_train = M_attr; 'dilate': random dilation and erosion; "
        "'generate': union with the attribute mask of a keypoint-conditioned ControlNet image.")
    dilate: DilateConfig = Field(default_factory=DilateConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)


class InpaintConfig(DiffusionWeights):
    """A diffusers inpainting pipeline that paints the area an affine warp exposed."""

    model: str | None = Field(None, description="Diffusers folder or hub id of an inpainting pipeline (None: "
                              "the flavour's default).")
    prompt: str = Field("a portrait photo, plain background", description="What to paint.")


class AugmentConfig(Spec):
    """Random affine and colour jitter of both references; ranges are symmetric around no change."""

    enabled: bool = Field(True, description="Augment the references (False: they are the frames as cropped).")
    translate: float = Field(0.06, ge=0, le=0.5, description="Largest shift, as a fraction of the side.")
    scale: tuple[float, float] = Field((0.9, 1.1), description="Range of the zoom factor.")
    rotate_deg: float = Field(10.0, ge=0, le=180, description="Largest rotation, degrees.")
    brightness: float = Field(0.2, ge=0, lt=1, description="Brightness factor drawn from 1 +- this.")
    contrast: float = Field(0.2, ge=0, lt=1, description="Contrast factor drawn from 1 +- this.")
    saturation: float = Field(0.2, ge=0, lt=1, description="Saturation factor drawn from 1 +- this.")
    hue: float = Field(0.03, ge=0, le=0.5, description="Largest hue shift, as a fraction of the colour circle.")
    fill: FillMode = Field("reflect", description="Exposed area: 'constant' colour, 'reflect'ed image, or "
                           "'inpaint'ed by a diffusion model (the paper outpaints). Only the portrait reference "
                           "is filled through its mask; the attribute reference's exposed area is outside M_attr.")
    fill_value: RGB = Field((0, 0, 0), description="Colour of the exposed area with fill 'constant'.")
    inpaint: InpaintConfig = Field(default_factory=InpaintConfig)

    @field_validator("scale")
    @classmethod
    def _scale(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0.1 <= value[0] <= value[1] <= 10:
            raise ValueError("must be (low, high) with 0.1 <= low <= high <= 10")
        return value


class LatentConfig(Spec):
    """Precomputed VAE latents of the targets and the masked references (training then skips the encoder)."""

    flavour: FlavourName = Field("sd15", description="Model flavour (`data_specs.model`) whose VAE "
                                             "encodes; it must be the flavour that trains.")
    vae: str | None = Field(
        None, description="Diffusers folder or hub id with a `vae/` subfolder (SD 1.5, or a saved DurianPipeline). "
        "None: the SD 1.5 default, or for 'tiny' the tiny flavour's seeded random VAE.")
    allow_download: bool = Field(False, description="Let diffusers fetch weights missing from the local cache.")
    runtime: RuntimeConfig = Field(default_factory=lambda: RuntimeConfig(batch_size=8))


class TrainingSamplesConfig(Spec):
    """Self-reconstruction pairs with expanded, complementary masks and augmented references."""

    pairs: PairConfig = Field(default_factory=PairConfig)
    expansion: ExpansionConfig = Field(default_factory=ExpansionConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    latents: LatentConfig | None = Field(None, description="Also store VAE latents (None: images only).")

    def check_attributes(self, attributes: tuple[str, ...]) -> None:
        """Raise ValueError when generation has no prompt for a masked attribute."""
        if self.expansion.mode != "generate":
            return
        missing = [a for a in attributes if a not in self.expansion.generate.prompts]
        if missing:
            raise ValueError(f"expansion.generate.prompts has no template for {', '.join(missing)}")

    def check_keypoints(self, backend: str) -> None:
        """Raise ValueError when the generated expansion's condition cannot be drawn from this keypoint backend."""
        if self.expansion.mode == "generate" and self.expansion.generate.condition == "openpose_face" \
                and backend != "sapiens":
            raise ValueError(f"expansion.generate.condition 'openpose_face' derives the 68 OpenPose face points from "
                             f"Sapiens' Goliath face points; keypoints.backend {backend!r} gives 5 points. Use "
                             "backend 'sapiens', or condition 'pose_frames' with a ControlNet trained on pose frames")


# ---------------------------------------------------------------------------------------------
# What a pair sample records about itself


class AugmentParams(Spec):
    """The drawn augmentation of one reference; `tasks.samples.augment.apply` replays it exactly."""

    angle_deg: float = Field(description="Counter-clockwise rotation about the centre.")
    scale: float = Field(description="Zoom factor about the centre.")
    translate: tuple[float, float] = Field(description="Shift (x, y) in pixels, after rotation and zoom.")
    brightness: float = Field(description="Multiplier of every channel.")
    contrast: float = Field(description="Blend factor towards the image's mean grey (1: unchanged).")
    saturation: float = Field(description="Blend factor towards the image's greyscale (1: unchanged).")
    hue: float = Field(description="Hue shift as a fraction of the colour circle (a turn of YIQ's chroma plane).")
    fill: FillMode
    fill_value: RGB = (0, 0, 0)
    inpaint_seed: int | None = Field(None, description="Seed of the inpainting run (fill 'inpaint').")
    exposed_area: float = Field(0.0, description="Fraction of the image the warp exposed (and the fill painted).")


class ReferenceMeta(Spec):
    """One of the two reference frames."""

    position: int | None = Field(ge=0, description="Frame position within the clip; None for a reference from "
                                 "elsewhere in the scene or video.")
    frame_index: int = Field(description="Output-frame index in the decoded video.")
    time_s: float | None = Field(None, description="Source presentation time, seconds.")
    gap_s: float | None = Field(None, description="Time to the nearest target frame of the pair, seconds.")
    mask_area: float = Field(description="Fraction of the reference its stored mask covers (after augmentation).")
    augmentation: AugmentParams | None = None


class ExpansionMeta(Spec):
    """How M_port_train was made for the portrait reference."""

    mode: ExpansionMode
    attribute_area: float = Field(description="Fraction of the frame M_attr covers.")
    expanded_area: float = Field(description="Fraction of the frame M_port_train covers.")
    dilate_px: int | None = None
    erode_px: int | None = None
    prompt: str | None = None
    seed: int | None = None
    condition: ConditionRenderer | None = Field(None, description="How the ControlNet's condition image was drawn.")
    generated_image: str | None = Field(None, description="Member of this sample holding the generated image.")
    generator: str | None = Field(None, description="Model and weights that generated it.")


class PairMeta(Spec):
    """`meta.json` of a training sample."""

    kind: Literal["pair"] = "pair"
    video_id: str
    clip_key: str
    clip_index: int = Field(ge=0)
    source_path: str
    content_sha256: str
    config_hash: str
    code_version: str
    fps: float = Field(gt=0)
    scene_index: int | None = Field(None, ge=0, description="The clip's scene within its video (None: built "
                                    "before scenes were detected).")
    reference_scope: ReferenceScope = Field("clip", description="Where the references were drawn from "
                                            "(`pairs.references.scope`).")
    training_stage: TrainingStage
    pair_index: int = Field(ge=0)
    attribute: str
    target_positions: list[int] = Field(description="Clip positions of the target frames.")
    target_frame_indices: list[int] = Field(description="Output-frame indices of the target frames.")
    attribute_ref: ReferenceMeta
    portrait_ref: ReferenceMeta
    expansion: ExpansionMeta
    keypoint_layout: str
    pose_render: PoseRenderSpec | None = Field(None, description="How the pose frames were drawn (perception's "
                                               "`pose_render`; None: written before it was recorded).")
    face_size: float = Field(description="Median side of the crop box in decoded-frame pixels.")
    seed: int
    provenance: dict[str, str] = Field(description="What produced each part (models and weights, or truth).")
    latents_vae: str | None = Field(None, description="The VAE that encoded the stored latents.")
    latents_vae_weights: str | None = Field(
        None, description="sha256 of that VAE's weights (`weight_files.tensors.weights_fingerprint`): training refuses "
        "latents that another VAE made.")

    @property
    def reference_gap_s(self) -> float | None:
        """Time from the nearer of the two references to the nearest target, seconds (None when not recorded)."""
        gaps = [ref.gap_s for ref in (self.attribute_ref, self.portrait_ref) if ref.gap_s is not None]
        return min(gaps) if gaps else None

    @model_validator(mode="after")
    def _targets(self) -> PairMeta:
        if len(self.target_positions) != len(self.target_frame_indices) or not self.target_positions:
            raise ValueError("target_positions and target_frame_indices must be equally long and not empty")
        return self
