"""Following the main face through a clip, deciding whether the clip is usable, and cutting the crops.

Pure NumPy/OpenCV on the CPU. The steps, each a function:

0. `detector_view(frames, max_side)` / `to_frame_detections(detections, scale)`: the smaller
   copy of the frames the detector sees, and its detections mapped back to frame pixels.
1. `track_main_face(detections, frame_size, config)`: pick the largest face and follow
   it frame to frame by box overlap, bridging short gaps; raise `DataError` naming the rule
   when the clip is unusable (no face, several similar faces, face too small, face leaving
   the frame, a face that jumps). Shot cuts are found before clips are cut: the unit detects
   scenes once per video (`tasks.scenes`) and no clip straddles one.
2. `crop_boxes(track, config)`: smooth the face box over time (zero-phase Gaussian, so the
   crop neither jitters nor lags) and turn it into a square crop box with a margin.
3. `crop_clip(frames, boxes, size)`: cut and resize the crops (outside the frame is black).
4. `to_crop_coords` / `to_frame_coords`: move points between frame and crop pixels.
5. `source_px_per_output_px(boxes, size, source_per_frame_px)`: how much source detail a crop holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from data_specs.perception import FaceCropConfig
from tasks.errors import DataError


@dataclass(frozen=True)
class FaceTrack:
    """The main face in every frame of a clip, in frame pixels.

    Attributes:
        boxes: (N, 4) float32 x1, y1, x2, y2; frames without a matching detection are interpolated.
        landmarks: (N, 5, 2) float32, the detector's 5 points (interpolated like the boxes).
        scores: (N,) float32 detection score, 0 where interpolated.
        frame_size: (width, height) of the frames.
    """

    boxes: np.ndarray
    landmarks: np.ndarray
    scores: np.ndarray
    frame_size: tuple[int, int]

    @property
    def detected(self) -> np.ndarray:
        """(N,) bool: the frame had its own detection."""
        return self.scores > 0


def detector_view(frames: np.ndarray, max_side: int) -> tuple[np.ndarray, tuple[float, float]]:
    """(N, H, W, 3) frames shrunk so that the longer side is at most `max_side`, and the (x, y) factors from
    the copy's pixels back to the frames'; frames already small enough come back unchanged (factors 1).

    As facexlib's RetinaFace resizes (one factor for both sides, coordinates divided by it), but with
    area averaging, which keeps a shrunk frame free of aliasing and is one of the interpolations
    RetinaFace's training augmentation draws from; the factors are measured per side, so the
    rounding of the copy's size moves no point.
    """
    height, width = frames.shape[1:3]
    factor = max_side / max(width, height)
    if factor >= 1:
        return frames, (1.0, 1.0)
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    small = np.stack([cv2.resize(frame, size, interpolation=cv2.INTER_AREA) for frame in frames])
    return small, (width / size[0], height / size[1])


def to_frame_detections(detections: Sequence[np.ndarray], scale: tuple[float, float]) -> list[np.ndarray]:
    """(k, 15) detections of `detector_view`'s copy -> frame pixels (box corners and landmarks scaled,
    scores kept). Pixel edges scale with the copy (a box is edges, as the detector's priors are)."""
    factors = np.ones(15, np.float32)
    factors[[0, 2, 5, 7, 9, 11, 13]] = scale[0]
    factors[[1, 3, 6, 8, 10, 12, 14]] = scale[1]
    return [np.asarray(d, np.float32).reshape(-1, 15) * factors for d in detections]


def track_main_face(
    detections: Sequence[np.ndarray],
    frame_size: tuple[int, int],
    config: FaceCropConfig,
) -> FaceTrack:
    """Follow the main face through a clip; `DataError` says why a clip cannot be used.

    `detections` holds one (k, 15) array per frame as the detectors return them (box,
    score, 5 landmarks). The main face is the largest detection of the clip; it is
    followed forwards and backwards by IoU. A face that jumps is rejected as a cut the
    scene detection missed.
    """
    width, height = frame_size
    count = len(detections)
    dets = [np.asarray(d, np.float32).reshape(-1, 15) for d in detections]
    if count == 0 or not any(len(d) for d in dets):
        raise DataError(f"no face: none detected in any of the {count} frames")

    # 1. Seed with the largest face of the clip, then follow it both ways by overlap.
    areas = [_area(d[:, :4]) for d in dets]
    seed = max(range(count), key=lambda i: areas[i].max(initial=0))
    chosen = np.full(count, -1)
    chosen[seed] = int(np.argmax(areas[seed]))
    for order in (range(seed + 1, count), range(seed - 1, -1, -1)):
        last = dets[seed][chosen[seed], :4]
        for i in order:
            if len(dets[i]):
                overlap = _iou(last, dets[i][:, :4])
                best = int(np.argmax(overlap))
                if overlap[best] >= config.min_iou:
                    chosen[i] = best
                    last = dets[i][best, :4]

    # 2. Rejection rules, most basic first.
    found = chosen >= 0
    gap_start, gap_length = _longest_run(~found)
    if gap_length > config.max_gap:
        strays = [i for i in range(gap_start, gap_start + gap_length) if len(dets[i])]
        if strays:
            raise DataError(f"cut inside the clip: the face jumps to another place at frame {strays[0]}")
        raise DataError(
            f"no face in frames {gap_start}-{gap_start + gap_length - 1} ({gap_length} frames; at most "
            f"{config.max_gap} are bridged)"
        )
    main = np.zeros((count, 15), np.float32)
    main[found] = [dets[i][chosen[i]] for i in np.flatnonzero(found)]
    crowded = [
        i for i in np.flatnonzero(found)
        if any(j != chosen[i] and areas[i][j] >= config.similar_face_ratio * areas[i][chosen[i]]
               for j in range(len(dets[i])))
    ]
    if len(crowded) > config.max_crowded_fraction * count:
        raise DataError(
            f"several faces of similar size: a second face at least {config.similar_face_ratio:.0%} of the main "
            f"face's area in {len(crowded)} of {count} frames (first: frame {crowded[0]})"
        )
    sides = np.minimum(main[found, 2] - main[found, 0], main[found, 3] - main[found, 1])
    min_side = config.min_face_fraction * min(width, height)
    if np.median(sides) < min_side:
        raise DataError(f"face too small: median side {np.median(sides):.1f} px, minimum {min_side:.1f} px "
                        f"({config.min_face_fraction:.0%} of the frame's shorter side)")
    outside = 1 - _area(_clip_boxes(main[found, :4], width, height)) / np.maximum(_area(main[found, :4]), 1e-6)
    if outside.max() > config.max_outside_fraction:
        frame = int(np.flatnonzero(found)[np.argmax(outside)])
        raise DataError(f"face leaves the frame: {outside.max():.0%} of the face box is outside at frame {frame}")

    # 3. Bridge the short gaps by linear interpolation (edges take the nearest detection).
    filled = np.stack([np.interp(np.arange(count), np.flatnonzero(found), main[found, c]) for c in range(15)], 1)
    return FaceTrack(
        boxes=filled[:, :4].astype(np.float32),
        landmarks=filled[:, 5:15].reshape(count, 5, 2).astype(np.float32),
        scores=np.where(found, main[:, 4], 0).astype(np.float32),
        frame_size=(int(width), int(height)),
    )


def smooth_boxes(boxes: np.ndarray, sigma: float) -> np.ndarray:
    """Zero-phase Gaussian smoothing of (N, 4) boxes over time; `sigma` in frames (0: unchanged).

    The clip is extended past its ends by odd reflection (2 * end - mirrored), so steady
    motion stays steady up to the first and last frame instead of being pulled back.
    """
    boxes = np.asarray(boxes, np.float64)
    if sigma <= 0 or len(boxes) < 2:
        return boxes.astype(np.float32)
    radius = int(np.ceil(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    padded = np.pad(boxes, ((radius, radius), (0, 0)), mode="reflect", reflect_type="odd")
    return np.stack([np.convolve(padded[:, c], taps, mode="valid") for c in range(4)], axis=1).astype(np.float32)


def crop_boxes(track: FaceTrack, config: FaceCropConfig) -> np.ndarray:
    """(N, 4) square crop boxes in frame pixels: the smoothed face box, widened by the margin and raised."""
    boxes = smooth_boxes(track.boxes, config.smoothing_sigma)
    width = boxes[:, 2] - boxes[:, 0]
    height = boxes[:, 3] - boxes[:, 1]
    side = np.maximum(width, height) * (1 + 2 * config.margin)
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2 - config.shift_y * height
    return np.stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], axis=1).astype(np.float32)


def crop_clip(frames: np.ndarray, boxes: np.ndarray, size: int, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """Cut each frame's square `boxes[i]` (frame pixels, may reach outside) and resize it to size x size.

    Sub-pixel exact (an affine warp, not integer slicing), so smooth boxes give smooth
    crops; parts outside the frame are black. When the crop shrinks the picture by 2x or
    more, the frame is first reduced with area averaging to avoid aliasing. Works for
    (N, H, W) bool masks as well (pass `cv2.INTER_NEAREST`).
    """
    if frames.dtype == bool:  # OpenCV warps no bool images
        return crop_clip(frames.view(np.uint8), boxes, size, interpolation).astype(bool)
    out = np.empty((len(frames), size, size, *frames.shape[3:]), frames.dtype)
    for i, (frame, box) in enumerate(zip(frames, boxes)):
        matrix = frame_to_crop_matrix(box, size)
        factor = int((box[2] - box[0]) / size)
        if factor >= 2 and interpolation != cv2.INTER_NEAREST:
            height, width = frame.shape[:2]
            reduced = (max(1, width // factor), max(1, height // factor))
            frame = cv2.resize(frame, reduced, interpolation=cv2.INTER_AREA)
            # Reduced pixel centre r sits at frame pixel (r + 0.5) * step - 0.5 on each axis.
            step = np.array([width / reduced[0], height / reduced[1]])
            matrix = matrix @ np.array([[step[0], 0, 0.5 * step[0] - 0.5], [0, step[1], 0.5 * step[1] - 0.5],
                                        [0, 0, 1]])
        out[i] = cv2.warpAffine(frame, matrix, (size, size), flags=interpolation,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return out


def to_crop_coords(points: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """Map (N, K, 2+) frame-pixel points into the size x size crops cut from `boxes`; extra columns are kept."""
    return _map_points(points, boxes, size, inverse=False)


def to_frame_coords(points: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """Map (N, K, 2+) crop-pixel points back to frame pixels; extra columns (confidence) are kept."""
    return _map_points(points, boxes, size, inverse=True)


def frame_to_crop_matrix(box: np.ndarray, size: int) -> np.ndarray:
    """2x3 affine (for `cv2.warpAffine`) taking frame pixels into the crop of `box`, as `to_crop_coords` does."""
    scale = size / float(box[2] - box[0])
    return np.array([[scale, 0, (0.5 - box[0]) * scale - 0.5], [0, scale, (0.5 - box[1]) * scale - 0.5]], np.float64)


def _map_points(points: np.ndarray, boxes: np.ndarray, size: int, inverse: bool) -> np.ndarray:
    points = np.array(points, np.float32)
    for i, box in enumerate(boxes):
        matrix = frame_to_crop_matrix(box, size)
        if inverse:
            matrix = cv2.invertAffineTransform(matrix)
        points[i, :, :2] = points[i, :, :2] @ matrix[:, :2].T + matrix[:, 2]
    return points


def source_px_per_output_px(boxes: np.ndarray, size: int, source_per_frame_px: float = 1.0) -> float:
    """Median crop side in source pixels / `size`: below 1 the crops are enlarged from the source.

    `source_per_frame_px` is how many source pixels one frame pixel spans (above 1 when the
    decoder scaled a large source down to `decode.max_side`).
    """
    return float(np.median(boxes[:, 2] - boxes[:, 0]) * source_per_frame_px / size)


def _area(boxes: np.ndarray) -> np.ndarray:
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    top_left = np.maximum(box[:2], boxes[:, :2])
    bottom_right = np.minimum(box[2:4], boxes[:, 2:4])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=1)
    return inter / np.maximum(_area(box[None])[0] + _area(boxes) - inter, 1e-6)


def _clip_boxes(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.clip(boxes, 0, [width, height, width, height])


def _longest_run(flags: np.ndarray) -> tuple[int, int]:
    """(start, length) of the longest run of True in `flags`; (0, 0) when there is none."""
    best = (0, 0)
    start = None
    for i, flag in enumerate([*flags, False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            best = max(best, (start, i - start), key=lambda run: run[1])
            start = None
    return best
