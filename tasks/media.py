"""Probing and decoding videos with the ffmpeg binaries, through ffmpeg-python.

Every problem with an input file is raised as `DataError` with a short reason a
person can act on; a missing ffmpeg binary is a `RuntimeError` (setup, not data).
"""

import contextlib
import fcntl
import os
import queue
import re
import shutil
import sys
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import IO

import cv2
import ffmpeg
import numpy as np

from data_specs.video import DecodeConfig, VideoProbe, YuvMatrix, YuvRange
from tasks.errors import DataError

STDERR_TAIL_LINES = 50
READ_AHEAD_FRAMES = 4
PIPE_BYTES = 1 << 20  # the default ceiling of /proc/sys/fs/pipe-max-size
_ENCODER_OPTIONS = {"libx264": {"preset": "veryfast", "crf": 18}, "mpeg4": {"qscale:v": 2}}
# Boxes an ISO-BMFF file (mp4, mov, m4a) can start with: an ffprobe failure on such a
# file means a damaged video, on anything else it means not a video at all.
_MP4_FIRST_BOXES = {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide"}
# "[mov,mp4,m4a @ 0x55d0c0] " prefixes of log lines mean nothing to people.
_LOG_PREFIX = re.compile(r"^(\[[^\]]+ @ 0x[0-9a-f]+\]\s*)+")
# The luma weights (Kr, Kb) that define each YUV matrix (ITU-T H.273); green's is 1 - Kr - Kb.
LUMA_WEIGHTS: dict[str, tuple[float, float]] = {
    "bt601": (0.299, 0.114), "bt709": (0.2126, 0.0722), "bt2020": (0.2627, 0.0593),
    "fcc": (0.30, 0.11), "smpte240m": (0.212, 0.087),
}
# ffprobe's `color_space` names of those matrices (BT.601's 625- and 525-line systems share one), and the
# tag `write_video` gives each.
_MATRIX_OF_TAG = {"bt470bg": "bt601", "smpte170m": "bt601", "bt709": "bt709", "bt2020nc": "bt2020",
                  "fcc": "fcc", "smpte240m": "smpte240m"}
_TAG_OF_MATRIX = {"bt601": "smpte170m", "bt709": "bt709", "bt2020": "bt2020nc", "fcc": "fcc",
                  "smpte240m": "smpte240m"}
# ffprobe prints these for a tag the stream leaves unspecified.
_UNSPECIFIED = {"unknown", "unspecified", "reserved"}


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame.

    Attributes:
        index: output frame index, starting at 0 for the first frame of the requested range.
        time_s: nominal presentation time in the source, `start_s + index / rate`.
        image: (size, size, 3) uint8 RGB, writable.
    """

    index: int
    time_s: float
    image: np.ndarray


@dataclass(frozen=True, slots=True)
class ColourEncoding:
    """How a stream's YUV code values map to RGB: the matrix and the range."""

    matrix: YuvMatrix
    range: YuvRange


def colour_encoding(probe: VideoProbe) -> ColourEncoding:
    """The matrix and range a stream's frames are converted with: its tags, else what players assume.

    Untagged, the matrix is BT.709 for HD (stored height >= 720 or width >= 1280) and BT.601
    below, and the range is limited unless the pixel format is a full-range `yuvj` one.
    Raises `DataError` for a matrix that no 3x3 matrix converts (BT.2020 constant luminance,
    YCgCo, ICtCp) or RGB stored as GBR planes.
    """
    tag = probe.color_space
    if tag is None:
        matrix = "bt709" if probe.coded_height >= 720 or probe.coded_width >= 1280 else "bt601"
    elif tag in _MATRIX_OF_TAG:
        matrix = _MATRIX_OF_TAG[tag]
    else:
        raise DataError(f"unsupported colour matrix '{tag}' (supported: {', '.join(sorted(_MATRIX_OF_TAG))})")
    full = probe.color_range == "pc" or (probe.color_range is None and probe.pix_fmt.startswith("yuvj"))
    return ColourEncoding(matrix, "full" if full else "limited")


class YuvToRgb:
    """Converts I420 frames (Y, U and V planes stacked as one (H * 3/2, W) uint8 array) to (H, W, 3)
    uint8 RGB with the exact matrix and range of one `ColourEncoding`.

    Each chroma sample covers its 2x2 block of pixels, as in OpenCV's and ffmpeg's own fast
    converters; one affine `cv2.transform` then maps YUV to RGB (in fixed point, rounding and
    saturating once): at most one level from an exact float conversion, about 0.35 ms for a
    512 x 512 frame (`benchmarks/bench_backbone.py --colour`). OpenCV's I420 conversion (0.1 ms)
    is BT.601 limited range only, and lifts luma below 16 to 16 before its matrix, which tints
    near-black pixels by up to 5 levels.
    """

    def __init__(self, encoding: ColourEncoding) -> None:
        self.encoding = encoding
        kr, kb = LUMA_WEIGHTS[encoding.matrix]
        kg = 1 - kr - kb
        # Code values to RGB levels: limited range spans 219 luma and 224 chroma steps, full range 255.
        full = encoding.range == "full"
        luma, chroma, black = (1.0, 1.0, 0) if full else (255 / 219, 255 / 224, 16)
        red_v, blue_u = 2 * (1 - kr) * chroma, 2 * (1 - kb) * chroma
        green_u, green_v = -2 * kb * (1 - kb) / kg * chroma, -2 * kr * (1 - kr) / kg * chroma
        weights = np.array([[luma, 0, red_v], [luma, green_u, green_v], [luma, blue_u, 0]])
        offsets = -weights @ np.array([black, 128, 128])
        self.matrix = np.hstack([weights, offsets[:, None]]).astype(np.float32)  # rows R, G, B of (Y, U, V, 1)

    def __call__(self, planes: np.ndarray) -> np.ndarray:
        height, width = planes.shape[0] * 2 // 3, planes.shape[1]
        u, v = (cv2.resize(plane, (width, height), interpolation=cv2.INTER_NEAREST_EXACT)
                for plane in planes[height:].reshape(2, height // 2, width // 2))
        return cv2.transform(cv2.merge([planes[:height], u, v]), self.matrix)


def find_ffmpeg() -> tuple[str, str]:
    """Return the paths of ffmpeg and ffprobe.

    Looked up in order: $DURIAN_FFMPEG / $DURIAN_FFPROBE, the directory of the running
    Python (the venv's bin, where the bootstrap script puts static builds), then PATH.
    Raises RuntimeError, saying how to install them, when one is missing.
    """
    found = []
    for name, env in (("ffmpeg", "DURIAN_FFMPEG"), ("ffprobe", "DURIAN_FFPROBE")):
        beside_python = Path(sys.executable).parent / name
        path = os.environ.get(env) or (str(beside_python) if beside_python.is_file() else shutil.which(name))
        if not path or not Path(path).is_file():
            raise RuntimeError(
                f"{name} not found (looked at ${env}, {beside_python.parent} and PATH); run scripts/bootstrap.sh "
                f"to install static ffmpeg/ffprobe into the venv, or set ${env}"
            )
        found.append(path)
    return found[0], found[1]


def summarise_ffmpeg_log(lines: Iterable[str], max_chars: int = 160) -> str:
    """Condense ffmpeg/ffprobe stderr to its first message (usually the cause) and a count of the others."""
    messages: list[str] = []
    for line in lines:
        message = _LOG_PREFIX.sub("", line.strip()).rstrip(".")
        if message and not message.startswith("Last message repeated") and message not in messages:
            messages.append(message)
    if not messages:
        return ""
    first = messages[0] if len(messages[0]) <= max_chars else messages[0][:max_chars] + "..."
    return first + (f" (+{len(messages) - 1} more)" if len(messages) > 1 else "")


def file_url(path: str | Path) -> str:
    """The ffmpeg URL of a local file: without `file:`, a name like `12:30.mp4` reads as a protocol."""
    return f"file:{path}"


def probe_video(path: str) -> VideoProbe:
    """Read a video's facts with ffprobe; raise `DataError` when the file is not a usable video."""
    file = Path(path)
    if not file.is_file():
        raise DataError("file not found" if not file.exists() else "not a regular file")
    size_bytes = file.stat().st_size
    if size_bytes == 0:
        raise DataError("file is empty (0 bytes)")
    try:
        info = ffmpeg.probe(file_url(path), cmd=find_ffmpeg()[1])
    except ffmpeg.Error as error:
        raise DataError(_probe_failure_reason(path, error.stderr.decode(errors="replace"))) from None

    streams = info.get("streams", [])
    # Cover art in audio files is a one-picture "video" stream; it is not a video.
    videos = [s for s in streams if s.get("codec_type") == "video" and not s.get("disposition", {}).get("attached_pic")]
    has_audio = any(s.get("codec_type") == "audio" for s in streams)
    if not videos:
        raise DataError("no video stream (audio only)" if has_audio else "no video stream")
    video = videos[0]

    coded_width, coded_height = int(video.get("width", 0)), int(video.get("height", 0))
    if coded_width <= 0 or coded_height <= 0:
        raise DataError("video stream has no frame size")
    avg_rate, base_rate = _rate(video.get("avg_frame_rate")), _rate(video.get("r_frame_rate"))
    fps = avg_rate or base_rate
    if not fps:
        raise DataError("video stream has no frame rate")
    duration_s = float(video.get("duration") or info.get("format", {}).get("duration") or 0)
    if duration_s <= 0:
        raise DataError("video has no duration")
    rotation = _rotation(video)
    swapped = rotation in (90, 270)
    nb_frames = int(video.get("nb_frames") or 0)
    return VideoProbe(
        path=path,
        size_bytes=size_bytes,
        duration_s=duration_s,
        fps=float(fps),
        # ffprobe averages over the whole stream; a base rate far from it means irregular timestamps.
        variable_fps=bool(avg_rate and base_rate and abs(avg_rate - base_rate) > 0.01 * base_rate),
        width=coded_height if swapped else coded_width,
        height=coded_width if swapped else coded_height,
        coded_width=coded_width,
        coded_height=coded_height,
        rotation=rotation,
        codec=video.get("codec_name", "unknown"),
        pix_fmt=video.get("pix_fmt", "unknown"),
        num_frames=nb_frames or max(1, round(duration_s * float(fps))),
        has_audio=has_audio,
        **{key: video[key] for key in ("color_space", "color_range", "color_primaries", "color_transfer")
           if video.get(key) not in (None, *_UNSPECIFIED)},
    )


def check_decodable(probe: VideoProbe, cfg: DecodeConfig) -> None:
    """Raise `DataError` when a probed video is too large to decode under `cfg`, or in colours it cannot convert."""
    colour_encoding(probe)
    pixels = probe.coded_width * probe.coded_height
    if pixels > cfg.max_source_pixels:
        raise DataError(
            f"source is {probe.coded_width}x{probe.coded_height} ({pixels} pixels), above the limit of "
            f"{cfg.max_source_pixels} pixels (DecodeConfig.max_source_pixels)"
        )


def source_frame_size(probe: VideoProbe, cfg: DecodeConfig) -> tuple[int, int]:
    """(width, height) of frames decoded at source resolution: the upright size, scaled down to
    `cfg.max_side` on the longer side when larger, both even (4:2:0)."""
    scale = min(1.0, cfg.max_side / max(probe.width, probe.height))
    return (max(2, round(probe.width * scale / 2) * 2), max(2, round(probe.height * scale / 2) * 2))


def iter_frames(
    path: str, probe: VideoProbe, cfg: DecodeConfig, start_s: float = 0.0, end_s: float | None = None,
    source_size: bool = False,
) -> Iterator[Frame]:
    """Decode [start_s, end_s) of a video to upright RGB frames, one at a time.

    Frames are `cfg.size` squares (scaled and cropped or padded, `cfg.crop`), or with
    `source_size` the source's own aspect ratio and resolution (`source_frame_size`), for
    perception that crops faces from the source picture.

    Output is at a constant rate: `cfg.fps`, or the source's own rate (a variable-rate
    source is resampled to its average rate, so `time_s` stays meaningful). Colours follow
    the stream's matrix and range (`colour_encoding`).

    Frames are yielded as ffmpeg produces them, and none at or after damage in the stream:
    ffmpeg stops at the first decode error or concealed frame (`_decode_graph`), so a damaged
    file gives the frames decoded before it, then `DataError`; the caller keeps what it made
    of them or fails the item. Closing the generator early kills and reaps ffmpeg.
    """
    check_decodable(probe, cfg)
    if start_s < 0 or (end_s is not None and end_s <= start_s):
        raise ValueError(f"invalid time range [{start_s}, {end_s})")
    rate = cfg.fps or probe.fps
    encoding = colour_encoding(probe)
    frame_size = source_frame_size(probe, cfg) if source_size else (cfg.size, cfg.size)
    process = _decode_graph(path, probe, cfg, start_s, end_s, frame_size, source_size, encoding).run_async(
        cmd=find_ffmpeg()[0], pipe_stdout=True, pipe_stderr=True
    )
    # ffmpeg blocks once the stderr pipe is full; a thread keeps it drained.
    log: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
    drain = threading.Thread(target=_drain, args=(process.stderr, log), daemon=True)
    drain.start()
    # A reader thread keeps a few decoded frames ready, so ffmpeg decodes the next frames
    # while the caller encodes this one (pipe reads and cv2 both release the GIL).
    _widen_pipe(process.stdout)
    ready: queue.Queue[np.ndarray | None] = queue.Queue(maxsize=READ_AHEAD_FRAMES)
    stop = threading.Event()
    reader = threading.Thread(target=_read_frames, args=(process.stdout, frame_size, YuvToRgb(encoding), ready,
                                                         stop), daemon=True)
    reader.start()
    index = 0
    try:
        # Every frame in the pipe and the read-ahead queue was decoded before any damage (ffmpeg
        # stops there: `_decode_graph`), so all are yielded, however late the error is read.
        while (image := ready.get()) is not None:
            yield Frame(index=index, time_s=start_s + index / rate, image=image)
            index += 1
        process.wait()
        drain.join()
        # Any logged error fails the item, also one ffmpeg goes on after (a demuxer noting a cut file).
        if process.returncode or log:
            reason = summarise_ffmpeg_log(log) or f"ffmpeg exited with code {process.returncode}"
            raise DataError(f"decode failed after {index} frames: {reason}")
        if index == 0:
            end = f"{end_s:g} s" if end_s is not None else "the end"
            raise DataError(f"no frames decoded between {start_s:g} s and {end} (video is {probe.duration_s:g} s)")
    finally:
        stop.set()
        if process.poll() is None:
            process.kill()
            process.wait()
        while reader.is_alive():  # unblock a reader waiting for room in the queue
            with contextlib.suppress(queue.Empty):
                ready.get(timeout=0.05)
        process.stdout.close()
        drain.join()
        process.stderr.close()


def _read_frames(
    stdout: IO[bytes], frame_size: tuple[int, int], to_rgb: YuvToRgb, ready: queue.Queue, stop: threading.Event
) -> None:
    """Read whole I420 frames from ffmpeg, convert them to RGB, put them in `ready`; None ends the stream.

    ffmpeg hands over planar YUV because its RGB conversion, done in the scaler, is the
    slowest part of its graph, and its fast unscaled one is a level darker than exact
    (BENCHMARKS.md); `YuvToRgb` is exact and costs a fraction of the decode.
    """
    width, height = frame_size
    planes = np.empty((height * 3 // 2, width), np.uint8)
    while not stop.is_set():
        # A buffered pipe read fills the whole frame unless ffmpeg stopped writing
        # mid-frame, which only a crash does (and the exit code then tells).
        try:
            if stdout.readinto(planes) < planes.size:
                break
        except ValueError:  # the pipe was closed under us after an early stop
            break
        ready.put(to_rgb(planes))
    ready.put(None)


def _widen_pipe(stdout: IO[bytes]) -> None:
    """Let ffmpeg write a whole frame or more before blocking (Linux; a no-op elsewhere)."""
    with contextlib.suppress(OSError, AttributeError):
        fcntl.fcntl(stdout.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)


def write_video(
    frames: np.ndarray,
    path: str | Path,
    fps: float,
    *,
    rotation: int = 0,
    codec: str = "libx264",
    setpts: str | None = None,
    matrix: YuvMatrix = "bt601",
    yuv_range: YuvRange = "limited",
    tag_colours: bool = True,
    **output_options,
) -> Path:
    """Encode upright (F, H, W, 3) uint8 RGB frames to a yuv420p video (H.264 by default).

    `rotation` stores the frames turned and says so in the display matrix (as phones do);
    `setpts` rewrites timestamps; `matrix` and `yuv_range` say how RGB becomes YUV, and the
    stream is tagged with them unless `tag_colours` is off (then decoders guess: BT.601 is
    only right below HD, see `colour_encoding`); other options go to the output.
    Deterministic: one encoder thread makes x264's output independent of the core count.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if rotation % 90:
        raise ValueError(f"rotation must be a multiple of 90 degrees, got {rotation}")
    # Store the frames turned counter-clockwise; the display matrix says "turn clockwise".
    stored = np.ascontiguousarray(np.rot90(frames, k=rotation // 90, axes=(1, 2)))
    height, width = stored.shape[1:3]
    if width % 2 or height % 2:
        raise ValueError(f"yuv420p needs an even frame size, got {width}x{height}")
    # -noautorotate: otherwise ffmpeg would apply the rotation to the pixels while encoding.
    rotate = {"display_rotation": -rotation, "noautorotate": None} if rotation else {}
    stream = ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{width}x{height}", r=fps, **rotate)
    # A simple filtergraph (-vf), not ffmpeg-python's -filter_complex, after which ffmpeg would
    # not copy the display matrix to the output.
    filters = [f"setpts={setpts}"] if setpts else []
    filters.append(f"scale=out_color_matrix={matrix}:out_range={yuv_range}")
    tags = {"colorspace": _TAG_OF_MATRIX[matrix], "color_range": {"limited": "tv", "full": "pc"}[yuv_range]}
    output = stream.output(
        file_url(path), vf=",".join(filters), vcodec=codec, pix_fmt="yuv420p", g=max(1, round(fps)), threads=1,
        **_ENCODER_OPTIONS.get(codec, {}), **(tags if tag_colours else {}), **output_options,
    )
    run_ffmpeg(output, frames=stored)
    return path


def run_ffmpeg(output: ffmpeg.nodes.OutputStream, frames: np.ndarray | None = None) -> None:
    """Run an ffmpeg graph to a file, feeding `frames` as raw video; failures are RuntimeErrors."""
    graph = output.global_args("-nostdin", "-hide_banner", "-loglevel", "error").overwrite_output()
    try:
        graph.run(cmd=find_ffmpeg()[0], input=None if frames is None else frames.tobytes(), quiet=True)
    except ffmpeg.Error as error:
        raise RuntimeError(f"ffmpeg failed: {summarise_ffmpeg_log(error.stderr.decode(errors='replace').splitlines())}")


def _decode_graph(
    path: str, probe: VideoProbe, cfg: DecodeConfig, start_s: float, end_s: float | None,
    frame_size: tuple[int, int], source_size: bool, encoding: ColourEncoding,
) -> ffmpeg.nodes.OutputStream:
    """The ffmpeg graph for `iter_frames`: seek, trim, rate, scale (and crop or pad), raw YUV out.

    The scaler keeps the source's range (it would otherwise make full range limited) and
    its matrix (YUV to YUV never changes it), so the planes are what `encoding` says.

    Damage stops ffmpeg before a damaged frame reaches the pipe: `err_detect explode` makes
    the decoder fail the packet it finds broken instead of concealing it, and `-xerror`
    makes ffmpeg exit at that failure, at a packet the demuxer flags as corrupt, or at any
    frame still flagged as concealed. A failure comes in decoding order, so frames shown
    earlier that reference the damaged one (B frames) are never decoded either; everything
    already in the pipe is sound. The price: the good frames ffmpeg still held (for
    reordering, or queued to its writer thread) are lost with it, a few frames whose number
    can differ by one between runs. Garbage that still parses as a valid stream is damage
    no decoder sees; this catches what the decoder can.
    """
    # Input-side -ss seeks to the keyframe before start_s and decodes up to it (accurate
    # and fast); -t then ends the range. `threads` limits the decoder.
    trim = {"ss": start_s} if start_s else {}
    if end_s is not None:
        trim["t"] = end_s - start_s
    # autorotation is on by default
    stream = ffmpeg.input(file_url(path), threads=cfg.threads, err_detect="+explode", **trim)
    if cfg.fps or probe.variable_fps:
        stream = stream.filter("fps", fps=cfg.fps or probe.fps, eof_action="pass")
    keep_range = {"in_range": encoding.range, "out_range": encoding.range}
    # Full range travels as yuvj420p (same planes): only then is the pad filter's black 0 rather than 16.
    planar = "yuvj420p" if encoding.range == "full" else "yuv420p"
    size = cfg.size
    if source_size:
        stream = stream.filter("scale", *frame_size, flags="area", **keep_range).filter("format", planar)
    else:
        fit = "increase" if cfg.crop == "center" else "decrease"
        stream = stream.filter("scale", size, size, force_original_aspect_ratio=fit, **keep_range).filter(
            "format", planar
        )
        if cfg.crop == "center":
            stream = stream.filter("crop", size, size)
        else:
            stream = stream.filter("pad", size, size, "(ow-iw)/2", "(oh-ih)/2")
    # passthrough: the rawvideo muxer would otherwise duplicate frames to a constant rate itself.
    output = stream.output("pipe:", format="rawvideo", pix_fmt=planar, fps_mode="passthrough", an=None, sn=None)
    # ffmpeg-python always writes -filter_complex, whose thread count is a global option.
    return output.global_args(
        "-nostdin", "-hide_banner", "-loglevel", "error", "-xerror", "-filter_complex_threads", str(cfg.threads)
    )


def _drain(stream: IO[bytes], log: deque[str]) -> None:
    """Read a pipe to its end, keeping the last lines in `log`."""
    for line in stream:
        log.append(line.decode(errors="replace"))


def _rate(text: str | None) -> Fraction:
    """Parse an ffprobe rate such as '30000/1001'; '0/0' and missing rates are 0."""
    numerator, _, denominator = (text or "0/0").partition("/")
    return Fraction(int(numerator), int(denominator)) if denominator and int(denominator) else Fraction(0)


def _rotation(stream: dict) -> int:
    """Clockwise display rotation from the display matrix (counter-clockwise there) or the legacy tag."""
    matrix = [d for d in stream.get("side_data_list", []) if "rotation" in d]
    degrees = -float(matrix[0]["rotation"]) if matrix else float(stream.get("tags", {}).get("rotate", 0))
    rotation = round(degrees) % 360
    if rotation % 90:
        raise DataError(f"unsupported rotation of {rotation} degrees (only multiples of 90)")
    return rotation


def _probe_failure_reason(path: str, stderr: str) -> str:
    """Turn ffprobe's complaint about a file into a reason a person understands."""
    lines = [line.replace(f"{file_url(path)}: ", "") for line in stderr.splitlines()]
    if "moov atom not found" in stderr:
        with open(path, "rb") as handle:
            head = handle.read(8)
        if head[4:8] in _MP4_FIRST_BOXES:
            return "truncated or corrupt video (moov atom not found)"
        return "not a video file (unrecognised data)"
    if "Invalid data found when processing input" in stderr:
        return "not a video file (unrecognised data)"
    return f"unreadable video ({summarise_ffmpeg_log(lines) or 'ffprobe failed'})"
