"""Synthetic portrait videos with exact ground truth, and the broken inputs the pipeline must survive.

A video shows a flat-coloured cartoon head on a plain background: it drifts along a
smooth seeded path and turns (yaw: the face narrows and the features shift sideways).
Hair, eyeglasses, hat and beard are distinct flat-coloured regions. Everything is
drawn into a label map first, so the ground truth (face box, 5 keypoints, one mask
per attribute) is exact; it is written beside the video as `<stem>.truth.npz` and
read back with `load_truth`. Ground truth is in display (upright) coordinates, also
when the file is stored rotated. The same seed gives the same pixels. By default the
head fills the middle of the frame; `head_centre` and `head_size` place it (e.g. high and
small in an HD or phone frame, as in real footage).
"""

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import ffmpeg
import numpy as np

from data_specs.perception import ATTRIBUTES as ATTRIBUTE_NAMES
from tasks.media import file_url, run_ffmpeg, write_video

# Every attribute, in the order the generator draws them and its seeds take them (changing it changes the videos).
ATTRIBUTES = tuple(ATTRIBUTE_NAMES[i] for i in (0, 1, 3, 2))  # hair, eyeglasses, hat, beard
KEYPOINT_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")  # "left" = smaller x in the image

# Labels in painting order; each region is one flat colour (RGB).
BACKGROUND, HAIR, SKIN, BEARD, EYE, NOSE, MOUTH, EYEGLASSES, HAT = range(9)
LABEL_OF = {"hair": HAIR, "eyeglasses": EYEGLASSES, "hat": HAT, "beard": BEARD}
COLOURS = {
    HAIR: (110, 60, 20),
    BEARD: (70, 70, 70),
    EYE: (20, 20, 20),
    MOUTH: (170, 40, 70),
    EYEGLASSES: (30, 30, 200),
    HAT: (210, 40, 40),
}
SKIN_TONES = ((230, 190, 160), (200, 150, 110), (160, 110, 80), (240, 205, 180))
# Styled attributes (`styled=True`): each video draws its own colour per attribute from these ranges, so that an
# attribute carried from one video to another is visibly the donor's (the default keeps `COLOURS`).
STYLE_RANGES = {
    HAIR: ((20, 10, 0), (200, 160, 90)),
    BEARD: ((30, 20, 10), (140, 110, 90)),
    EYEGLASSES: ((0, 0, 60), (90, 200, 255)),
    HAT: ((60, 0, 0), (255, 220, 120)),
}
TRIPLETS_MANIFEST = "triplets.json"


def write_portrait_video(
    path: str | Path,
    *,
    seed: int,
    num_frames: int = 48,
    fps: float = 24.0,
    width: int = 256,
    height: int = 256,
    attributes: Sequence[str] = ATTRIBUTES,
    rotation: int = 0,
    codec: str = "libx264",
    head_centre: tuple[float, float] | None = None,
    head_size: float | None = None,
    styled: bool = False,
    attribute_seeds: Mapping[str, int] | None = None,
) -> Path:
    """Render and encode one portrait video and write its ground truth beside it.

    `width` x `height` is the display size; with `rotation` (clockwise degrees, as a
    phone writes it) the stored frames are turned the other way and the file says
    how to turn them back, so only a decoder that honours rotation sees them upright.
    `head_centre` ((x, y) fractions of the width and height) and `head_size` (the face's
    width as a fraction of the shorter side) place the head; it then drifts by a fraction of
    its own size. None: centred, 0.38-0.46 of the shorter side, drifting across the frame.
    `styled`: each attribute in the video's own seeded colour (`attribute_colour`) instead of `COLOURS`;
    `attribute_seeds` ({attribute: seed}, styled only): that attribute in another video's colour.
    """
    unknown = set(attributes) - set(ATTRIBUTES)
    if unknown:
        raise ValueError(f"unknown attributes {sorted(unknown)}; choose from {ATTRIBUTES}")
    frames, truth = _render(seed, num_frames, width, height, attributes, head_centre, head_size, styled,
                            attribute_seeds)
    path = Path(path)
    write_video(frames, path, fps, rotation=rotation, codec=codec)
    np.savez_compressed(_truth_path(path), fps=np.float64(fps), size=np.array([width, height]), **truth)
    return path


def load_truth(video_path: str | Path) -> dict:
    """Read the ground truth written beside a synthetic video.

    Returns `boxes` (F, 4) float32 xyxy, `keypoints` (F, 5, 2) float32 in `KEYPOINT_NAMES`
    order, `masks_<attribute>` (F, H, W) bool per rendered attribute, `fps` (float) and
    `size` ((width, height) of the display frame).
    """
    with np.load(_truth_path(Path(video_path))) as archive:
        truth = {key: archive[key] for key in archive.files}
    truth["fps"] = float(truth["fps"])
    truth["size"] = (int(truth["size"][0]), int(truth["size"][1]))
    return truth


def write_edge_case_videos(directory: str | Path, seed: int = 0) -> dict[str, Path]:
    """Write the awkward inputs the pipeline must survive; return {name: path}, name = file stem."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    small = {"num_frames": 24, "width": 64, "height": 64}
    paths = {}

    paths["zero_byte"] = directory / "zero_byte.mp4"
    paths["zero_byte"].write_bytes(b"")

    # The mp4 muxer writes the index (moov) last, so a cut file has none.
    frames = _render(seed, 12, 64, 64, ATTRIBUTES)[0]
    paths["truncated"] = directory / "truncated.mp4"
    write_video(frames, paths["truncated"], 24.0)
    _truncate(paths["truncated"], 0.4)

    # With the index moved to the front, a cut file probes fine and fails while decoding.
    paths["truncated_stream"] = directory / "truncated_stream.mp4"
    write_video(frames, paths["truncated_stream"], 24.0, movflags="+faststart")
    _truncate(paths["truncated_stream"], 0.6)

    paths["random_bytes"] = directory / "random_bytes.mp4"
    paths["random_bytes"].write_bytes(rng.bytes(64 * 1024))

    paths["audio_only"] = directory / "audio_only.mp4"  # an mp4 container holding only audio
    sine = ffmpeg.input("sine=frequency=440:duration=0.5", format="lavfi")
    run_ffmpeg(sine.output(file_url(paths["audio_only"]), acodec="aac"))

    paths["one_frame"] = write_portrait_video(directory / "one_frame.mp4", seed=seed, **{**small, "num_frames": 1})

    # Timestamps spread quadratically: each frame lasts longer than the one before.
    paths["variable_fps"] = directory / "variable_fps.mp4"
    write_video(frames, paths["variable_fps"], 24.0, setpts="(N+N*N/8)/24/TB", fps_mode="passthrough")

    # Portrait display (64 x 96) stored as landscape (96 x 64), as phones do.
    paths["rotated"] = write_portrait_video(
        directory / "rotated.mp4", seed=seed, rotation=90, **{**small, "height": 96}
    )

    # 4104 x 4104 is just above the default 4096 x 4096 limit; a flat colour encodes in a blink.
    paths["large"] = directory / "large.mp4"
    source = ffmpeg.input("color=c=gray:size=4104x4104:rate=1:duration=2", format="lavfi")
    run_ffmpeg(source.output(file_url(paths["large"]), vcodec="libx264", preset="ultrafast", pix_fmt="yuv420p"))

    name = "spaces and ünïcode name"
    paths[name] = write_portrait_video(directory / f"{name}.mp4", seed=seed, **small)
    return paths


def write_dataset(out_dir: str | Path, count: int, seed: int = 0, **video_kwargs) -> list[Path]:
    """Write `count` portrait videos `portrait_0000.mp4`, ... with seeds seed, seed + 1, ....

    The first video has every attribute; the others a seeded subset (unless
    `attributes` is passed). Other keyword arguments go to `write_portrait_video`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        video_seed = seed + index
        keep = np.random.default_rng(video_seed).random(len(ATTRIBUTES)) < 0.7
        attributes = ATTRIBUTES if index == 0 else tuple(a for a, k in zip(ATTRIBUTES, keep) if k)
        kwargs = {"attributes": attributes, **video_kwargs}
        paths.append(write_portrait_video(out_dir / f"portrait_{index:04d}.mp4", seed=video_seed, **kwargs))
    return paths


def attribute_colour(seed: int, attribute: str) -> tuple[int, int, int]:
    """The RGB colour of `attribute` in the styled video of `seed` (its own generator: the video's head and
    motion draws are untouched)."""
    label = LABEL_OF[attribute]
    low, high = STYLE_RANGES[label]
    rng = np.random.default_rng([seed, label])
    return tuple(int(v) for v in rng.integers(low, np.add(high, 1)))


@dataclass(frozen=True)
class TripletSpec:
    """A cross-transfer triplet: portrait video A (identity and motion of `seed_a`) wearing `attribute` as video B
    (`seed_b`) wears it. The attribute's shape follows A's head (it is drawn on A's head, as any transfer must
    put it), its colour is B's: the truth is A with that region repainted, or added where A lacks it."""

    index: int
    attribute: str
    seed_a: int
    seed_b: int
    attributes_a: tuple[str, ...]
    attributes_b: tuple[str, ...]
    num_frames: int
    width: int
    height: int

    def path(self, directory: str | Path, role: str) -> Path:
        """The video of `role` (a, b or truth): `triplet_<index>_<role>.mp4`."""
        return Path(directory) / f"triplet_{self.index:04d}_{role}.mp4"


@dataclass
class Triplet:
    """A triplet rendered: (F, H, W, 3) uint8 frames of A, B and the truth, and each one's ground truth arrays."""

    spec: TripletSpec
    a: np.ndarray
    b: np.ndarray
    truth: np.ndarray
    truth_a: dict[str, np.ndarray]
    truth_b: dict[str, np.ndarray]
    truth_truth: dict[str, np.ndarray]

    @property
    def region(self) -> np.ndarray:
        """(F, H, W) bool: the transferred attribute's region in the truth, the only pixels that differ from A."""
        return self.truth_truth[f"masks_{self.spec.attribute}"]


def plan_triplets(count: int, seed: int = 0, *, num_frames: int = 48, width: int = 256,
                  height: int = 256) -> list[TripletSpec]:
    """`count` triplets cycling through the attributes; A draws a seeded attribute subset, B always wears the one it
    lends. Seeds seed + 2i (A) and seed + 2i + 1 (B)."""
    specs = []
    for index in range(count):
        seed_a, seed_b = seed + 2 * index, seed + 2 * index + 1
        attribute = ATTRIBUTES[index % len(ATTRIBUTES)]
        keep = np.random.default_rng([seed_a, 99]).random(len(ATTRIBUTES)) < 0.5
        attributes_a = tuple(a for a, k in zip(ATTRIBUTES, keep) if k)
        keep = np.random.default_rng([seed_b, 99]).random(len(ATTRIBUTES)) < 0.5
        attributes_b = tuple(a for a, k in zip(ATTRIBUTES, keep) if k or a == attribute)
        specs.append(TripletSpec(index, attribute, seed_a, seed_b, attributes_a, attributes_b, num_frames, width,
                                 height))
    return specs


def render_triplet(spec: TripletSpec) -> Triplet:
    """Render A, B and the truth of a triplet (exactly: nothing is encoded)."""
    size = (spec.num_frames, spec.width, spec.height)
    a, truth_a = _render(spec.seed_a, *size, spec.attributes_a, styled=True)
    b, truth_b = _render(spec.seed_b, *size, spec.attributes_b, styled=True)
    wearing = tuple(name for name in ATTRIBUTES if name in spec.attributes_a or name == spec.attribute)
    truth, truth_truth = _render(spec.seed_a, *size, wearing, styled=True,
                                 attribute_seeds={spec.attribute: spec.seed_b})
    return Triplet(spec, a, b, truth, truth_a, truth_b, truth_truth)


def write_triplets(out_dir: str | Path, count: int, seed: int = 0, *, num_frames: int = 48, width: int = 256,
                   height: int = 256, fps: float = 24.0) -> list[TripletSpec]:
    """Write `count` triplets (`triplet_<i>_a.mp4`, `_b.mp4`, `_truth.mp4`, each with its `.truth.npz`) and the
    manifest `triplets.json` that `read_triplets` reads (it holds the seeds: `render_triplet` redraws any triplet
    exactly, without the encoder's loss)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    specs = plan_triplets(count, seed, num_frames=num_frames, width=width, height=height)
    for spec in specs:
        triplet = render_triplet(spec)
        for role, frames, truth in (("a", triplet.a, triplet.truth_a), ("b", triplet.b, triplet.truth_b),
                                    ("truth", triplet.truth, triplet.truth_truth)):
            path = spec.path(out_dir, role)
            write_video(frames, path, fps)
            np.savez_compressed(_truth_path(path), fps=np.float64(fps), size=np.array([spec.width, spec.height]),
                                **truth)
    manifest = {"fps": fps, "triplets": [{**vars(spec), "attributes_a": list(spec.attributes_a),
                                          "attributes_b": list(spec.attributes_b)} for spec in specs]}
    (out_dir / TRIPLETS_MANIFEST).write_text(json.dumps(manifest, indent=1))
    return specs


def read_triplets(directory: str | Path) -> list[TripletSpec]:
    """The triplets `write_triplets` wrote into `directory` (its `triplets.json`)."""
    manifest = json.loads((Path(directory) / TRIPLETS_MANIFEST).read_text())
    return [TripletSpec(**{**entry, "attributes_a": tuple(entry["attributes_a"]),
                           "attributes_b": tuple(entry["attributes_b"])}) for entry in manifest["triplets"]]


def _render(
    seed: int, num_frames: int, width: int, height: int, attributes: Sequence[str],
    head_centre: tuple[float, float] | None = None, head_size: float | None = None, styled: bool = False,
    attribute_seeds: Mapping[str, int] | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Draw (F, H, W, 3) uint8 RGB frames and their ground truth arrays."""
    rng = np.random.default_rng(seed)
    palette = np.zeros((max(COLOURS) + 1, 3), np.uint8)
    for label, colour in COLOURS.items():
        palette[label] = colour
    if styled:  # from their own generator: the head and its motion stay what `seed` draws
        for name in ATTRIBUTES:
            palette[LABEL_OF[name]] = attribute_colour((attribute_seeds or {}).get(name, seed), name)
    palette[BACKGROUND] = rng.integers((60, 90, 120), (100, 140, 180))  # a muted blue-grey
    palette[SKIN] = SKIN_TONES[rng.integers(len(SKIN_TONES))]
    palette[NOSE] = (palette[SKIN] * 0.8).astype(np.uint8)

    short = min(width, height)
    half_width = short * rng.uniform(0.19, 0.23)  # of the face seen from the front
    if head_size is not None:
        half_width = short * head_size / 2
    half_height = 1.3 * half_width
    # Where the head is and how far it drifts: across the frame, or around a placed head by its own size.
    centre = (width / 2, height * 0.57) if head_centre is None else (width * head_centre[0], height * head_centre[1])
    drift = (0.12 * width, 0.04 * height) if head_centre is None else (0.5 * half_width, 0.15 * half_width)
    line = max(1, round(short / 40 if head_size is None else half_width / 8))  # eyeglass frames
    # Motion over the clip: x and y drift and yaw are sines with seeded speed and phase.
    speed = rng.uniform(0.5, 1.0, 3)
    phase = rng.uniform(0, 1, 3)
    max_yaw = np.radians(rng.uniform(20, 40))

    frames = np.empty((num_frames, height, width, 3), np.uint8)
    boxes = np.empty((num_frames, 4), np.float32)
    keypoints = np.empty((num_frames, 5, 2), np.float32)
    masks = {name: np.empty((num_frames, height, width), bool) for name in attributes}
    labels = np.empty((height, width), np.uint8)
    for i in range(num_frames):
        t = i / max(num_frames, 2)
        wave = np.sin(2 * np.pi * (speed * t + phase))
        cx = centre[0] + drift[0] * wave[0]
        cy = centre[1] + drift[1] * wave[1]
        yaw = max_yaw * wave[2]
        a = half_width * (1 - 0.3 * abs(np.sin(yaw)))  # the face narrows as it turns
        shift = 0.35 * half_width * np.sin(yaw)  # and the features slide towards the turn
        b = half_height

        eyes = [(cx - 0.4 * a + shift, cy - 0.2 * b), (cx + 0.4 * a + shift, cy - 0.2 * b)]
        nose = (cx + 1.3 * shift, cy + 0.12 * b)
        mouth = [(cx - 0.3 * a + shift, cy + 0.45 * b), (cx + 0.3 * a + shift, cy + 0.45 * b)]
        keypoints[i] = [*eyes, nose, *mouth]
        boxes[i] = (cx - a, cy - b, cx + a, cy + b)

        labels.fill(BACKGROUND)
        if "hair" in attributes:
            _ellipse(labels, (cx, cy - 0.2 * b), (1.15 * a, b), HAIR)
        _ellipse(labels, (cx, cy), (a, b), SKIN)
        if "beard" in attributes:
            beard = np.zeros_like(labels)
            _ellipse(beard, (cx + 0.5 * shift, cy + 0.7 * b), (0.8 * a, 0.45 * b), 1)
            labels[(beard == 1) & (labels == SKIN)] = BEARD  # only on the face
        for eye in eyes:
            _ellipse(labels, eye, (0.14 * a, 0.08 * b), EYE)
        tip, top = _point(nose), _point((cx + shift, cy - 0.1 * b))
        cv2.fillPoly(labels, [np.array([top, tip, (tip[0] - max(1, round(0.15 * a)), tip[1])], np.int32)], NOSE)
        _ellipse(labels, ((mouth[0][0] + mouth[1][0]) / 2, mouth[0][1]), (0.3 * a, 0.07 * b), MOUTH)
        if "eyeglasses" in attributes:
            for eye in eyes:
                cv2.circle(labels, _point(eye), round(0.25 * a), EYEGLASSES, line)
            cv2.line(labels, _point((eyes[0][0] + 0.25 * a, eyes[0][1])), _point((eyes[1][0] - 0.25 * a, eyes[1][1])),
                     EYEGLASSES, line)
        if "hat" in attributes:
            crown = (_point((cx - 0.85 * a, cy - 1.45 * b)), _point((cx + 0.85 * a, cy - 0.75 * b)))
            brim = (_point((cx - 1.3 * a, cy - 0.85 * b)), _point((cx + 1.3 * a, cy - 0.72 * b)))
            cv2.rectangle(labels, *crown, HAT, -1)
            cv2.rectangle(labels, *brim, HAT, -1)

        frames[i] = palette[labels]
        for name in attributes:
            masks[name][i] = labels == LABEL_OF[name]
    truth = {"boxes": boxes, "keypoints": keypoints, **{f"masks_{name}": m for name, m in masks.items()}}
    return frames, truth


def _truncate(path: Path, fraction: float) -> None:
    """Keep only the first `fraction` of a file's bytes."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def _ellipse(image: np.ndarray, centre: tuple[float, float], axes: tuple[float, float], label: int) -> None:
    """Fill an axis-aligned ellipse with `label`."""
    cv2.ellipse(image, _point(centre), (max(1, round(axes[0])), max(1, round(axes[1]))), 0, 0, 360, label, -1)


def _point(xy: tuple[float, float]) -> tuple[int, int]:
    """Round a point to integer pixel coordinates for cv2."""
    return round(float(xy[0])), round(float(xy[1]))


def _truth_path(video_path: Path) -> Path:
    """`<stem>.truth.npz` beside the video."""
    return video_path.with_suffix(".truth.npz")
