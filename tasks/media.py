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

from data_specs.video import DecodeConfig, VideoProbe
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
    )


def check_decodable(probe: VideoProbe, cfg: DecodeConfig) -> None:
    """Raise `DataError` when a probed video is too large to decode under `cfg`."""
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
    source is resampled to its average rate, so `time_s` stays meaningful). Frames are
    yielded as ffmpeg produces them; if the stream turns out to be damaged, the
    generator raises `DataError` after the last good frame, so the caller must treat
    the whole item as failed. Closing the generator early kills and reaps ffmpeg.
    """
    check_decodable(probe, cfg)
    if start_s < 0 or (end_s is not None and end_s <= start_s):
        raise ValueError(f"invalid time range [{start_s}, {end_s})")
    rate = cfg.fps or probe.fps
    frame_size = source_frame_size(probe, cfg) if source_size else (cfg.size, cfg.size)
    process = _decode_graph(path, probe, cfg, start_s, end_s, frame_size, source_size).run_async(
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
    reader = threading.Thread(target=_read_frames, args=(process.stdout, frame_size, ready, stop), daemon=True)
    reader.start()
    index = 0
    try:
        while (image := ready.get()) is not None:
            yield Frame(index=index, time_s=start_s + index / rate, image=image)
            index += 1
        process.wait()
        drain.join()
        # ffmpeg exits 0 after most decode errors (a cut stream, corrupt packets), so any
        # logged error fails the video: damaged frames must not become training data.
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


def _read_frames(stdout: IO[bytes], frame_size: tuple[int, int], ready: queue.Queue, stop: threading.Event) -> None:
    """Read whole I420 frames from ffmpeg, convert them to RGB, put them in `ready`; None ends the stream.

    ffmpeg hands over planar YUV because its own RGB conversion is the slowest part of
    the graph; OpenCV's (same BT.601 limited-range maths) costs a fraction of it.
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
        ready.put(cv2.cvtColor(planes, cv2.COLOR_YUV2RGB_I420))
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
    **output_options,
) -> Path:
    """Encode upright (F, H, W, 3) uint8 RGB frames to a yuv420p video (H.264 by default).

    `rotation` stores the frames turned and says so in the display matrix (as phones do);
    `setpts` rewrites timestamps; other options go to the output. Deterministic: one
    encoder thread makes x264's output independent of the machine's core count.
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
    if setpts:
        stream = stream.filter("setpts", setpts)
    output = stream.output(
        file_url(path), vcodec=codec, pix_fmt="yuv420p", g=max(1, round(fps)), threads=1,
        **_ENCODER_OPTIONS.get(codec, {}), **output_options,
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
    frame_size: tuple[int, int], source_size: bool,
) -> ffmpeg.nodes.OutputStream:
    """The ffmpeg graph for `iter_frames`: seek, trim, rate, scale (and crop or pad), raw YUV out."""
    # Input-side -ss seeks to the keyframe before start_s and decodes up to it (accurate
    # and fast); -t then ends the range. `threads` limits the decoder.
    trim = {"ss": start_s} if start_s else {}
    if end_s is not None:
        trim["t"] = end_s - start_s
    stream = ffmpeg.input(file_url(path), threads=cfg.threads, **trim)  # autorotation is on by default
    if cfg.fps or probe.variable_fps:
        stream = stream.filter("fps", fps=cfg.fps or probe.fps, eof_action="pass")
    size = cfg.size
    if source_size:
        stream = stream.filter("scale", *frame_size, flags="area")
    elif cfg.crop == "center":
        stream = stream.filter("scale", size, size, force_original_aspect_ratio="increase").filter("crop", size, size)
    else:
        stream = stream.filter("scale", size, size, force_original_aspect_ratio="decrease").filter(
            "pad", size, size, "(ow-iw)/2", "(oh-ih)/2"
        )
    # passthrough: the rawvideo muxer would otherwise duplicate frames to a constant rate itself.
    output = stream.output("pipe:", format="rawvideo", pix_fmt="yuv420p", fps_mode="passthrough", an=None, sn=None)
    # ffmpeg-python always writes -filter_complex, whose thread count is a global option.
    return output.global_args(
        "-nostdin", "-hide_banner", "-loglevel", "error", "-filter_complex_threads", str(cfg.threads)
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
