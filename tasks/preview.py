"""A contact sheet of a build's samples: per sample a row of frames and, when present, a row of pose
frames and a row of the frames with their attribute masks overlaid (one colour per attribute)."""

from __future__ import annotations

import itertools
from pathlib import Path

import cv2
import numpy as np
import webdataset as wds

from data_specs.sample import ClipSample, decode_sample

MASK_COLOURS = {"hair": (255, 80, 0), "eyeglasses": (0, 200, 255), "beard": (120, 255, 0), "hat": (255, 0, 200)}


def _tiles(images: np.ndarray, max_frames: int, tile: int) -> np.ndarray:
    tiles = [cv2.resize(image, (tile, tile), interpolation=cv2.INTER_AREA) for image in images[:max_frames]]
    tiles += [np.zeros((tile, tile, 3), np.uint8)] * (max_frames - len(tiles))
    return np.concatenate(tiles, axis=1)


def _overlay(sample: ClipSample) -> np.ndarray:
    """The frames with each attribute's mask blended in its colour."""
    images = sample.frames.astype(np.float32)
    for attribute, masks in sorted(sample.masks.items()):
        colour = np.array(MASK_COLOURS.get(attribute, (255, 255, 255)), np.float32)
        images[masks] = 0.45 * images[masks] + 0.55 * colour
    return images.astype(np.uint8)


def _label(row: np.ndarray, text: str) -> np.ndarray:
    cv2.putText(row, text[:48], (4, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 255), 1, cv2.LINE_AA)
    return row


def contact_sheet(shards: list[Path], path: Path, max_samples: int = 8, max_frames: int = 8,
                  tile: int = 96) -> Path:
    """Write a PNG of the first samples (frames, pose frames, masks); returns its path."""
    rows = []
    raw_samples = wds.WebDataset([str(s) for s in shards], shardshuffle=False, empty_check=False)
    for raw in itertools.islice(raw_samples, max_samples):
        sample = decode_sample(raw)
        rows.append(_label(_tiles(sample.frames, max_frames, tile), sample.key))
        if sample.pose_frames is not None:
            rows.append(_label(_tiles(sample.pose_frames, max_frames, tile), "pose frames"))
        if sample.masks:
            rows.append(_label(_tiles(_overlay(sample), max_frames, tile), "masks: " + ", ".join(sorted(sample.masks))))
    if not rows:
        raise ValueError("the shards hold no samples")
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(np.concatenate(rows, axis=0), cv2.COLOR_RGB2BGR))
    return path
