"""A contact sheet of a build's samples.

Clip samples: a row of frames and, when present, a row of pose frames and a row of the frames with
their attribute masks overlaid (one colour per attribute). Training pairs: the attribute reference
and its mask, the portrait reference and its mask, then a few targets, then their guidance frames."""

from __future__ import annotations

import itertools
from pathlib import Path

import cv2
import numpy as np
import webdataset as wds

from data_specs.files import write_atomic
from data_specs.sample import ClipSample, PairSample, decode_sample

MASK_COLOURS = {"hair": (255, 80, 0), "eyeglasses": (0, 200, 255), "beard": (120, 255, 0), "hat": (255, 0, 200)}


def _tiles(images: np.ndarray, max_frames: int, tile: int) -> np.ndarray:
    tiles = [cv2.resize(image, (tile, tile), interpolation=cv2.INTER_AREA) for image in images[:max_frames]]
    tiles += [np.zeros((tile, tile, 3), np.uint8)] * (max_frames - len(tiles))
    return np.concatenate(tiles, axis=1)


def _overlay(images: np.ndarray, masks: dict[str, np.ndarray]) -> np.ndarray:
    """The images with each attribute's mask blended in its colour."""
    images = images.astype(np.float32)
    for attribute, mask in sorted(masks.items()):
        colour = np.array(MASK_COLOURS.get(attribute, (255, 255, 255)), np.float32)
        images[mask] = 0.45 * images[mask] + 0.55 * colour
    return images.astype(np.uint8)


def _clip_rows(sample: ClipSample, max_frames: int, tile: int) -> list[np.ndarray]:
    rows = [_label(_tiles(sample.frames, max_frames, tile), sample.key)]
    if sample.pose_frames is not None:
        rows.append(_label(_tiles(sample.pose_frames, max_frames, tile), "pose frames"))
    if sample.masks:
        rows.append(_label(_tiles(_overlay(sample.frames, sample.masks), max_frames, tile),
                           "masks: " + ", ".join(sorted(sample.masks))))
    return rows


def _pair_rows(sample: PairSample, max_frames: int, tile: int) -> list[np.ndarray]:
    """References and masks, then targets; their guidance frames below."""
    meta = sample.meta
    white = np.array([255, 255, 255], np.uint8)
    shown = [sample.attribute_ref, sample.attribute_mask[..., None] * white,
             sample.portrait_ref, sample.portrait_mask[..., None] * white]
    targets = max(max_frames - len(shown), 1)
    top = np.concatenate([_tiles(np.stack(shown), len(shown), tile), _tiles(sample.targets, targets, tile)], axis=1)
    blank = np.zeros((len(shown), *sample.targets.shape[1:]), np.uint8)
    bottom = np.concatenate([_tiles(blank, len(shown), tile), _tiles(sample.pose_frames, targets, tile)], axis=1)
    gap = f" ({meta.reference_gap_s:.1f} s away)" if meta.reference_gap_s is not None else ""
    title = (f"{sample.key} | {meta.attribute} | stage {meta.training_stage} | refs: frames "
             f"{meta.attribute_ref.frame_index}, {meta.portrait_ref.frame_index}{gap} | {meta.expansion.mode}")
    return [_label(top, title), _label(bottom, "attr ref, M_attr, port ref, M_port_train | targets / guidance")]


def _label(row: np.ndarray, text: str) -> np.ndarray:
    cv2.putText(row, text[:96], (4, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 255), 1, cv2.LINE_AA)
    return row


def contact_sheet(shards: list[Path], path: Path, max_samples: int = 8, max_frames: int = 8,
                  tile: int = 96) -> Path:
    """Write a PNG of the first samples; returns its path."""
    rows = []
    raw_samples = wds.WebDataset([str(s) for s in shards], shardshuffle=False, empty_check=False)
    for raw in itertools.islice(raw_samples, max_samples):
        sample = decode_sample(raw)
        if isinstance(sample, PairSample):
            rows += _pair_rows(sample, max_frames, tile)
        else:
            rows += _clip_rows(sample, max_frames, tile)
    if not rows:
        raise ValueError("the shards hold no samples")
    ok, png = cv2.imencode(".png", cv2.cvtColor(np.concatenate(rows, axis=0), cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("could not encode the contact sheet")
    write_atomic(path, png.tobytes())
    return path
