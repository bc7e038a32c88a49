"""Face keypoints with Sapiens pose, top-down on the face crops, batched."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from data_specs.perception import (
    GOLIATH_FACE,
    GOLIATH_FACE_START,
    GOLIATH_NUM_KEYPOINTS,
    KeypointConfig,
    KeypointLayout,
)
from tasks.perception.heatmaps import decode_heatmaps, heatmap_to_image, topdown_boxes, udp_warp_matrix
from tasks.perception.runtime import ModelComponent, batches, check_images, resolve_device

HEATMAP_STRIDE = 4  # the pose head's heatmaps are 1/4 of the input size


class SapiensKeypointEstimator(ModelComponent):
    """Sapiens pose (any released format); returns the Goliath face points (`GOLIATH_FACE`) in crop pixels."""

    backends = ("sapiens",)
    config: KeypointConfig
    layout: KeypointLayout = GOLIATH_FACE

    @property
    def provenance(self) -> str:
        return f"Sapiens pose ({Path(self.config.checkpoint).name})"

    def setup(self) -> None:
        """Load the checkpoint; once per worker."""
        from tasks.perception.sapiens import load_sapiens

        cfg = self.config
        self.model = load_sapiens(cfg.checkpoint, "pose", cfg.arch, cfg.image_size, GOLIATH_NUM_KEYPOINTS,
                                  resolve_device(cfg.runtime), trust_code=cfg.trust_code)

    def __call__(self, crops: np.ndarray, boxes: np.ndarray | None = None, refs: object = None) -> np.ndarray:
        """(N, K, 3) float32 x, y, confidence in crop pixels for (N, H, W, 3) uint8 RGB crops.

        `boxes` (N, 4) are top-down boxes in crop pixels; None (what perception passes): the
        whole crop. The network sees each box x `box_scale`, widened to the input's 3:4.
        `refs` is accepted for the common backend signature.

        Why the whole crop: Sapiens' pose demo (`lite/demo/vis_pose.py`) gives an image without
        a person box the box [0, 0, W, H] and recommends face crops for the 308 keypoints; its
        `top_down_affine_transform` then pads every box by 1.25 and fixes its aspect, like
        mmpose's `GetBBoxCenterScale` + `TopdownAffine` of the training configs. So a face crop
        is seen whole with a margin; a view cut to the detector's face box (forehead to chin)
        x 1.25 would be a far tighter framing than the network was trained and demonstrated on.
        """
        self._check_setup()
        check_images(crops, "crops")
        height, width = self.config.image_size
        if boxes is None:
            boxes = np.tile(np.array([0, 0, crops.shape[2], crops.shape[1]], np.float32), (len(crops), 1))
        centers, sizes = topdown_boxes(boxes, self.config.box_scale, aspect=width / height)
        keypoints = np.empty((len(crops), self.layout.num_points, 3), np.float32)
        for part in batches(len(crops), self.config.runtime.batch_size):
            # 1. Warp each view onto the network input, UDP style.
            inputs = np.stack([
                cv2.warpAffine(crop, udp_warp_matrix(c, s, (width, height)), (width, height), flags=cv2.INTER_LINEAR)
                for crop, c, s in zip(crops[part], centers[part], sizes[part])
            ])
            # 2. Heatmaps of the face points.
            heatmaps = self._face_heatmaps(inputs)
            # 3. Peaks, refined, back into crop pixels.
            coords, scores = decode_heatmaps(heatmaps, self.config.blur_kernel)
            heatmap_size = (heatmaps.shape[3], heatmaps.shape[2])
            keypoints[part, :, :2] = heatmap_to_image(coords, centers[part], sizes[part], heatmap_size)
            keypoints[part, :, 2] = scores
        return keypoints

    def _face_heatmaps(self, inputs: np.ndarray) -> np.ndarray:
        """(N, 238, H/4, W/4) float32 heatmaps of the face points; with flip test, averaged with the mirror's."""
        from tasks.perception.sapiens import normalise

        images = normalise(inputs)
        face = slice(GOLIATH_FACE_START, GOLIATH_NUM_KEYPOINTS)
        heatmaps = self._network_heatmaps(images)[:, face]
        if self.config.flip_test:
            mirrored = self._network_heatmaps(images.flip(-1))[:, face].flip(-1)
            heatmaps = (heatmaps + mirrored[:, list(self.layout.flip)]) / 2
        return heatmaps.numpy()

    def _network_heatmaps(self, images: torch.Tensor) -> torch.Tensor:
        heatmaps = self.model(images).cpu()
        expected = (GOLIATH_NUM_KEYPOINTS, images.shape[2] // HEATMAP_STRIDE, images.shape[3] // HEATMAP_STRIDE)
        if tuple(heatmaps.shape[1:]) != expected:
            raise ValueError(f"the pose network returned heatmaps of shape {tuple(heatmaps.shape[1:])}, expected "
                             f"{expected} (Goliath 308 keypoints at 1/4 of the input size)")
        return heatmaps
