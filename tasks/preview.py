"""A contact sheet of a build's samples: one row per sample, one column per frame."""

from __future__ import annotations

import itertools
from pathlib import Path

import cv2
import numpy as np
import webdataset as wds

from data_specs.sample import decode_sample


def contact_sheet(shards: list[Path], path: Path, max_samples: int = 8, max_frames: int = 8,
                  tile: int = 96) -> Path:
    """Write a PNG with the first frames of the first samples; returns its path."""
    rows = []
    raw_samples = wds.WebDataset([str(s) for s in shards], shardshuffle=False, empty_check=False)
    for raw in itertools.islice(raw_samples, max_samples):
        sample = decode_sample(raw)
        tiles = [cv2.resize(frame, (tile, tile), interpolation=cv2.INTER_AREA) for frame in sample.frames[:max_frames]]
        tiles += [np.zeros((tile, tile, 3), np.uint8)] * (max_frames - len(tiles))
        row = np.concatenate(tiles, axis=1)
        cv2.putText(row, sample.key[:40], (4, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 255), 1, cv2.LINE_AA)
        rows.append(row)
    if not rows:
        raise ValueError("the shards hold no samples")
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(np.concatenate(rows, axis=0), cv2.COLOR_RGB2BGR))
    return path
