"""The perception clip stage: main-face track and crop, keypoints, pose frames and attribute masks.

The CPU steps (tracking, cropping, rendering) run here, in the unit task; the three models
(face detector, keypoint estimator, attribute segmenter) are `ModelSpec`s that the flow runs
in long-lived actors, called with a whole clip of frames at a time. No torch is imported
here: data workers stay light, and only the actors load models.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import numpy as np

from data_specs.perception import GOLIATH_FACE, TRUTH_5, KeypointLayout, PerceptionConfig, PerceptionMeta
from data_specs.sample import ClipSample
from data_specs.spec import Resources
from data_specs.video import DecodeConfig
from tasks.base import ModelClient, ModelSpec
from tasks.perception import build_face_detector, build_keypoint_estimator, build_segmenter
from tasks.perception.face_track import crop_boxes, crop_clip, to_crop_coords, track_main_face
from data_specs.pose_frames import render_pose_frames
from tasks.perception.truth import frame_refs

FACE_DETECTOR, KEYPOINTS, SEGMENTER = "face_detector", "keypoints", "segmenter"


def attribute_presence(masks: dict[str, np.ndarray], min_area: float) -> dict[str, np.ndarray]:
    """{attribute: (N,) bool}: the mask covers more than `min_area` of its frame."""
    return {attribute: mask.reshape(len(mask), -1).mean(axis=1) > min_area for attribute, mask in masks.items()}


def keypoint_layout(config: PerceptionConfig) -> KeypointLayout:
    """The layout of the keypoints this config produces: the truth's 5 points, or Goliath's face."""
    return TRUTH_5 if config.keypoints.backend == "truth" else GOLIATH_FACE


class PerceptionStage:
    """Replaces a clip's frames by its main-face crops and adds keypoints, pose frames and masks.

    Rejects a clip (`DataError`, recorded as a failure row) for the face-track rules of
    `track_main_face`: no face, several similar faces, a small face, a face leaving the
    frame, a cut. An attribute absent from a clip is kept as an all-False mask with
    presence False, never dropped.
    """

    name = "perception"
    resources = Resources(cpus=1)

    def __init__(self, config: PerceptionConfig, decode: DecodeConfig) -> None:
        self.config = config
        self.decode = decode
        self.layout = keypoint_layout(config)
        self.models = (
            ModelSpec(FACE_DETECTOR, functools.partial(build_face_detector, config.detection),
                      config.detection.runtime.resources, config.detection.runtime.replicas),
            ModelSpec(KEYPOINTS, functools.partial(build_keypoint_estimator, config.keypoints),
                      config.keypoints.runtime.resources, config.keypoints.runtime.replicas),
            ModelSpec(SEGMENTER, functools.partial(build_segmenter, config.segmentation),
                      config.segmentation.runtime.resources, config.segmentation.runtime.replicas),
        )
        self._clients: Mapping[str, ModelClient] = {}
        self._provenance: dict[str, str] = {}

    @property
    def segmenter(self) -> ModelSpec:
        """The attribute segmenter, which later stages call on images of their own."""
        return self.models[2]

    def setup(self, models: Mapping[str, ModelClient]) -> None:
        self._clients = models
        self._provenance = {name: client.get("provenance") for name, client in models.items()}

    def __call__(self, sample: ClipSample) -> list[ClipSample]:
        frames, meta = sample.frames, sample.meta
        height, width = frames.shape[1:3]
        size = self.config.crop.size
        refs = frame_refs(meta.source_path, meta.time_s, (width, height), self.decode.crop)

        # 1. The main face through the clip (the detector on whole frames), smoothed square crops.
        detections = self._clients[FACE_DETECTOR].call("detect", frames, refs)
        track = track_main_face(detections, (width, height), self.config.crop, frames)
        boxes = crop_boxes(track, self.config.crop)
        crops = crop_clip(frames, boxes, size)
        crop_refs = frame_refs(meta.source_path, meta.time_s, (width, height), self.decode.crop, boxes)

        # 2. Keypoints (top-down on the face box inside each crop) and their rendering.
        face_boxes = to_crop_coords(track.boxes.reshape(-1, 2, 2), boxes, size).reshape(-1, 4)
        keypoints = self._clients[KEYPOINTS].call("__call__", crops, face_boxes, crop_refs)
        pose_frames = render_pose_frames(keypoints, self.layout, size, self.config.pose_render)

        # 3. One mask per requested attribute, and where each is visible.
        masks = self._clients[SEGMENTER].call("__call__", crops, crop_refs)
        presence = attribute_presence(masks, self.config.segmentation.presence_min_area)

        perception = PerceptionMeta(
            keypoint_layout=self.layout.name,
            crop_boxes=[tuple(float(v) for v in box) for box in boxes],
            presence={attribute: flags.tolist() for attribute, flags in presence.items()},
            provenance=self._provenance,
        )
        return [ClipSample(key=sample.key, meta=meta.model_copy(update={"perception": perception}), frames=crops,
                           keypoints=np.asarray(keypoints, np.float32), masks=masks, pose_frames=pose_frames)]
