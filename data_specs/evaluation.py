"""The evaluation's contracts: what `evaluate-durian` takes (`EvalConfig`), the extractor files it measures with,
and the per-clip table it writes (`EvalClipRow` rows of the `EVAL_CLIPS` schema, tied by tests/test_schemas.py).

Protocol (the paper's, section 4): on the dataset's evaluation split (`data_specs.split`), never trained on,
  * self transfer: each evaluation clip is reconstructed from its own references, masked as in training, and
    compared with its real frames: L1, PSNR, SSIM, LPIPS per clip; FID between all generated and all real frames;
  * cross transfer: the portrait and motion of one clip with the attribute reference of a clip of another video:
    CLIP-I and DINO similarity of the generated attribute region to the attribute reference, ArcFace ID
    similarity of the generated frames to the portrait, and an FVD-style distance of the generated clips to the
    real ones;
  * triplet-backed cross transfer (`EvalConfig.triplets`): where the portrait's video is a triplet's A, B's video
    lends the attribute and the triplet's truth video (A's identity and motion wearing B's attribute, built into
    the same dataset, hence cut by the same face crop) gives the guidance and the exact answer: L1, PSNR, SSIM,
    LPIPS against it, over the frame and inside the truth's attribute region, and the same for the
    portrait-reference copy (A's portrait frame shown for every target), beside CLIP-I, DINO and ID.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator

from data_specs.model import IdentityEncoderSpec
from data_specs.spec import RayConfig, Spec, absolute_path
from data_specs.training_samples import TrainingStage

__all__ = ["CROSS", "EVAL_CLIPS", "PAPER_HAIR_SELF_TRANSFER", "SELF", "TRIPLET_METRICS", "ClipResult", "EvalClipRow",
           "EvalConfig", "EvalExecution", "ExtractorPaths", "Transfer", "eval_clips_table"]

# Self transfer: a clip regenerated with its own attribute (reconstruction, exact truth); cross transfer: with the
# attribute of a clip of another video.
Transfer = Literal["self", "cross"]
SELF: Transfer = "self"
CROSS: Transfer = "cross"
LpipsBackbone = Literal["alex", "vgg", "squeeze"]
VideoArch = Literal["r3d_18", "r2plus1d_18"]

# Table 1 of the paper, hair, self transfer (the only published row this pipeline reproduces directly).
PAPER_HAIR_SELF_TRANSFER = {"l1": 0.0744, "psnr": 18.83, "ssim": 0.6527, "lpips": 0.1565, "fid": 38.00}
# The per-clip columns of triplet-backed cross items: generated and portrait copy against the truth.
TRIPLET_METRICS = tuple(f"{who}_{name}" for who in ("truth", "copy")
                        for name in ("l1", "psnr", "ssim", "lpips", "region_l1", "region_psnr"))


class ExtractorPaths(Spec):
    """Where the evaluation's feature extractors are, as local files or folders (hub ids for the transformers
    ones when online). A metric whose extractor is not given is left out of the report, and says so."""

    inception: Path | None = Field(
        None, description="torchvision Inception-v3 state dict (inception_v3_google-0cc3c7bd.pth), for FID.")
    video: Path | None = Field(
        None, description="torchvision Kinetics-400 video ResNet state dict (r3d_18-b3b3357e.pth), for FVD.")
    video_arch: VideoArch = Field("r3d_18", description="The torchvision video model the `video` file is of.")
    lpips: Path | None = Field(
        None, description="torchvision state dict of the LPIPS backbone (alexnet-owt-7be5be79.pth for 'alex'); "
                          "the LPIPS linear layers ship with torchmetrics.")
    lpips_net: LpipsBackbone = Field("alex", description="LPIPS backbone: torchmetrics' 'alex', 'vgg' or 'squeeze'.")
    clip: str | None = Field(
        None, description="CLIPVisionModelWithProjection folder (config.json + model.safetensors), or a folder "
                          "with image_encoder/ (sd-image-variations), for CLIP-I.")
    dino: str | None = Field(None, description="Dinov2Model folder (config.json + model.safetensors), for DINO.")
    arcface: Path | None = Field(None, description="insightface arcface_torch backbone.pth, for ID similarity.")
    identity: IdentityEncoderSpec = Field(default_factory=IdentityEncoderSpec,
                                          description="The IResNet the `arcface` file is of.")


class EvalExecution(RayConfig):
    """Which Ray (the fields every command shares), and the actors generation runs on, each holding the pipeline
    and the extractors."""

    workers: int = Field(1, ge=1, le=1024, description="Evaluation actors (one pipeline each).")
    gpus_per_worker: float = Field(0.0, ge=0, description="GPUs per actor; > 0 runs on CUDA (bf16 generation).")
    cpus_per_worker: float = Field(1.0, gt=0)
    clips_per_task: int = Field(4, ge=1, le=1024, description="Clips an actor generates per Ray call.")


class EvalConfig(Spec):
    """One evaluation of a saved `DurianPipeline` on a dataset's evaluation split."""

    model: str = Field(description="A folder saved by `DurianPipeline.save_pretrained` (e.g. RUN/pipeline).")
    dataset: str = Field(description="A build-dataset output with training samples and an evaluation split.")
    output_dir: str = Field(description="Folder that receives the table, the summary and the video grid.")
    attributes: tuple[str, ...] = Field((), description="Attributes to evaluate (empty: every attribute the "
                                        "evaluation split has); each must have evaluation clips.")
    training_stage: TrainingStage = Field(2, description="The training stage whose pair samples are evaluated: 2 = "
                                          "clips (video metrics), 1 = single frames.")
    frames: int | None = Field(None, ge=1, description="Frames generated per clip (default: all of the sample's).")
    max_clips_per_attribute: int | None = Field(None, ge=1, description="Evaluate at most this many clips per "
                                                "attribute (the first by video and key).")
    steps: int = Field(25, ge=1, le=1000, description="DDIM steps.")
    guidance_scale: float = Field(3.5, ge=1.0, description="Classifier-free guidance scale.")
    seed: int = Field(0, ge=0)
    cross_transfer: bool = Field(True, description="Also generate every clip with the attribute of a clip from "
                                 "another video (no ground truth: CLIP-I, DINO, ID, FVD; exact truth on triplets).")
    triplets: str | None = Field(None, description="The folder `durian make-videos --triplets` wrote "
                                 "(OUT/triplets, with triplets.json) whose videos the dataset was built from: a cross "
                                 "item whose portrait is a triplet's A borrows B's attribute and is scored against "
                                 "the truth video's frames.")
    grid_clips: int = Field(3, ge=1, le=32, description="Worst and best clips (by L1) shown in the video grid.")
    extractors: ExtractorPaths = Field(default_factory=ExtractorPaths)
    execution: EvalExecution = Field(default_factory=EvalExecution)

    @field_validator("model", "dataset", "output_dir", "triplets")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        return None if value is None else absolute_path(value)


# One row per evaluated clip and transfer kind. Metrics a run could not measure (no extractor, or the other
# kind's) are null; a clip that failed has status "failed" and its reason.
EVAL_CLIPS = pa.schema(
    [
        pa.field("sample_key", pa.string(), nullable=False),  # the clip's pair sample (portrait, motion, truth)
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("attribute", pa.string(), nullable=False),
        pa.field("transfer", pa.string(), nullable=False),  # self | cross
        pa.field("attribute_sample_key", pa.string(), nullable=False),  # where the attribute reference is from
        pa.field("attribute_video_id", pa.string(), nullable=False),
        pa.field("frames", pa.int32(), nullable=False),
        pa.field("status", pa.string(), nullable=False),  # ok | failed
        pa.field("reason", pa.string()),
        pa.field("l1", pa.float64()),
        pa.field("psnr", pa.float64()),
        pa.field("ssim", pa.float64()),
        pa.field("lpips", pa.float64()),
        pa.field("clip_i", pa.float64()),
        pa.field("dino", pa.float64()),
        pa.field("id_similarity", pa.float64()),
        # Triplet-backed cross items only: the truth pair (guidance and answer) and the scores against its frames,
        # of the generated clip (truth_*) and of the portrait-reference copy (copy_*); region_* inside the truth's
        # attribute region (its pair's M_port_train).
        pa.field("truth_sample_key", pa.string()),
        pa.field("truth_video_id", pa.string()),
        *[pa.field(name, pa.float64()) for name in TRIPLET_METRICS],
        pa.field("generate_s", pa.float64()),
        pa.field("measure_s", pa.float64()),
    ]
)


@dataclass(kw_only=True)
class EvalClipRow:
    """One row of `EVAL_CLIPS`: an evaluated clip and transfer kind, its items, status and metrics (None where not
    measured)."""

    sample_key: str
    video_id: str
    attribute: str
    transfer: Transfer
    attribute_sample_key: str
    attribute_video_id: str
    frames: int = 0
    status: Literal["ok", "failed"] = "failed"
    reason: str | None = None
    l1: float | None = None
    psnr: float | None = None
    ssim: float | None = None
    lpips: float | None = None
    clip_i: float | None = None
    dino: float | None = None
    id_similarity: float | None = None
    truth_sample_key: str | None = None
    truth_video_id: str | None = None
    truth_l1: float | None = None
    truth_psnr: float | None = None
    truth_ssim: float | None = None
    truth_lpips: float | None = None
    truth_region_l1: float | None = None
    truth_region_psnr: float | None = None
    copy_l1: float | None = None
    copy_psnr: float | None = None
    copy_ssim: float | None = None
    copy_lpips: float | None = None
    copy_region_l1: float | None = None
    copy_region_psnr: float | None = None
    generate_s: float | None = None
    measure_s: float | None = None


@dataclass
class ClipResult:
    """What an evaluation worker sends back per clip: its table row and the features the distribution metrics pool
    over clips (FID, FVD-style), None where not measured."""

    row: EvalClipRow
    inception_generated: np.ndarray | None = None  # (F, D) per frame (self transfer)
    inception_real: np.ndarray | None = None
    video_generated: np.ndarray | None = None  # (1, D) per clip (cross transfer)
    video_real: np.ndarray | None = None


def eval_clips_table(rows: Iterable[EvalClipRow]) -> pa.Table:
    """The rows as an Arrow table of the `EVAL_CLIPS` schema."""
    return pa.Table.from_pylist([dataclasses.asdict(row) for row in rows], schema=EVAL_CLIPS)
