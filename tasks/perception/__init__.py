"""Perception components: face detection, tracking and crop, face keypoints, attribute masks.

Every model component is a class with a cheap `__init__(config)`, a `setup()` that loads its
weights once per worker, `resources` (what it wants from the worker) and a batched call over
numpy uint8 RGB images (N, H, W, 3). `build_*` pick the class for a config's backend.
Ground-truth backends (`backend: truth`, for generated test videos) have the same calls and
need a `truth.FrameRef` per image; models accept and ignore it.

Importing this package imports no torch: the model modules are imported by the builders.
The CPU-only steps are in `face_track` (tracking, cropping); pose frames are drawn by
`data_specs.pose_frames.render_pose_frames`, which inference shares. `processor` is the clip processor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from data_specs.perception import FaceDetectionConfig, KeypointConfig, KeypointLayout, SegmentationConfig
from data_specs.spec import Resources

if TYPE_CHECKING:
    from tasks.perception.truth import FrameRef


@runtime_checkable
class FaceDetector(Protocol):
    resources: Resources
    provenance: str  # what produced the output, e.g. "facexlib retinaface_resnet50" or the ground-truth label

    def setup(self) -> None: ...

    def detect(self, frames: np.ndarray, refs: Sequence[FrameRef] | None = None) -> list[np.ndarray]:
        """One (k, 15) float32 array per frame: x1, y1, x2, y2, score, 5 (x, y) landmarks; best first."""


@runtime_checkable
class KeypointEstimator(Protocol):
    resources: Resources
    provenance: str
    layout: KeypointLayout

    def setup(self) -> None: ...

    def __call__(self, crops: np.ndarray, boxes: np.ndarray | None = None,
                 refs: Sequence[FrameRef] | None = None) -> np.ndarray:
        """(N, layout.num_points, 3) float32: x, y, confidence in crop pixels."""


@runtime_checkable
class Segmenter(Protocol):
    resources: Resources
    provenance: str

    def setup(self) -> None: ...

    def __call__(self, crops: np.ndarray, refs: Sequence[FrameRef] | None = None) -> dict[str, np.ndarray]:
        """{attribute: (N, H, W) bool} for the configured attributes."""


def build_face_detector(config: FaceDetectionConfig) -> FaceDetector:
    """The detector for `config.backend` (not yet set up)."""
    if config.backend == "truth":
        from tasks.perception.truth import TruthFaceDetector

        return TruthFaceDetector(config)
    from tasks.perception.face_detection import RetinaFaceDetector

    return RetinaFaceDetector(config)


def build_keypoint_estimator(config: KeypointConfig) -> KeypointEstimator:
    """The keypoint estimator for `config.backend` (not yet set up)."""
    if config.backend == "truth":
        from tasks.perception.truth import TruthKeypointEstimator

        return TruthKeypointEstimator(config)
    from tasks.perception.keypoints import SapiensKeypointEstimator

    return SapiensKeypointEstimator(config)


def build_segmenter(config: SegmentationConfig) -> Segmenter:
    """The attribute segmenter for `config.backend` (not yet set up)."""
    if config.backend == "truth":
        from tasks.perception.truth import TruthSegmenter

        return TruthSegmenter(config)
    if config.backend in ("bisenet", "parsenet"):
        from tasks.perception.segmentation import FacexlibSegmenter

        return FacexlibSegmenter(config)
    from tasks.perception.segmentation import SapiensSegmenter

    return SapiensSegmenter(config)
