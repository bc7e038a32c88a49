"""The WebDataset sample layout: member names, encodings and dtypes.

One clip is one sample. WebDataset ends a sample's key at the first dot of a member
name, so keys never contain dots and every field name does:

| member                         | encoding           | decoded as                                  |
|--------------------------------|--------------------|---------------------------------------------|
| `KEY.meta.json`                | UTF-8 JSON         | `ClipMeta` (lineage, frame indices, fps)    |
| `KEY.frame.NNNN.jpg`           | JPEG, RGB          | `frames[NNNN]`, uint8 (H, W, 3)             |
| `KEY.keypoints.npy` (optional) | NumPy .npy float32 | `keypoints`, (F, K, 3): x, y, score         |
| `KEY.mask.ATTR.NNNN.png` (opt.)| PNG, 1-bit         | `masks[ATTR][NNNN]`, bool (H, W)            |
| `KEY.pose.NNNN.png` (optional) | PNG, RGB           | `pose_frames[NNNN]`, uint8 (H, W, 3)        |

With perception on (`BuildConfig.perception`), frames are the face crops, `keypoints` are in
crop pixels in the layout `meta.perception.keypoint_layout` names, `pose.NNNN.png` are the
keypoints rendered for the pose guider (`data_specs.perception.PoseRenderSpec`), and
`meta.perception` holds the crop boxes, per-frame attribute presence and provenance.

Frame numbers `NNNN` are positions within the clip (0-based, 4 digits); the source
frame indices are in `meta.json`. `encode_sample` and `decode_sample` are the only
code that knows this layout: the shard writer, `durian inspect`, the tests and the
training loader all go through them.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from data_specs.perception import PerceptionMeta

META = "meta.json"
FRAME = "frame"
KEYPOINTS = "keypoints.npy"
MASK = "mask"
POSE = "pose"

_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_FRAME_NAME = re.compile(rf"^{FRAME}\.(\d{{4}})\.jpg$")
_MASK_NAME = re.compile(rf"^{MASK}\.([a-z_]+)\.(\d{{4}})\.png$")
_POSE_NAME = re.compile(rf"^{POSE}\.(\d{{4}})\.png$")


class ClipMeta(BaseModel):
    """What a sample says about itself: where its frames come from and what made it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    video_id: str
    clip_index: int = Field(ge=0)
    frame_indices: list[int] = Field(description="Output-frame index in the decoded video of each clip frame.")
    time_s: list[float] = Field(description="Source presentation time of each clip frame, in seconds.")
    fps: float = Field(gt=0)
    source_path: str
    content_sha256: str
    config_hash: str
    code_version: str
    perception: PerceptionMeta | None = None


@dataclass
class ClipSample:
    """A decoded sample. `frames` is (F, H, W, 3) uint8 RGB; later stages fill the optional fields."""

    key: str
    meta: ClipMeta
    frames: np.ndarray
    keypoints: np.ndarray | None = None  # (F, K, 3) float32
    masks: dict[str, np.ndarray] = field(default_factory=dict)  # attribute -> (F, H, W) bool
    pose_frames: np.ndarray | None = None  # (F, H, W, 3) uint8, rendered keypoints

    def field_names(self) -> list[str]:
        """Member field names this sample encodes to, in write order."""
        names = [META] + [frame_field(i) for i in range(len(self.frames))]
        if self.keypoints is not None:
            names.append(KEYPOINTS)
        for attribute, masks in sorted(self.masks.items()):
            names += [mask_field(attribute, i) for i in range(len(masks))]
        if self.pose_frames is not None:
            names += [pose_field(i) for i in range(len(self.pose_frames))]
        return names


def safe_key(text: str) -> str:
    """A WebDataset-safe key fragment: no dots, slashes or spaces."""
    return _KEY_UNSAFE.sub("_", text).strip("_") or "x"


def clip_key(video_id: str, clip_index: int) -> str:
    return f"{video_id}_c{clip_index:05d}"


def frame_field(position: int) -> str:
    return f"{FRAME}.{position:04d}.jpg"


def mask_field(attribute: str, position: int) -> str:
    return f"{MASK}.{attribute}.{position:04d}.png"


def pose_field(position: int) -> str:
    return f"{POSE}.{position:04d}.png"


def encode_sample(sample: ClipSample, jpeg_quality: int) -> dict[str, object]:
    """Sample -> `{"__key__": key, field: bytes}` for `webdataset.TarWriter` (which keeps bytes as they are)."""
    if "." in sample.key:
        raise ValueError(f"sample key {sample.key!r} contains a dot; WebDataset would split it")
    frames = np.asarray(sample.frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (F, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    if len(frames) != len(sample.meta.frame_indices):
        raise ValueError("meta.frame_indices must list one index per frame")
    encoded: dict[str, object] = {"__key__": sample.key, META: sample.meta.model_dump_json().encode()}
    jpeg_params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)]
    for position, frame in enumerate(frames):
        encoded[frame_field(position)] = _encode_image(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), jpeg_params)
    if sample.keypoints is not None:
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(sample.keypoints, dtype=np.float32), allow_pickle=False)
        encoded[KEYPOINTS] = buffer.getvalue()
    for attribute, masks in sorted(sample.masks.items()):
        masks = np.asarray(masks)
        if masks.shape != frames.shape[:3] or masks.dtype != bool:
            raise ValueError(f"mask {attribute!r} must be (F, H, W) bool like the frames {frames.shape[:3]}, "
                             f"got {masks.shape} {masks.dtype}")
        for position, mask in enumerate(masks):
            encoded[mask_field(attribute, position)] = _encode_image(
                ".png", mask.astype(np.uint8) * 255, [cv2.IMWRITE_PNG_BILEVEL, 1]
            )
    if sample.pose_frames is not None:
        pose_frames = np.asarray(sample.pose_frames)
        if pose_frames.shape != frames.shape or pose_frames.dtype != np.uint8:
            raise ValueError(f"pose frames must be uint8 {frames.shape} like the frames, got "
                             f"{pose_frames.shape} {pose_frames.dtype}")
        for position, image in enumerate(pose_frames):
            encoded[pose_field(position)] = _encode_image(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [])
    return encoded


def decode_sample(raw: dict[str, object]) -> ClipSample:
    """`{"__key__": ..., field: bytes}` as read from a tar (e.g. `webdataset.WebDataset(urls)`) -> sample."""
    meta = ClipMeta.model_validate(json.loads(_as_bytes(raw[META])))
    frames: dict[int, np.ndarray] = {}
    masks: dict[str, dict[int, np.ndarray]] = {}
    keypoints = None
    pose: dict[int, np.ndarray] = {}
    for name, value in raw.items():
        if name.startswith("__"):
            continue
        if match := _FRAME_NAME.match(name):
            frames[int(match[1])] = cv2.cvtColor(_decode_image(_as_bytes(value), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        elif match := _MASK_NAME.match(name):
            masks.setdefault(match[1], {})[int(match[2])] = _decode_image(_as_bytes(value), cv2.IMREAD_GRAYSCALE) > 127
        elif match := _POSE_NAME.match(name):
            pose[int(match[1])] = cv2.cvtColor(_decode_image(_as_bytes(value), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        elif name == KEYPOINTS:
            keypoints = np.load(io.BytesIO(_as_bytes(value)), allow_pickle=False)
    if sorted(frames) != list(range(len(meta.frame_indices))):
        raise ValueError(f"sample {raw.get('__key__')} has frames {sorted(frames)}, meta lists {len(meta.frame_indices)}")
    return ClipSample(
        key=str(raw["__key__"]),
        meta=meta,
        frames=np.stack([frames[i] for i in sorted(frames)]),
        keypoints=keypoints,
        masks={attr: np.stack([by_pos[i] for i in sorted(by_pos)]) for attr, by_pos in masks.items()},
        pose_frames=np.stack([pose[i] for i in sorted(pose)]) if pose else None,
    )


def _encode_image(extension: str, image: np.ndarray, params: list[int]) -> bytes:
    ok, buffer = cv2.imencode(extension, image, params)
    if not ok:
        raise ValueError(f"could not encode a {image.shape} image as {extension}")
    return buffer.tobytes()


def _decode_image(data: bytes, flags: int) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if image is None:
        raise ValueError("member is not a decodable image")
    return image


def _as_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    raise TypeError(f"expected raw bytes from the tar, got {type(value).__name__}; read shards without a decoder")
