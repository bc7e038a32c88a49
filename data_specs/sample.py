"""The WebDataset sample layout: member names, encodings and dtypes.

One clip is one sample. WebDataset ends a sample's key at the first dot of a member
name, so keys never contain dots and every field name does:

| member                         | encoding           | decoded as                                  |
|--------------------------------|--------------------|---------------------------------------------|
| `KEY.meta.json`                | UTF-8 JSON         | `ClipMeta` (lineage, frame indices, fps)    |
| `KEY.frame.NNNN.jpg`           | JPEG, RGB          | `frames[NNNN]`, uint8 (H, W, 3)             |
| `KEY.keypoints.npy` (optional) | NumPy .npy float32 | `keypoints`, (F, K, 3): x, y, score         |
| `KEY.landmarks.npy` (optional) | NumPy .npy float32 | `landmarks`, (F, 5, 2): the detector's x, y |
| `KEY.mask.ATTR.NNNN.png` (opt.)| PNG, 1-bit         | `masks[ATTR][NNNN]`, bool (H, W)            |
| `KEY.pose.NNNN.png` (optional) | PNG, RGB           | `pose_frames[NNNN]`, uint8 (H, W, 3)        |

With perception on (`BuildConfig.perception`), frames are the face crops, cut from frames at
the source's own resolution (`meta.source_size`); `keypoints` are in crop pixels in the layout
`meta.perception.keypoint_layout` names; `landmarks` are the face detector's five points per
frame (image-left eye, image-right eye, nose tip, image-left and image-right mouth corner: the
points ArcFace aligns with) in crop pixels; `pose.NNNN.png` are the keypoints rendered for the
pose guider (`data_specs.perception.PoseRenderSpec`), and `meta.perception` holds the crop
boxes, the crop's scale from source pixels, per-frame attribute presence and provenance.

Frame numbers `NNNN` are positions within the clip (0-based, 4 digits); the source
frame indices are in `meta.json`.

With training samples on (`BuildConfig.training_samples`), every sample is instead one
self-reconstruction pair (`PairSample`, `meta.kind == "pair"`, `PairMeta`):

| member                           | encoding            | decoded as                                      |
|----------------------------------|---------------------|-------------------------------------------------|
| `KEY.meta.json`                  | UTF-8 JSON          | `PairMeta` (pair, masks, augmentation, lineage) |
| `KEY.target.NNNN.jpg`            | JPEG, RGB           | `targets[NNNN]`, uint8 (H, W, 3)                |
| `KEY.pose.NNNN.png`              | PNG, RGB            | `pose_frames[NNNN]`: the targets' guidance      |
| `KEY.keypoints.npy`              | NumPy float32       | `keypoints`, (F, K, 3) of the targets           |
| `KEY.landmarks.npy` (optional)   | NumPy float32       | `landmarks`, (F, 5, 2): the targets' detector   |
|                                  |                     | points (ArcFace alignment of generated frames)  |
| `KEY.attr_ref.jpg`               | JPEG, RGB           | `attribute_ref` = I_attr x M_attr               |
| `KEY.attr_mask.png`              | PNG, 1-bit          | `attribute_mask` M_attr, bool (H, W)            |
| `KEY.port_ref.jpg`               | JPEG, RGB           | `portrait_ref` = I_port x (1 - M_port_train)    |
| `KEY.port_mask.png`              | PNG, 1-bit          | `portrait_mask` M_port_train, bool (H, W)       |
| `KEY.port_image.jpg`             | JPEG, RGB           | `portrait_image`: I_port unmasked, for the      |
|                                  |                     | identity encoder only (ArcFace's face crop)     |
| `KEY.port_keypoints.npy`         | NumPy float32       | `portrait_keypoints` (5, 2): ArcFace points     |
| `KEY.attr_keypoints.npy`         | NumPy float32       | `attribute_keypoints` (5, 2): the attribute     |
|                                  |                     | reference's ArcFace points (mask alignment)     |
| `KEY.generated.jpg` (optional)   | JPEG, RGB           | `generated`: the mask-expansion image (audit)   |
| `KEY.latent.NAME.npy` (optional) | NumPy float16       | `latents[NAME]`, NAME: target (F, C, h, w),     |
|                                  |                     | attr_ref, port_ref (C, h, w), scaled VAE means  |

Decoding re-applies the stored masks to the references, so the complementarity is exact
after JPEG. Stage-1 samples have one target, stage-2 samples `pairs.frames`.

`encode_sample` and `decode_sample` are the only code that knows these layouts: the
shard writer, `durian inspect`, the tests and the training loader all go through them.
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
from data_specs.training_samples import PairMeta

META = "meta.json"
FRAME = "frame"
KEYPOINTS = "keypoints.npy"
LANDMARKS = "landmarks.npy"
MASK = "mask"
POSE = "pose"
TARGET = "target"
ATTRIBUTE_REF, ATTRIBUTE_MASK = "attr_ref.jpg", "attr_mask.png"
PORTRAIT_REF, PORTRAIT_MASK = "port_ref.jpg", "port_mask.png"
PORTRAIT_IMAGE, PORTRAIT_KEYPOINTS = "port_image.jpg", "port_keypoints.npy"
ATTRIBUTE_KEYPOINTS = "attr_keypoints.npy"
GENERATED = "generated.jpg"
LATENT_NAMES = ("target", "attr_ref", "port_ref")

_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_FRAME_NAME = re.compile(rf"^{FRAME}\.(\d{{4}})\.jpg$")
_MASK_NAME = re.compile(rf"^{MASK}\.([a-z_]+)\.(\d{{4}})\.png$")
_POSE_NAME = re.compile(rf"^{POSE}\.(\d{{4}})\.png$")
_TARGET_NAME = re.compile(rf"^{TARGET}\.(\d{{4}})\.jpg$")


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
    scene_index: int | None = Field(None, ge=0, description="The clip's scene within its video (scenes are detected "
                                    "before clips are cut; None: built before scenes were detected).")
    source_size: tuple[int, int] | None = Field(
        None, description="(width, height) of the upright source picture when frames keep its aspect ratio (perception "
        "on; frames may be scaled down by `decode.max_side`); None: frames are `decode.size` squares.")
    perception: PerceptionMeta | None = None


@dataclass
class ClipSample:
    """A decoded sample. `frames` is (F, H, W, 3) uint8 RGB; later clip processors fill the optional fields."""

    key: str
    meta: ClipMeta
    frames: np.ndarray
    keypoints: np.ndarray | None = None  # (F, K, 3) float32
    landmarks: np.ndarray | None = None  # (F, 5, 2) float32, the face detector's points
    masks: dict[str, np.ndarray] = field(default_factory=dict)  # attribute -> (F, H, W) bool
    pose_frames: np.ndarray | None = None  # (F, H, W, 3) uint8, rendered keypoints

    def field_names(self) -> list[str]:
        """Member field names this sample encodes to, in write order."""
        names = [META] + [frame_field(i) for i in range(len(self.frames))]
        if self.keypoints is not None:
            names.append(KEYPOINTS)
        if self.landmarks is not None:
            names.append(LANDMARKS)
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


@dataclass
class PairSample:
    """A decoded training sample: F target frames with their guidance, and the two masked references."""

    key: str
    meta: PairMeta
    targets: np.ndarray  # (F, H, W, 3) uint8
    pose_frames: np.ndarray  # (F, H, W, 3) uint8
    attribute_ref: np.ndarray  # (H, W, 3) uint8, zero outside attribute_mask
    attribute_mask: np.ndarray  # (H, W) bool: M_attr
    portrait_ref: np.ndarray  # (H, W, 3) uint8, zero inside portrait_mask
    portrait_mask: np.ndarray  # (H, W) bool: M_port_train
    portrait_image: np.ndarray  # (H, W, 3) uint8: the portrait reference unmasked, for the identity encoder only
    portrait_keypoints: np.ndarray  # (5, 2) float32: its ArcFace alignment points
    attribute_keypoints: np.ndarray  # (5, 2) float32: the attribute reference's (aligns its mask at inference)
    keypoints: np.ndarray | None = None  # (F, K, 3) float32
    landmarks: np.ndarray | None = None  # (F, 5, 2) float32: the targets' detector points
    generated: np.ndarray | None = None  # (H, W, 3) uint8
    latents: dict[str, np.ndarray] = field(default_factory=dict)  # LATENT_NAMES -> float16

    def field_names(self) -> list[str]:
        """Member field names this sample encodes to, in write order."""
        names = [META] + [target_field(i) for i in range(len(self.targets))]
        names += [pose_field(i) for i in range(len(self.pose_frames))]
        names += [KEYPOINTS] if self.keypoints is not None else []
        names += [LANDMARKS] if self.landmarks is not None else []
        names += [ATTRIBUTE_REF, ATTRIBUTE_MASK, PORTRAIT_REF, PORTRAIT_MASK, PORTRAIT_IMAGE, PORTRAIT_KEYPOINTS,
                  ATTRIBUTE_KEYPOINTS]
        names += [GENERATED] if self.generated is not None else []
        return names + [latent_field(name) for name in sorted(self.latents)]


Sample = ClipSample | PairSample


def target_field(position: int) -> str:
    return f"{TARGET}.{position:04d}.jpg"


def latent_field(name: str) -> str:
    return f"latent.{name}.npy"


def encode_sample(sample: Sample, jpeg_quality: int) -> dict[str, object]:
    """Sample -> `{"__key__": key, field: bytes}` for the shard writer (bytes are written as they are).

    Raises ValueError for anything the reader could not decode back: a key with a dot, frames that are not
    uint8 RGB, masks or guidance frames of another size, masks with values other than 0/1.
    """
    if "." in sample.key:
        raise ValueError(f"sample key {sample.key!r} contains a dot; WebDataset would split it")
    encoder = _Encoder(jpeg_quality, {"__key__": sample.key, META: sample.meta.model_dump_json().encode()})
    if isinstance(sample, PairSample):
        _encode_pair(sample, encoder)
    else:
        _encode_clip(sample, encoder)
    return encoder.members


def _encode_clip(sample: ClipSample, out: _Encoder) -> None:
    frames = _check_frames(sample.frames, "frames")
    if len(frames) != len(sample.meta.frame_indices):
        raise ValueError("meta.frame_indices must list one index per frame")
    for position, frame in enumerate(frames):
        out.jpeg(frame_field(position), frame)
    out.array(KEYPOINTS, sample.keypoints, np.float32)
    out.array(LANDMARKS, _check_landmarks(sample.landmarks, len(frames)), np.float32)
    for attribute, masks in sorted(sample.masks.items()):
        for position, mask in enumerate(_check_masks(masks, frames.shape[:3], f"mask {attribute!r}")):
            out.mask(mask_field(attribute, position), mask)
    if sample.pose_frames is not None:
        for position, image in enumerate(_check_like(sample.pose_frames, frames, "pose frames")):
            out.png(pose_field(position), image)


def _encode_pair(sample: PairSample, out: _Encoder) -> None:
    targets = _check_frames(sample.targets, "targets")
    if len(targets) != len(sample.meta.target_positions):
        raise ValueError("meta.target_positions must list one position per target frame")
    for position, frame in enumerate(targets):
        out.jpeg(target_field(position), frame)
    for position, image in enumerate(_check_like(sample.pose_frames, targets, "pose frames")):
        out.png(pose_field(position), image)
    out.array(KEYPOINTS, sample.keypoints, np.float32)
    out.array(LANDMARKS, _check_landmarks(sample.landmarks, len(targets)), np.float32)
    size = targets.shape[1:3]
    attribute_mask = _check_masks(sample.attribute_mask[None], (1, *size), "attribute mask")[0]
    portrait_mask = _check_masks(sample.portrait_mask[None], (1, *size), "portrait mask")[0]
    out.jpeg(ATTRIBUTE_REF, _check_like(sample.attribute_ref[None], targets[:1], "attribute reference")[0])
    out.mask(ATTRIBUTE_MASK, attribute_mask)
    out.jpeg(PORTRAIT_REF, _check_like(sample.portrait_ref[None], targets[:1], "portrait reference")[0])
    out.mask(PORTRAIT_MASK, portrait_mask)
    out.jpeg(PORTRAIT_IMAGE, _check_like(sample.portrait_image[None], targets[:1], "portrait image")[0])
    for name, points in ((PORTRAIT_KEYPOINTS, sample.portrait_keypoints),
                         (ATTRIBUTE_KEYPOINTS, sample.attribute_keypoints)):
        if np.shape(points) != (5, 2):
            raise ValueError(f"{name.split('.')[0]} must be (5, 2), got {np.shape(points)}")
        out.array(name, points, np.float32)
    if sample.generated is not None:
        out.jpeg(GENERATED, _check_like(sample.generated[None], targets[:1], "generated image")[0])
    for name, latent in sorted(sample.latents.items()):
        if name not in LATENT_NAMES:
            raise ValueError(f"latent {name!r} is not one of {', '.join(LATENT_NAMES)}")
        out.array(latent_field(name), latent, np.float16)


def decode_sample(raw: dict[str, object]) -> Sample:
    """`{"__key__": ..., field: bytes}` as read from a tar (e.g. `webdataset.WebDataset(urls)`) -> sample."""
    meta = json.loads(_as_bytes(raw[META]))
    if meta.get("kind") == "pair":
        return _decode_pair(raw, PairMeta.model_validate(meta))
    return _decode_clip(raw, ClipMeta.model_validate(meta))


def _decode_clip(raw: dict[str, object], meta: ClipMeta) -> ClipSample:
    frames: dict[int, np.ndarray] = {}
    masks: dict[str, dict[int, np.ndarray]] = {}
    keypoints = landmarks = None
    pose: dict[int, np.ndarray] = {}
    for name, value in raw.items():
        if name.startswith("__"):
            continue
        if match := _FRAME_NAME.match(name):
            frames[int(match[1])] = _decode_rgb(value)
        elif match := _MASK_NAME.match(name):
            masks.setdefault(match[1], {})[int(match[2])] = _decode_mask(value)
        elif match := _POSE_NAME.match(name):
            pose[int(match[1])] = _decode_rgb(value)
        elif name == KEYPOINTS:
            keypoints = _decode_array(value)
        elif name == LANDMARKS:
            landmarks = _decode_array(value)
    if sorted(frames) != list(range(len(meta.frame_indices))):
        raise ValueError(f"sample {raw.get('__key__')} has frames {sorted(frames)}, meta lists {len(meta.frame_indices)}")
    return ClipSample(
        key=str(raw["__key__"]),
        meta=meta,
        frames=_stack(frames),
        keypoints=keypoints,
        landmarks=landmarks,
        masks={attr: _stack(by_pos) for attr, by_pos in masks.items()},
        pose_frames=_stack(pose) if pose else None,
    )


def _decode_pair(raw: dict[str, object], meta: PairMeta) -> PairSample:
    targets: dict[int, np.ndarray] = {}
    pose: dict[int, np.ndarray] = {}
    latents: dict[str, np.ndarray] = {}
    for name, value in raw.items():
        if match := _TARGET_NAME.match(name):
            targets[int(match[1])] = _decode_rgb(value)
        elif match := _POSE_NAME.match(name):
            pose[int(match[1])] = _decode_rgb(value)
        elif name.startswith("latent.") and name.endswith(".npy"):
            latents[name.removeprefix("latent.").removesuffix(".npy")] = _decode_array(value)
    expected = list(range(len(meta.target_positions)))
    if sorted(targets) != expected or sorted(pose) != expected:
        raise ValueError(f"sample {raw.get('__key__')} has targets {sorted(targets)} and guidance frames "
                         f"{sorted(pose)}; meta lists {len(expected)}")
    attribute_mask, portrait_mask = _decode_mask(raw[ATTRIBUTE_MASK]), _decode_mask(raw[PORTRAIT_MASK])
    # JPEG rings across the mask edges: masking again makes the complementarity exact.
    return PairSample(
        key=str(raw["__key__"]),
        meta=meta,
        targets=_stack(targets),
        pose_frames=_stack(pose),
        attribute_ref=_decode_rgb(raw[ATTRIBUTE_REF]) * attribute_mask[..., None],
        attribute_mask=attribute_mask,
        portrait_ref=_decode_rgb(raw[PORTRAIT_REF]) * ~portrait_mask[..., None],
        portrait_mask=portrait_mask,
        portrait_image=_decode_rgb(raw[PORTRAIT_IMAGE]),
        portrait_keypoints=_decode_array(raw[PORTRAIT_KEYPOINTS]),
        attribute_keypoints=_decode_array(raw[ATTRIBUTE_KEYPOINTS]),
        keypoints=_decode_array(raw[KEYPOINTS]) if KEYPOINTS in raw else None,
        landmarks=_decode_array(raw[LANDMARKS]) if LANDMARKS in raw else None,
        generated=_decode_rgb(raw[GENERATED]) if GENERATED in raw else None,
        latents=latents,
    )


@dataclass
class _Encoder:
    """Collects encoded members."""

    jpeg_quality: int
    members: dict[str, object]

    def jpeg(self, name: str, rgb: np.ndarray) -> None:
        self.members[name] = _encode_image(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                                           [cv2.IMWRITE_JPEG_QUALITY, int(self.jpeg_quality)])

    def png(self, name: str, rgb: np.ndarray) -> None:
        self.members[name] = _encode_image(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [])

    def mask(self, name: str, mask: np.ndarray) -> None:
        self.members[name] = _encode_image(".png", mask.astype(np.uint8) * 255, [cv2.IMWRITE_PNG_BILEVEL, 1])

    def array(self, name: str, array: np.ndarray | None, dtype: type) -> None:
        if array is not None:
            buffer = io.BytesIO()
            np.save(buffer, np.asarray(array, dtype=dtype), allow_pickle=False)
            self.members[name] = buffer.getvalue()


def _check_frames(frames: np.ndarray, name: str) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"{name} must be (F, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    return frames


def _check_landmarks(landmarks: np.ndarray | None, frames: int) -> np.ndarray | None:
    if landmarks is not None and np.shape(landmarks) != (frames, 5, 2):
        raise ValueError(f"landmarks must be ({frames}, 5, 2), one set of 5 points per frame, got "
                         f"{np.shape(landmarks)}")
    return landmarks


def _check_like(images: np.ndarray, frames: np.ndarray, name: str) -> np.ndarray:
    images = np.asarray(images)
    if images.shape != frames.shape or images.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 {frames.shape} like the frames, got {images.shape} {images.dtype}")
    return images


def _check_masks(masks: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    """Masks as bool; integer 0/1 masks are accepted, any other value or size is refused."""
    masks = np.asarray(masks)
    if masks.shape != tuple(shape):
        raise ValueError(f"{name} must be {tuple(shape)} like the frames, got {masks.shape}")
    if masks.dtype != bool:
        if masks.dtype.kind not in "iu" or not np.isin(masks, (0, 1)).all():
            raise ValueError(f"{name} must be bool (or 0/1 integers), got {masks.dtype} with values "
                             f"{np.unique(masks)[:5].tolist()}")
        masks = masks.astype(bool)
    return masks


def _stack(by_position: dict[int, np.ndarray]) -> np.ndarray:
    return np.stack([by_position[i] for i in sorted(by_position)])


def _decode_rgb(value: object) -> np.ndarray:
    return cv2.cvtColor(_decode_image(_as_bytes(value), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _decode_mask(value: object) -> np.ndarray:
    return _decode_image(_as_bytes(value), cv2.IMREAD_GRAYSCALE) > 127


def _decode_array(value: object) -> np.ndarray:
    return np.load(io.BytesIO(_as_bytes(value)), allow_pickle=False)


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
