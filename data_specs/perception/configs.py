"""The perception processor's configs (detection, crop, keypoints, segmentation, pose rendering) and what it records.

Configs are frozen; every field has a default and a description. Where each model runs is a
`data_specs.spec.RuntimeConfig`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from data_specs.network_sizes import SapiensInput, SapiensSize
from data_specs.perception.labels import Attribute, SegmentationBackend, backend_attributes
from data_specs.spec import RuntimeConfig, Spec

RGB = tuple[int, int, int]


class FaceDetectionConfig(Spec):
    """Face detection on whole frames."""

    backend: Literal["retinaface_resnet50", "retinaface_mobile0.25", "truth"] = Field(
        "retinaface_resnet50",
        description="facexlib RetinaFace network, or 'truth': the exact boxes of generated test videos.",
    )
    weights_dir: str | None = Field(
        None,
        description="Folder holding the facexlib weights under their official names "
        "(detection_Resnet50_Final.pth, detection_mobilenet0.25_Final.pth).",
    )
    allow_download: bool = Field(
        False, description="Let facexlib download missing weights into `weights_dir` (needs internet)."
    )
    max_side: int = Field(
        640, ge=32, le=8192,
        description="The detector sees a copy of each frame shrunk (area averaging) so that its longer side is at "
        "most this; boxes and landmarks are mapped back to the frame. RetinaFace's anchors reach 512 px, so a "
        "close-up face at HD resolution would come back as several boxes; 640 is insightface's detection size.",
    )
    score_threshold: float = Field(0.8, gt=0, lt=1, description="Detections scoring at or below this are dropped.")
    nms_threshold: float = Field(0.4, gt=0, le=1, description="IoU above which the weaker of two boxes is dropped.")
    runtime: RuntimeConfig = Field(default_factory=lambda: RuntimeConfig(batch_size=16))


class FaceCropConfig(Spec):
    """Following the main face through a clip, rejecting unusable clips, and cutting the square crop."""

    min_iou: float = Field(
        0.3, gt=0, lt=1, description="A detection continues the track when its IoU with the last box is at least this."
    )
    max_gap: int = Field(
        3, ge=0, description="Longest run of frames without a matching detection that is bridged by interpolation."
    )
    min_face_fraction: float = Field(
        0.08, ge=0, lt=1, description="Reject when the median face box side is below this fraction of the frame's "
        "shorter side."
    )
    similar_face_ratio: float = Field(
        0.5, gt=0, le=1, description="Another face with at least this fraction of the main face's area competes "
        "with it."
    )
    max_crowded_fraction: float = Field(
        0.1, ge=0, le=1, description="Reject when more than this fraction of frames show a competing face."
    )
    max_outside_fraction: float = Field(
        0.1, ge=0, lt=1, description="Reject when more than this fraction of the face box lies outside the frame."
    )
    smoothing_sigma: float = Field(
        2.0, ge=0, description="Gaussian smoothing of the face box over time, in frames (0: none). Zero-phase, so "
        "the crop does not lag the head."
    )
    margin: float = Field(
        0.5, ge=0, le=3, description="Crop side = longer face-box side x (1 + 2 x margin)."
    )
    shift_y: float = Field(
        0.1, ge=-1, le=1, description="Crop centre moves up by this fraction of the face-box height (hair and hats "
        "sit above the face box)."
    )
    size: int = Field(512, ge=16, le=4096, description="Output crops are size x size pixels.")
    max_upscale: float = Field(
        1.5, ge=1, description="Reject a clip whose crop would be enlarged from the source by more than this "
        "factor (`source_px_per_output_px` below 1 / max_upscale): the crop would hold less detail than its size "
        "claims."
    )


class KeypointConfig(Spec):
    """Face keypoints on the face crops."""

    backend: Literal["sapiens", "detector", "truth"] = Field(
        "sapiens", description="Sapiens pose (Goliath face points); 'detector': the face detector's 5 landmarks "
        "(no keypoint model, e.g. to inspect crops, masks and pairs before running Sapiens); or 'truth': the 5 "
        "exact points of test videos."
    )
    checkpoint: str | None = Field(
        None, description="Sapiens pose checkpoint: the original .pth, a TorchScript .pt2 or a bfloat16 "
        "torch.export .pt2 (the format is read from the file, never from its name)."
    )
    arch: SapiensSize = Field("0.3b", description="Sapiens size of a .pth checkpoint.")
    trust_code: bool = Field(False, description="Load a TorchScript or torch.export `checkpoint`: these run "
                             "code when opened (a crafted one runs anything), so they are refused unless set; "
                             "the .pth release is weights only.")
    image_size: SapiensInput = Field((1024, 768), description="Network input (height, width); multiples of 16.")
    box_scale: float = Field(1.25, gt=0, description="Top-down box = the whole face crop x this, widened to 3:4 "
                             "(mmpose's bbox padding, as Sapiens' demo feeds a face crop).")
    blur_kernel: int = Field(11, ge=1, description="DARK heatmap modulation kernel (odd).")
    flip_test: bool = Field(False, description="Also run the mirrored crop and average the heatmaps (2x compute).")
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)

    @field_validator("blur_kernel")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError("must be odd")
        return value

    @model_validator(mode="after")
    def _checkpoint_given(self) -> KeypointConfig:
        if self.backend == "sapiens" and not self.checkpoint:
            raise ValueError("backend 'sapiens' needs `checkpoint` (a .pth or .pt2 file)")
        return self


class SegmentationConfig(Spec):
    """Attribute masks on the face crops."""

    backend: SegmentationBackend = Field(
        "bisenet", description="facexlib BiSeNet or ParseNet, Sapiens segmentation (Goliath 28 classes or the "
        "19-class face layout), or 'truth': the exact masks of generated test videos."
    )
    attributes: tuple[Attribute, ...] = Field(
        ("hair", "eyeglasses", "hat"), min_length=1, description="Attributes to mask; the backend must have them."
    )
    weights_dir: str | None = Field(
        None, description="facexlib backends: folder with parsing_bisenet.pth / parsing_parsenet.pth."
    )
    allow_download: bool = Field(False, description="facexlib backends: let facexlib download missing weights.")
    checkpoint: str | None = Field(None, description="Sapiens backends: a .pth or .pt2 segmentation checkpoint.")
    arch: SapiensSize = Field("1b", description="Sapiens size of a .pth checkpoint.")
    trust_code: bool = Field(False, description="Load a TorchScript or torch.export `checkpoint`: these run "
                             "code when opened (a crafted one runs anything), so they are refused unless set; "
                             "the .pth release is weights only.")
    image_size: SapiensInput = Field((1024, 768), description="Sapiens input (height, width); multiples of 16.")
    presence_min_area: float = Field(
        0.002, ge=0, lt=1, description="An attribute is present in a frame when its mask covers more than this "
        "fraction of the crop."
    )
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)

    @field_validator("attributes")
    @classmethod
    def _unique(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError("attributes must not repeat")
        return value

    @model_validator(mode="after")
    def _backend_has_attributes(self) -> SegmentationConfig:
        available = backend_attributes(self.backend)
        missing = [a for a in self.attributes if a not in available]
        if missing:
            raise ValueError(f"backend {self.backend!r} cannot produce {', '.join(missing)}; "
                             f"it produces {', '.join(available)}")
        if self.backend.startswith("sapiens") and not self.checkpoint:
            raise ValueError(f"backend {self.backend!r} needs `checkpoint` (a .pth or .pt2 file)")
        return self


_REGION_COLOURS: dict[str, RGB] = {
    "midline": (255, 255, 255),
    "right_brow": (255, 140, 0),
    "left_brow": (0, 140, 255),
    "right_eye": (255, 0, 0),
    "left_eye": (0, 0, 255),
    "right_iris": (255, 0, 255),
    "left_iris": (0, 255, 255),
    "right_pupil": (255, 255, 0),
    "left_pupil": (0, 255, 0),
    "nose": (200, 120, 255),
    "outer_lips": (255, 60, 120),
    "inner_lips": (120, 255, 60),
    "right_ear": (160, 80, 0),
    "left_ear": (0, 80, 160),
}


class PoseRenderSpec(Spec):
    """How keypoints become the pose guider's input frames (`data_specs.pose_frames.render_pose_frames`).

    Each point with confidence >= `confidence_threshold` is a filled dot in its region's colour on
    black, drawn without anti-aliasing in layout order; the dot radius scales with the frame size.
    """

    confidence_threshold: float = Field(0.3, ge=0, description="Points with a lower confidence are not drawn.")
    point_radius: int = Field(2, ge=0, description="Dot radius in pixels at `reference_size` (0: one pixel).")
    reference_size: int = Field(512, ge=1, description="Output size at which `point_radius` applies; it scales "
                                "with the output's shorter side.")
    region_colours: dict[str, RGB] = Field(
        default_factory=lambda: dict(_REGION_COLOURS),
        description="RGB colour of each facial region; every region of a layout must have one.",
    )

    @field_validator("region_colours")
    @classmethod
    def _visible(cls, value: dict[str, RGB]) -> dict[str, RGB]:
        for region, colour in value.items():
            if not all(0 <= c <= 255 for c in colour) or not any(colour):
                raise ValueError(f"{region}: colour {colour} must be RGB in 0..255 and not black (the background)")
        return value


class PerceptionConfig(Spec):
    """The perception of a build: each clip's main face is tracked and cropped, then keypoints, pose frames and
    attribute masks are computed on the crops. The models run in Ray actors that load once per build."""

    detection: FaceDetectionConfig = Field(default_factory=FaceDetectionConfig)
    crop: FaceCropConfig = Field(default_factory=FaceCropConfig)
    keypoints: KeypointConfig = Field(description="Keypoint backend; 'sapiens' needs a checkpoint.")
    segmentation: SegmentationConfig = Field(default_factory=SegmentationConfig)
    pose_render: PoseRenderSpec = Field(default_factory=PoseRenderSpec)


class PerceptionMeta(Spec):
    """What perception adds to a sample's `meta.json`."""

    keypoint_layout: str = Field(description="Name of the keypoint layout (`KeypointLayout.name`).")
    crop_boxes: list[tuple[float, float, float, float]] = Field(
        description="Per frame: the square box (x1, y1, x2, y2, decoded-frame pixels) the crop was cut from.")
    source_px_per_output_px: float | None = Field(
        None, description="Median crop side in source pixels / crop size: below 1 the crop is enlarged from the "
        "source (None: written before it was recorded).")
    presence: dict[str, list[bool]] = Field(description="Per attribute, per frame: is the attribute visible.")
    provenance: dict[str, str] = Field(description="What produced each output (model and weights, or ground truth).")
    pose_render: PoseRenderSpec | None = Field(
        None, description="How the pose frames were drawn; a model trained on them draws its driving frames the same "
        "way (None: written before it was recorded).")
