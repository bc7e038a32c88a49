"""Colours as the file says: frames follow the stream's YUV matrix and range, checked against an independent
conversion (ffmpeg's own planes, converted here in float with the published coefficients)."""

import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from data_specs.video import DecodeConfig
from tasks.errors import DataError
from tasks.media import check_decodable, colour_encoding, file_url, find_ffmpeg, iter_frames, probe_video, write_video

# R = Y + a Cr, G = Y - b Cb - c Cr, B = Y + d Cb as the standards print them (BT.601-7, BT.709-6, BT.2020-2,
# SMPTE 240M), on Y in [0, 1] and Cb, Cr in [-0.5, 0.5]: written out, not derived from the code's luma weights.
PUBLISHED = {
    "bt601": (1.402, 0.344136, 0.714136, 1.772),
    "bt709": (1.5748, 0.1873, 0.4681, 1.8556),
    "bt2020": (1.4746, 0.16455, 0.57135, 1.8814),
    "smpte240m": (1.576, 0.2253, 0.4767, 1.826),
}


def colour_chart(width: int, height: int, frames: int = 1) -> np.ndarray:
    """Every hue across the width, from white through saturated to black down the height, plus noise."""
    hue = np.linspace(0, 179, width, dtype=np.float32)[None, :].repeat(height, 0)
    ramp = np.linspace(0, 2, height, dtype=np.float32)[:, None].repeat(width, 1)
    hsv = np.stack([hue, 255 * np.minimum(ramp, 1), 255 * np.minimum(2 - ramp, 1)], axis=-1).astype(np.uint8)
    chart = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).astype(np.int16)
    noise = np.random.default_rng(0).integers(-20, 21, (frames, height, width, 3))
    return np.clip(chart + noise, 0, 255).astype(np.uint8)


def source_planes(path: Path) -> np.ndarray:
    """The stream's own 4:2:0 planes, (frames, H * 3/2, W), as ffmpeg decodes them: no scaling, no conversion."""
    probe = probe_video(str(path))
    command = [find_ffmpeg()[0], "-v", "error", "-i", file_url(path), "-f", "rawvideo", "-"]  # native pix_fmt
    raw = subprocess.run(command, capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, probe.height * 3 // 2, probe.width)


def reference_rgb(planes: np.ndarray, matrix: str, full_range: bool) -> np.ndarray:
    """Float RGB levels of I420 planes, each chroma sample repeated over its 2x2 block."""
    height = planes.shape[0] * 2 // 3
    y = planes[:height].astype(np.float64)
    u, v = (plane.repeat(2, 0).repeat(2, 1) - 128.0 for plane in planes[height:].reshape(2, height // 2, -1))
    y, cb, cr = (y / 255, u / 255, v / 255) if full_range else ((y - 16) / 219, u / 224, v / 224)
    a, b, c, d = PUBLISHED[matrix]
    return 255 * np.stack([y + a * cr, y - b * cb - c * cr, y + d * cb], axis=-1)


def decoded(path: Path, source_size: bool) -> np.ndarray:
    probe = probe_video(str(path))
    config = DecodeConfig(size=probe.width, max_side=max(probe.width, probe.height))
    return np.stack([f.image for f in iter_frames(str(path), probe, config, source_size=source_size)])


@pytest.mark.parametrize(
    ("matrix", "yuv_range", "tagged", "size", "expected_tags"),
    [
        ("bt709", "limited", True, (64, 64), ("bt709", "tv")),
        ("bt601", "limited", True, (64, 64), ("smpte170m", "tv")),
        ("bt601", "full", True, (64, 64), ("smpte170m", "pc")),
        ("bt709", "full", True, (64, 64), ("bt709", "pc")),
        ("bt2020", "limited", True, (64, 64), ("bt2020nc", "tv")),
        ("smpte240m", "limited", True, (64, 64), ("smpte240m", "tv")),
        # Untagged: players take BT.709 for HD (a 9:16 phone frame is HD by its height) and BT.601 below.
        ("bt709", "limited", False, (720, 1280), (None, None)),
        ("bt601", "limited", False, (360, 640), (None, None)),
    ],
)
def test_frames_follow_the_stream_matrix_and_range(
    tmp_path: Path, matrix: str, yuv_range: str, tagged: bool, size: tuple[int, int],
    expected_tags: tuple[str | None, str | None],
) -> None:
    width, height = size
    path = write_video(colour_chart(width, height), tmp_path / "chart.mp4", 10, matrix=matrix, yuv_range=yuv_range,
                       tag_colours=tagged)
    probe = probe_video(str(path))
    assert (probe.color_space, probe.color_range) == expected_tags
    encoding = colour_encoding(probe)
    assert (encoding.matrix, encoding.range) == (matrix, yuv_range)

    planes = source_planes(path)
    expected = np.stack([reference_rgb(p, matrix, yuv_range == "full") for p in planes])
    for source_size in (False, True) if width == height else (True,):
        error = np.abs(decoded(path, source_size).astype(np.float64) - np.clip(expected, 0, 255))
        assert error.mean() < 0.3 and error.max() <= 1.0, (source_size, error.mean(), error.max())
    # The test tells encodings apart: OpenCV's conversion (BT.601, limited range) of the same planes is far off.
    if tagged and (matrix, yuv_range) != ("bt601", "limited"):
        bt601 = np.stack([cv2.cvtColor(p, cv2.COLOR_YUV2RGB_I420) for p in planes]).astype(np.float64)
        assert np.abs(bt601 - np.clip(expected, 0, 255)).max() > 10


def test_letterbox_is_black_in_full_range(tmp_path: Path) -> None:
    path = write_video(colour_chart(64, 32), tmp_path / "wide.mp4", 10, yuv_range="full")
    image = next(iter_frames(str(path), probe_video(str(path)), DecodeConfig(size=64, crop="pad"))).image
    assert image[:14].max() <= 1 and image[-14:].max() <= 1  # 16 padded rows above and below
    assert image[20:44].mean() > 60


def test_unconvertible_matrix_is_a_data_error(tmp_path: Path) -> None:
    path = write_video(colour_chart(32, 32), tmp_path / "ycgco.mp4", 10, tag_colours=False, colorspace="ycgco")
    probe = probe_video(str(path))
    assert probe.color_space == "ycgco"
    with pytest.raises(DataError, match=r"^unsupported colour matrix 'ycgco' \(supported: bt2020nc, bt470bg"):
        check_decodable(probe, DecodeConfig())
