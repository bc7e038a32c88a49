"""Writing frames to an mp4 with the ffmpeg binary (through ffmpeg-python)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import ffmpeg
import numpy as np


def ffmpeg_binary() -> str:
    """The ffmpeg on PATH, else the one installed beside this Python (a venv's bin/)."""
    found = shutil.which("ffmpeg") or shutil.which("ffmpeg", path=str(Path(sys.executable).parent))
    if found is None:
        raise FileNotFoundError("no ffmpeg binary on PATH or beside the Python interpreter")
    return found


def write_mp4(frames: np.ndarray, path: str | Path, fps: float = 25.0) -> Path:
    """Encode frames (F, H, W, 3), uint8 or float in [0, 1], as H.264/yuv420p.

    Raw RGB frames are piped to ffmpeg. yuv420p needs even sizes, so odd sizes are
    padded by one pixel.
    """
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        frames = (np.clip(frames, 0, 1) * 255).round().astype(np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (F, H, W, 3), got {frames.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames.shape[1:3]
    process = (
        ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{width}x{height}", framerate=fps)
        .filter("pad", "ceil(iw/2)*2", "ceil(ih/2)*2")
        .output(str(path), vcodec="libx264", pix_fmt="yuv420p", loglevel="error")
        .overwrite_output()
        .run_async(pipe_stdin=True, pipe_stderr=True, cmd=ffmpeg_binary())
    )
    _, stderr = process.communicate(input=frames.tobytes())
    if process.returncode:
        raise RuntimeError(f"ffmpeg failed ({process.returncode}): {stderr.decode(errors='replace')}")
    return path
