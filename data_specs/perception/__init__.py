"""Contracts of the perception processor, by kind; nothing here imports torch, so data workers read them
without a model.

- `layouts`: keypoint layouts (`KeypointLayout`, `GOLIATH_FACE`, `TRUTH_5`, `DETECTOR_5`) and `arcface_points`.
- `labels`: the attributes and the segmentation networks' label maps (`LabelMap`, `LABEL_MAPS`).
- `configs`: the processor's configs (`PerceptionConfig` and its sections, `PoseRenderSpec`) and `PerceptionMeta`,
  what it records in each sample.

The Sapiens network sizes are in `data_specs.network_sizes`, and the runtime settings every model shares
(`RuntimeConfig`, `Resources`) in `data_specs.spec`. The names below are this package's public interface.
"""

from data_specs.network_sizes import SAPIENS_ARCHS, SapiensArch, SapiensInput, SapiensSize
from data_specs.perception.configs import (
    RGB,
    FaceCropConfig,
    FaceDetectionConfig,
    KeypointConfig,
    PerceptionConfig,
    PerceptionMeta,
    PoseRenderSpec,
    SegmentationConfig,
)
from data_specs.perception.labels import (
    ATTRIBUTES,
    BISENET_LABELS,
    LABEL_MAPS,
    PARSENET_LABELS,
    SAPIENS_FACE_LABELS,
    SAPIENS_GOLIATH_LABELS,
    Attribute,
    LabelMap,
    SegmentationBackend,
    backend_attributes,
)
from data_specs.perception.layouts import (
    DETECTOR_5,
    GOLIATH_FACE,
    GOLIATH_FACE_START,
    GOLIATH_NUM_KEYPOINTS,
    KEYPOINT_LAYOUTS,
    TRUTH_5,
    KeypointLayout,
    arcface_points,
)
from data_specs.spec import Resources, RuntimeConfig

__all__ = [
    "ATTRIBUTES", "BISENET_LABELS", "DETECTOR_5", "GOLIATH_FACE", "GOLIATH_FACE_START", "GOLIATH_NUM_KEYPOINTS",
    "KEYPOINT_LAYOUTS", "LABEL_MAPS", "PARSENET_LABELS", "RGB", "SAPIENS_ARCHS", "SAPIENS_FACE_LABELS",
    "SAPIENS_GOLIATH_LABELS", "TRUTH_5", "Attribute", "FaceCropConfig", "FaceDetectionConfig", "KeypointConfig",
    "KeypointLayout", "LabelMap", "PerceptionConfig", "PerceptionMeta", "PoseRenderSpec", "Resources", "RuntimeConfig",
    "SapiensArch", "SapiensInput", "SapiensSize", "SegmentationBackend", "SegmentationConfig", "arcface_points",
    "backend_attributes",
]
