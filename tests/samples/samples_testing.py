"""A perceived clip built by hand (crops, masks, pose frames, perception meta) for the training-sample tests."""

from __future__ import annotations

import cv2
import numpy as np

from data_specs.perception import (
    TRUTH_5,
    KeypointConfig,
    PerceptionConfig,
    PerceptionMeta,
    PoseRenderSpec,
    SegmentationConfig,
)
from data_specs.pose_frames import render_pose_frames
from data_specs.sample import ClipMeta, ClipSample
from data_specs.training_samples import TrainingSamplesConfig
from data_specs.video import DecodeConfig
from tasks.build_processors import local_models, models_for
from tasks.perception.processor import PerceptionProcessor
from tasks.samples.processor import TrainingSampleProcessor

# Not the default spec, so a test can tell that the one the dataset drew with is the one a model records.
HAND_POSE_RENDER = PoseRenderSpec(point_radius=3, reference_size=64)
TRUTH_PERCEPTION = PerceptionConfig(keypoints=KeypointConfig(backend="truth"),
                                    segmentation=SegmentationConfig(backend="truth", attributes=("hair", "hat")))


def perceived_clip(frames: int = 12, size: int = 64, hat_frames: tuple[int, ...] = (), seed: int = 0,
                   key: str = "vid_c00000") -> ClipSample:
    """A textured clip with a hair mask (a disc moving right) in every frame and a hat mask in `hat_frames`."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 255, (frames, size, size, 3), dtype=np.uint8)
    images = np.stack([cv2.GaussianBlur(image, (5, 5), 1.5) for image in images])
    hair = np.zeros((frames, size, size), np.uint8)
    hat = np.zeros_like(hair)
    for i in range(frames):
        cv2.circle(hair[i], (size // 3 + i, size // 3), size // 5, 1, -1)
        if i in hat_frames:
            cv2.rectangle(hat[i], (size // 4, 0), (3 * size // 4, size // 8), 1, -1)
    masks = {"hair": hair.astype(bool), "hat": hat.astype(bool)}
    keypoints = rng.uniform(size * 0.3, size * 0.7, (frames, 5, 3)).astype(np.float32)
    keypoints[..., 2] = 1
    pose = render_pose_frames(keypoints, TRUTH_5, size, HAND_POSE_RENDER)
    perception = PerceptionMeta(
        keypoint_layout="truth_5", crop_boxes=[(10.0, 20.0, 10.0 + 2 * size, 20.0 + 2 * size)] * frames,
        presence={name: (m.reshape(frames, -1).mean(1) > 0.002).tolist() for name, m in masks.items()},
        provenance={"segmenter": "hand-made masks"}, pose_render=HAND_POSE_RENDER)
    meta = ClipMeta(video_id=key.split("_c")[0], clip_index=0, frame_indices=list(range(100, 100 + frames)),
                    time_s=[i / 25 for i in range(frames)], fps=25.0, source_path="/videos/vid.mp4",
                    content_sha256="ab" * 32, config_hash="c0ffee", code_version="test", perception=perception)
    return ClipSample(key=key, meta=meta, frames=images, keypoints=keypoints, landmarks=keypoints[..., :2].copy(),
                      masks=masks, pose_frames=pose)


def sample_processor(config: TrainingSamplesConfig, perception: PerceptionConfig = TRUTH_PERCEPTION
                     ) -> TrainingSampleProcessor:
    """The training-sample processor with its models run in this process."""
    processor = TrainingSampleProcessor(config)
    # Perception defines the segmenter the processor may require; models are built on first use only.
    processor.setup(models_for(processor, local_models([PerceptionProcessor(perception, DecodeConfig()), processor])))
    return processor
