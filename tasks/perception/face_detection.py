"""Face detection with facexlib's RetinaFace (ResNet-50 or MobileNet-0.25), batched over frames."""

from __future__ import annotations

import warnings

import numpy as np
import torch

from data_specs.perception import FaceDetectionConfig
from tasks.perception.runtime import ModelComponent, batches, check_images, facexlib_weights, resolve_device
from weight_files.pickles import load_torch_checkpoint, unwrap_state_dict

# Per detection: x1, y1, x2, y2, score, then (x, y) of left eye, right eye, nose, left and right mouth corner.
DETECTION_COLUMNS = 15


class RetinaFaceDetector(ModelComponent):
    """facexlib's `RetinaFace` network with weights from a local folder (official file names)."""

    backends = ("retinaface_resnet50", "retinaface_mobile0.25")
    config: FaceDetectionConfig

    @property
    def provenance(self) -> str:
        return f"facexlib {self.config.backend}"

    def setup(self) -> None:
        """Build the network and load its weights; once per worker."""
        from facexlib.detection.retinaface import RetinaFace

        cfg = self.config
        path = facexlib_weights(cfg.backend, cfg.weights_dir, cfg.allow_download)
        device = resolve_device(cfg.runtime)
        with warnings.catch_warnings():  # facexlib builds torchvision's resnet50 with the legacy `pretrained=False`
            warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
            model = RetinaFace(network_name=cfg.backend.removeprefix("retinaface_"), half=False, device=device)
        state = unwrap_state_dict(load_torch_checkpoint(path))
        state = {key.removeprefix("module."): value for key, value in state.items()}  # saved from DataParallel
        model.load_state_dict(state, strict=True)
        self.model = model.eval()

    def detect(self, frames: np.ndarray, refs: object = None) -> list[np.ndarray]:
        """Faces in each of (N, H, W, 3) uint8 RGB frames: one (k, 15) float32 array per frame, best first.

        `refs` is accepted for the common backend signature and ignored.
        """
        self._check_setup()
        check_images(frames)
        results: list[np.ndarray] = []
        for part in batches(len(frames), self.config.runtime.batch_size):
            # facexlib's batched path takes float BGR (N, H, W, 3) tensors and subtracts its BGR means itself.
            bgr = torch.from_numpy(np.ascontiguousarray(frames[part, :, :, ::-1])).float().to(self.model.device)
            with torch.inference_mode():
                boxes, landmarks = self.model.batched_detect_faces(
                    bgr, conf_threshold=self.config.score_threshold, nms_threshold=self.config.nms_threshold
                )
            for frame_boxes, frame_landmarks in zip(boxes, landmarks):
                if len(frame_boxes) == 0:
                    results.append(np.zeros((0, DETECTION_COLUMNS), np.float32))
                else:  # NMS keeps boxes in descending score order
                    results.append(np.concatenate([frame_boxes, frame_landmarks], axis=1).astype(np.float32))
        return results
