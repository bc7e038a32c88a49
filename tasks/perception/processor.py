"""The perception clip processor: main-face track and crop, keypoints, pose frames and attribute masks.

The CPU steps (tracking, cropping, rendering) run here, in the unit task; the three models
(face detector, keypoint estimator, attribute segmenter) are `ModelSpec`s that the flow runs
in long-lived actors, called with a whole clip of frames at a time. No torch is imported
here: data workers stay light, and only the actors load models.

Frames arrive at the source's aspect ratio and resolution (`ClipMeta.source_size`). The
detector sees a copy bounded by `detection.max_side` (a small copy also keeps what travels
to its actor small); the face rules judge the real frame, and the crop is cut from it.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import numpy as np

from data_specs.perception import (
    DETECTOR_5,
    GOLIATH_FACE,
    TRUTH_5,
    KeypointLayout,
    PerceptionConfig,
    PerceptionMeta,
)
from data_specs.pose_frames import render_pose_frames
from data_specs.sample import ClipSample
from data_specs.spec import Resources
from data_specs.video import DecodeConfig
from tasks.base import ModelSpec
from tasks.errors import DataError
from tasks.perception import (
    FaceDetector,
    KeypointEstimator,
    Segmenter,
    build_face_detector,
    build_keypoint_estimator,
    build_segmenter,
)
from tasks.perception.face_track import (
    FaceTrack,
    crop_boxes,
    crop_clip,
    detector_view,
    source_px_per_output_px,
    to_crop_coords,
    to_frame_detections,
    track_main_face,
)
from tasks.perception.truth import frame_refs

FACE_DETECTOR, KEYPOINTS, SEGMENTER = "face_detector", "keypoints", "segmenter"


def attribute_presence(masks: dict[str, np.ndarray], min_area: float) -> dict[str, np.ndarray]:
    """{attribute: (N,) bool}: the mask covers more than `min_area` of its frame."""
    return {attribute: mask.reshape(len(mask), -1).mean(axis=1) > min_area for attribute, mask in masks.items()}


def keypoint_layout(config: PerceptionConfig) -> KeypointLayout:
    """The layout of the keypoints this config produces: the truth's or the detector's 5 points, or Goliath's face."""
    return {"truth": TRUTH_5, "detector": DETECTOR_5}.get(config.keypoints.backend, GOLIATH_FACE)


def detector_keypoints(track: FaceTrack, boxes: np.ndarray, size: int) -> np.ndarray:
    """(N, 5, 3) the track's landmarks in crop pixels, confidence = detection score (interpolated over the
    bridged frames, whose points are interpolated too)."""
    detected = np.flatnonzero(track.detected)
    scores = np.interp(np.arange(len(track.scores)), detected, track.scores[detected])
    points = to_crop_coords(track.landmarks, boxes, size)
    return np.concatenate([points, np.repeat(scores[:, None, None], 5, axis=1)], axis=2).astype(np.float32)


class PerceptionProcessor:
    """Replaces a clip's frames by its main-face crops and adds keypoints, landmarks, pose frames and masks.

    Rejects a clip (`DataError`, recorded as a failure row) for the face-track rules of
    `track_main_face` (no face, several similar faces, a small face, a face leaving the
    frame, a cut) and when the crop would be enlarged from the source by more than
    `crop.max_upscale`. An attribute absent from a clip is kept as an all-False mask with
    presence False, never dropped.
    """

    name = "perception"
    resources = Resources(cpus=1)

    def __init__(self, config: PerceptionConfig, decode: DecodeConfig) -> None:
        self.config = config
        self.decode = decode
        self.layout = keypoint_layout(config)
        models = [
            ModelSpec(FACE_DETECTOR, functools.partial(build_face_detector, config.detection),
                      config.detection.runtime.resources, config.detection.runtime.replicas),
            ModelSpec(SEGMENTER, functools.partial(build_segmenter, config.segmentation),
                      config.segmentation.runtime.resources, config.segmentation.runtime.replicas),
        ]
        if config.keypoints.backend != "detector":  # the detector's landmarks need no model of their own
            models.insert(1, ModelSpec(KEYPOINTS, functools.partial(build_keypoint_estimator, config.keypoints),
                                       config.keypoints.runtime.resources, config.keypoints.runtime.replicas))
        self.models = tuple(models)
        self.requires: tuple[str, ...] = ()
        self._provenance: dict[str, str] = {}

    def setup(self, models: Mapping[str, Any]) -> None:
        self.detector: FaceDetector = models[FACE_DETECTOR]
        self.estimator: KeypointEstimator | None = models.get(KEYPOINTS)  # None: the detector's landmarks
        self.segmenter: Segmenter = models[SEGMENTER]
        proxies = {FACE_DETECTOR: self.detector, KEYPOINTS: self.estimator, SEGMENTER: self.segmenter}
        # In `self.models`' order: the provenance is written into every sample's metadata.
        self._provenance = {spec.name: proxies[spec.name].provenance for spec in self.models}
        if self.estimator is None:
            self._provenance[KEYPOINTS] = f"face detector landmarks ({self._provenance[FACE_DETECTOR]})"

    def __call__(self, sample: ClipSample) -> list[ClipSample]:
        frames, meta = sample.frames, sample.meta
        height, width = frames.shape[1:3]
        size = self.config.crop.size
        # Source-size frames are a pure scale of the source; square frames follow decode.crop.
        fit = "source" if meta.source_size is not None else self.decode.crop
        source_per_frame_px = max(meta.source_size) / max(width, height) if meta.source_size else 1.0

        # 1. The main face through the clip: the detector on a bounded copy, its answers in frame pixels.
        view, scale = detector_view(frames, self.config.detection.max_side)
        view_refs = frame_refs(meta.source_path, meta.time_s, (view.shape[2], view.shape[1]), fit)
        detections = to_frame_detections(self.detector.detect(view, view_refs), scale)
        track = track_main_face(detections, (width, height), self.config.crop)
        boxes = crop_boxes(track, self.config.crop)
        detail = source_px_per_output_px(boxes, size, source_per_frame_px)
        if detail < 1 / self.config.crop.max_upscale:
            raise DataError(
                f"crop enlarged from the source: {detail:.2f} source px per output px (median crop side "
                f"{detail * size:.0f} source px for a {size} px crop), below 1/{self.config.crop.max_upscale:g} "
                f"(crop.max_upscale)")
        # 2. Square crops cut from the frames at their own resolution.
        crops = crop_clip(frames, boxes, size)
        crop_refs = frame_refs(meta.source_path, meta.time_s, (width, height), fit, boxes)
        landmarks = to_crop_coords(track.landmarks, boxes, size)

        # 3. Keypoints and their rendering. Sapiens is given the whole crop as its top-down box (see
        # `SapiensKeypointEstimator`), as its demo feeds face crops.
        if self.estimator is None:
            keypoints = detector_keypoints(track, boxes, size)
        else:
            keypoints = self.estimator(crops, None, crop_refs)
        pose_frames = render_pose_frames(keypoints, self.layout, size, self.config.pose_render)

        # 4. One mask per requested attribute, and where each is visible.
        masks = self.segmenter(crops, crop_refs)
        presence = attribute_presence(masks, self.config.segmentation.presence_min_area)

        perception = PerceptionMeta(
            keypoint_layout=self.layout.name,
            crop_boxes=[tuple(float(v) for v in box) for box in boxes],
            source_px_per_output_px=round(detail, 4),
            presence={attribute: flags.tolist() for attribute, flags in presence.items()},
            provenance=self._provenance,
            pose_render=self.config.pose_render,
        )
        return [ClipSample(key=sample.key, meta=meta.model_copy(update={"perception": perception}), frames=crops,
                           keypoints=np.asarray(keypoints, np.float32), landmarks=landmarks.astype(np.float32),
                           masks=masks, pose_frames=pose_frames)]
