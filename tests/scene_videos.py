"""A generated video with a hard cut and a zoom cut, and its ground truth (for the scene tests)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from data_specs.video import DecodeConfig
from tasks.media import iter_frames, probe_video, write_video
from tasks.synthetic import load_truth, write_portrait_video

SIZE = 96
FPS = 24.0
ZOOM = 1.4
# Source frames of each shot: the first person, a second person, then the second person zoomed in (a zoom
# cut: same colours, same person, larger). Decoded at 12 fps the cuts fall at frames 11 and 23: the first
# is in the last frame of a naive 4-frame clip (frames 8-11).
FIRST_CUT, ZOOM_CUT, END = 22, 46, 72
# Decoded at 12 fps: the scene of every frame.
SCENES_AT_12_FPS = [0] * 11 + [1] * 12 + [2] * 13


def _zoom_matrix(factor: float) -> np.ndarray:
    centre = (SIZE - 1) / 2
    return np.array([[factor, 0, (1 - factor) * centre], [0, factor, (1 - factor) * centre]], np.float64)


def write_cut_video(directory: Path, attributes: tuple[str, ...] = ("hair", "hat")) -> Path:
    """`cuts.mp4` (72 frames at 24 fps, 96 px) and `cuts.truth.npz` beside it."""
    directory.mkdir(parents=True, exist_ok=True)
    shots = [write_portrait_video(directory / f"shot_{seed}.mp4", seed=seed, num_frames=END, width=SIZE,
                                  height=SIZE, fps=FPS, attributes=attributes) for seed in (3, 4)]
    pictures = [np.stack([f.image for f in iter_frames(str(s), probe_video(str(s)), DecodeConfig(size=SIZE))])
                for s in shots]
    truths = [load_truth(s) for s in shots]
    matrix = _zoom_matrix(ZOOM)
    parts = {"frames": [pictures[0][:FIRST_CUT], pictures[1][FIRST_CUT:ZOOM_CUT]],
             "boxes": [truths[0]["boxes"][:FIRST_CUT], truths[1]["boxes"][FIRST_CUT:ZOOM_CUT]],
             "keypoints": [truths[0]["keypoints"][:FIRST_CUT], truths[1]["keypoints"][FIRST_CUT:ZOOM_CUT]]}
    zoomed = slice(ZOOM_CUT, END)
    parts["frames"].append(np.stack([cv2.warpAffine(f, matrix, (SIZE, SIZE), flags=cv2.INTER_LINEAR)
                                     for f in pictures[1][zoomed]]))
    corners = truths[1]["boxes"][zoomed].reshape(-1, 2, 2)
    parts["boxes"].append((corners @ matrix[:, :2].T + matrix[:, 2]).reshape(-1, 4))
    parts["keypoints"].append(truths[1]["keypoints"][zoomed] @ matrix[:, :2].T + matrix[:, 2])
    masks = {}
    for attribute in attributes:
        key = f"masks_{attribute}"
        warped = [cv2.warpAffine(m.astype(np.uint8), matrix, (SIZE, SIZE), flags=cv2.INTER_NEAREST)
                  for m in truths[1][key][zoomed]]
        masks[key] = np.concatenate([truths[0][key][:FIRST_CUT], truths[1][key][FIRST_CUT:ZOOM_CUT],
                                     np.stack(warped).astype(bool)])
    path = write_video(np.concatenate(parts["frames"]), directory / "cuts.mp4", FPS)
    np.savez_compressed(path.with_suffix(".truth.npz"), fps=np.float64(FPS), size=np.array([SIZE, SIZE]),
                        boxes=np.concatenate(parts["boxes"]).astype(np.float32),
                        keypoints=np.concatenate(parts["keypoints"]).astype(np.float32), **masks)
    for shot in shots:
        shot.unlink()
        shot.with_suffix(".truth.npz").unlink()
    return path
