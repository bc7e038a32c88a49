"""Ground-truth perception for the generated test videos: exact faces, keypoints and masks, no weights.

`tasks.synthetic` writes `<stem>.truth.npz` beside every generated video. The three truth
backends read it and offer the same calls as the models (`detect`, keypoints `__call__`,
masks `__call__`), so the demo and downstream tests get correct crops, keypoints and masks
on a machine without weights. They are ground truth, not models, and say so in their
`provenance`; their keypoints use the 5-point `TRUTH_5` layout, not Goliath's.

A model looks at pixels; the truth has to be told which frame an image is: each image comes
with a `FrameRef` (video, time, how the decoder fitted the video into the frame, and the
crop box when the image is a crop). Geometry follows `DecodeConfig.crop` to within a pixel
of ffmpeg's rounding; frames decoded at the source's aspect ratio (perception's frames, and
the detector's smaller copy of them) are a pure scale of the source.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, TypeAlias

import cv2
import numpy as np

from data_specs.perception import (
    TRUTH_5,
    FaceDetectionConfig,
    KeypointConfig,
    KeypointLayout,
    SegmentationConfig,
)
from tasks.errors import DataError
from tasks.perception.face_track import frame_to_crop_matrix
from tasks.perception.runtime import ModelComponent
from tasks.synthetic import load_truth

PROVENANCE = "ground truth of a generated video (not a model)"
# How a frame shows the source: `DecodeConfig.crop` for decode.size squares, or "source": the whole
# picture at its own aspect ratio, scaled (frames decoded with `source_size=True`).
Fit: TypeAlias = Literal["center", "pad", "source"]
_CACHED_VIDEOS = 4


@dataclass(frozen=True)
class FrameRef:
    """Which frame of which generated video an image shows.

    Attributes:
        video: path of the generated video; its truth is `<stem>.truth.npz` beside it.
        time_s: presentation time of the frame in the video.
        frame_size: (width, height) of the decoded frame.
        decode_crop: how the decoder fitted the video into the frame (`DecodeConfig.crop`, or "source").
        crop_box: the square box (decoded-frame pixels) the image was cut from; None: the image is the frame.
    """

    video: str
    time_s: float
    frame_size: tuple[int, int]
    decode_crop: Fit = "center"
    crop_box: tuple[float, float, float, float] | None = None


def frame_refs(video: str, times: Sequence[float], frame_size: tuple[int, int], decode_crop: Fit,
               crop_boxes: np.ndarray | None = None) -> list[FrameRef]:
    """One `FrameRef` per frame time of a clip, with the clip's crop boxes when the images are crops."""
    boxes = [None] * len(times) if crop_boxes is None else [tuple(map(float, box)) for box in crop_boxes]
    return [FrameRef(video, float(t), frame_size, decode_crop, box) for t, box in zip(times, boxes)]


class _TruthBackend(ModelComponent):
    """Reads (and keeps a few) truth files; maps source pixels to the pixels of the image a `FrameRef` names."""

    backends = ("truth",)
    provenance = PROVENANCE

    def __init__(self, config: FaceDetectionConfig | KeypointConfig | SegmentationConfig) -> None:
        super().__init__(config)
        self._truths: OrderedDict[str, dict] = OrderedDict()

    def setup(self) -> None:
        """Nothing to load."""

    def _lookup(self, ref: FrameRef) -> tuple[dict, int]:
        """The video's truth and the index of the truth frame at `ref.time_s`."""
        truth = self._truths.pop(ref.video, None)
        if truth is None:
            try:
                truth = load_truth(ref.video)
            except FileNotFoundError as error:
                raise DataError(f"no ground truth beside {ref.video}: the truth backends only know generated "
                                "videos (tasks.synthetic)") from error
        self._truths[ref.video] = truth
        while len(self._truths) > _CACHED_VIDEOS:
            self._truths.popitem(last=False)
        index = int(np.clip(round(ref.time_s * truth["fps"]), 0, len(truth["boxes"]) - 1))
        return truth, index

    @staticmethod
    def _source_to_image(ref: FrameRef, source_size: tuple[int, int], image_size: tuple[int, int]) -> np.ndarray:
        """3x3 affine from source (display) pixels to the pixels of the image `ref` describes."""
        frame = np.asarray(ref.frame_size, np.float64)
        source = np.asarray(source_size, np.float64)
        if ref.decode_crop == "source":  # the whole picture, each side scaled (to even sizes) on its own
            scale, offset = frame / source, np.zeros(2)
        else:
            fit = np.max if ref.decode_crop == "center" else np.min  # cover-and-crop, or fit-and-pad
            scale = np.full(2, fit(frame / source))
            offset = (frame - source * scale) / 2
        # Pixel centres: source pixel p covers [p, p + 1), so p + 0.5 maps to (p + 0.5) * scale + offset.
        matrix = np.array([[scale[0], 0, 0.5 * scale[0] + offset[0] - 0.5],
                           [0, scale[1], 0.5 * scale[1] + offset[1] - 0.5], [0, 0, 1]])
        if ref.crop_box is not None:
            if image_size[0] != image_size[1]:
                raise ValueError(f"crops are square; got an image of {image_size[0]}x{image_size[1]}")
            matrix = np.vstack([frame_to_crop_matrix(np.asarray(ref.crop_box), image_size[0]), [0, 0, 1]]) @ matrix
        return matrix

    def _points(self, refs: Sequence[FrameRef], image_size: tuple[int, int], key: str) -> np.ndarray:
        """(N, P, 2) truth points (`boxes` as 2 corners, or `keypoints`) in image pixels."""
        out = []
        for ref in refs:
            truth, index = self._lookup(ref)
            points = truth[key][index].reshape(-1, 2).astype(np.float64)
            matrix = self._source_to_image(ref, truth["size"], image_size)
            out.append(points @ matrix[:2, :2].T + matrix[:2, 2])
        return np.asarray(out, np.float32)


def _check_refs(images: np.ndarray, refs: Sequence[FrameRef] | None) -> Sequence[FrameRef]:
    if refs is None or len(refs) != len(images):
        raise ValueError("truth backends need one FrameRef per image (which video and time it shows)")
    return refs


class TruthFaceDetector(_TruthBackend):
    """The exact face box and 5 points of each frame, as one (1, 15) detection with score 1."""

    config: FaceDetectionConfig

    def detect(self, frames: np.ndarray, refs: Sequence[FrameRef] | None = None) -> list[np.ndarray]:
        refs = _check_refs(frames, refs)
        size = (frames.shape[2], frames.shape[1])
        boxes = self._points(refs, size, "boxes").reshape(len(refs), 4)
        landmarks = self._points(refs, size, "keypoints").reshape(len(refs), 10)
        score = np.ones((len(refs), 1), np.float32)
        return list(np.concatenate([boxes, score, landmarks], axis=1)[:, None])


class TruthKeypointEstimator(_TruthBackend):
    """The exact 5 points (`TRUTH_5`) of each image, confidence 1."""

    config: KeypointConfig
    layout: KeypointLayout = TRUTH_5

    def __call__(self, crops: np.ndarray, boxes: np.ndarray | None = None,
                 refs: Sequence[FrameRef] | None = None) -> np.ndarray:
        """(N, 5, 3) float32 x, y, 1 in image pixels; `boxes` is accepted for the common signature."""
        refs = _check_refs(crops, refs)
        points = self._points(refs, (crops.shape[2], crops.shape[1]), "keypoints")
        return np.concatenate([points, np.ones((*points.shape[:2], 1), np.float32)], axis=2)


class TruthSegmenter(_TruthBackend):
    """The exact attribute masks of each image; an attribute the video was drawn without is all False."""

    config: SegmentationConfig

    def __call__(self, crops: np.ndarray, refs: Sequence[FrameRef] | None = None) -> dict[str, np.ndarray]:
        refs = _check_refs(crops, refs)
        size = (crops.shape[2], crops.shape[1])
        masks = {attribute: np.zeros(crops.shape[:3], bool) for attribute in self.config.attributes}
        for i, ref in enumerate(refs):
            truth, index = self._lookup(ref)
            matrix = self._source_to_image(ref, truth["size"], size)[:2]
            for attribute in self.config.attributes:
                source = truth.get(f"masks_{attribute}")
                if source is not None:
                    masks[attribute][i] = cv2.warpAffine(source[index].view(np.uint8), matrix, size,
                                                         flags=cv2.INTER_NEAREST, borderValue=0).astype(bool)
        return masks
