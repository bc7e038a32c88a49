"""Helpers shared by the perception tests: generated videos decoded as the pipeline decodes them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_specs.video import DecodeConfig
from tasks.media import iter_frames, probe_video
from tasks.synthetic import load_truth

SIZE = 128  # display size of the generated videos, and the decode size (so frame = display pixels)


@dataclass(frozen=True)
class Clip:
    """A decoded generated video and its ground truth."""

    path: Path
    frames: np.ndarray  # (F, SIZE, SIZE, 3) uint8
    times: list[float]
    truth: dict

    def detections(self) -> list[np.ndarray]:
        """The ground truth as a detector returns it: one (1, 15) box/score/landmarks row per frame."""
        boxes = self.truth["boxes"]
        rows = np.concatenate([boxes, np.ones((len(boxes), 1)), self.truth["keypoints"].reshape(len(boxes), 10)], 1)
        return [row[None].astype(np.float32) for row in rows]


def decode(path: Path, size: int = SIZE, crop: str = "center") -> Clip:
    """Decode a generated video as the pipeline does (size x size, centre-cropped or padded)."""
    frames = list(iter_frames(str(path), probe_video(str(path)), DecodeConfig(size=size, crop=crop)))
    return Clip(path, np.stack([f.image for f in frames]), [f.time_s for f in frames], load_truth(path))
