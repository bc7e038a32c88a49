"""Probing and decoding: facts, bad-input reasons, frame rates, geometry, rotation and process hygiene."""

import subprocess
from pathlib import Path

import ffmpeg
import numpy as np
import pytest
from pydantic import ValidationError

from data_specs.video import DecodeConfig
from tasks.errors import DataError
from tasks.media import Frame, check_decodable, file_url, find_ffmpeg, iter_frames, probe_video
from tasks.synthetic import COLOURS, HAT, load_truth, write_portrait_video


def decode(path: Path, start_s: float = 0.0, end_s: float | None = None, **cfg) -> list[Frame]:
    """All frames of a video under DecodeConfig(**cfg), 32 px unless told."""
    config = DecodeConfig(**{"size": 32, **cfg})
    return list(iter_frames(str(path), probe_video(str(path)), config, start_s, end_s))


@pytest.fixture
def spawned(monkeypatch: pytest.MonkeyPatch) -> list[subprocess.Popen]:
    """Every process started during the test."""
    processes = []

    class RecordingPopen(subprocess.Popen):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            processes.append(self)

    monkeypatch.setattr(subprocess, "Popen", RecordingPopen)
    return processes


# --- finding ffmpeg ---------------------------------------------------------------------------


def test_find_ffmpeg_honours_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "my-ffmpeg"
    fake.touch()
    monkeypatch.setenv("DURIAN_FFMPEG", str(fake))
    assert find_ffmpeg()[0] == str(fake)

    monkeypatch.setenv("DURIAN_FFPROBE", str(tmp_path / "missing"))
    with pytest.raises(RuntimeError, match="ffprobe not found.*bootstrap"):
        find_ffmpeg()


# --- probing --------------------------------------------------------------------------------


def test_probe_reads_the_facts(portrait: Path) -> None:
    probe = probe_video(str(portrait))
    assert (probe.width, probe.height, probe.coded_width, probe.coded_height) == (96, 64, 96, 64)
    assert probe.fps == 24.0 and not probe.variable_fps
    assert probe.duration_s == pytest.approx(1.0, abs=0.01)
    assert probe.num_frames == 24
    assert (probe.rotation, probe.codec, probe.pix_fmt, probe.has_audio) == (0, "h264", "yuv420p", False)
    assert probe.size_bytes == portrait.stat().st_size


def test_probe_reports_display_size_of_rotated_video(edge_cases: dict[str, Path]) -> None:
    probe = probe_video(str(edge_cases["rotated"]))
    assert probe.rotation == 90
    assert (probe.coded_width, probe.coded_height) == (96, 64)
    assert (probe.width, probe.height) == (64, 96)


def test_probe_flags_variable_frame_rate(edge_cases: dict[str, Path]) -> None:
    probe = probe_video(str(edge_cases["variable_fps"]))
    assert probe.variable_fps
    assert probe.fps < 20  # the frames slow down, so the average is below the base 24 fps


def test_probe_sees_audio(tmp_path: Path) -> None:
    path = tmp_path / "with_audio.mp4"
    video = ffmpeg.input("testsrc=size=64x64:rate=10:duration=0.5", format="lavfi")
    audio = ffmpeg.input("sine=duration=0.5", format="lavfi")
    ffmpeg.output(video, audio, file_url(path), pix_fmt="yuv420p").run(cmd=find_ffmpeg()[0], quiet=True)
    assert probe_video(str(path)).has_audio


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("zero_byte", "file is empty (0 bytes)"),
        ("truncated", "truncated or corrupt video (moov atom not found)"),
        ("random_bytes", "not a video file (unrecognised data)"),
        ("audio_only", "no video stream (audio only)"),
    ],
)
def test_probe_explains_bad_files(edge_cases: dict[str, Path], name: str, reason: str) -> None:
    with pytest.raises(DataError) as error:
        probe_video(str(edge_cases[name]))
    assert str(error.value) == reason


def test_probe_explains_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="^file not found$"):
        probe_video(str(tmp_path / "nothing.mp4"))


def test_large_source_is_rejected_by_config(edge_cases: dict[str, Path]) -> None:
    probe = probe_video(str(edge_cases["large"]))
    assert (probe.width, probe.height) == (4104, 4104)
    with pytest.raises(DataError, match=r"above the limit of 16777216 pixels \(DecodeConfig.max_source_pixels\)"):
        check_decodable(probe, DecodeConfig())
    with pytest.raises(DataError, match="max_source_pixels"):
        next(iter_frames(str(edge_cases["large"]), probe, DecodeConfig()))
    check_decodable(probe, DecodeConfig(max_source_pixels=4104 * 4104))


@pytest.mark.parametrize(
    ("field", "value"), [("threads", 0), ("size", 8), ("jpeg_quality", 101), ("fps", 0), ("crop", "stretch")]
)
def test_decode_config_names_bad_fields(field: str, value: object) -> None:
    with pytest.raises(ValidationError, match=field):
        DecodeConfig(**{field: value})


# --- decoding -------------------------------------------------------------------------------


def test_frames_keep_source_rate(portrait: Path) -> None:
    frames = decode(portrait)
    assert [f.index for f in frames] == list(range(24))
    assert [f.time_s for f in frames] == pytest.approx([i / 24 for i in range(24)])
    assert all(f.image.shape == (32, 32, 3) and f.image.dtype == np.uint8 for f in frames)
    assert frames[0].image.flags.writeable


@pytest.mark.parametrize("fps", [10.0, 30.0])
def test_fps_resampling_gives_duration_times_rate(portrait: Path, fps: float) -> None:
    frames = decode(portrait, fps=fps)
    assert abs(len(frames) - fps * 1.0) <= 1
    assert frames[1].time_s == pytest.approx(1 / fps)


def test_time_range_is_trimmed_accurately(portrait: Path) -> None:
    whole = decode(portrait)
    part = decode(portrait, start_s=0.25, end_s=0.75)
    assert abs(len(part) - 12) <= 1
    assert part[0].time_s == pytest.approx(0.25)
    # The first frame of the range is the source frame at 0.25 s, not the keyframe before it.
    assert np.array_equal(part[0].image, whole[6].image)


def test_range_past_the_end_is_a_data_error(portrait: Path) -> None:
    with pytest.raises(DataError, match=r"^no frames decoded between 5 s and the end \(video is 1 s\)$"):
        decode(portrait, start_s=5.0)


def test_variable_rate_source_is_resampled_to_its_average_rate(edge_cases: dict[str, Path]) -> None:
    probe = probe_video(str(edge_cases["variable_fps"]))
    frames = decode(edge_cases["variable_fps"])
    # The source slows from 24 to ~6 fps: at the average rate the late frames repeat.
    repeats = sum(np.array_equal(a.image, b.image) for a, b in zip(frames, frames[1:]))
    assert len(frames) > probe.num_frames and repeats >= 3
    assert frames[1].time_s == pytest.approx(1 / probe.fps)


@pytest.mark.parametrize("fps", [None, 10.0])
def test_one_frame_video_gives_one_frame(edge_cases: dict[str, Path], fps: float | None) -> None:
    assert len(decode(edge_cases["one_frame"], fps=fps)) == 1


def test_center_crop_and_pad(portrait: Path) -> None:
    # The 96 x 64 source is scaled to 48 x 32 when padded: 8 black rows above and below.
    padded = decode(portrait, size=48, crop="pad")[0].image.astype(int)
    assert padded[:7].max() < 10 and padded[-7:].max() < 10
    assert padded[9:-9].mean() > 50
    cropped = decode(portrait, size=48, crop="center")[0].image.astype(int)
    assert cropped[:3].mean() > 50 and cropped[-3:].mean() > 50


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotated_video_is_decoded_upright(tmp_path: Path, rotation: int) -> None:
    video = {"seed": 5, "num_frames": 3, "width": 64, "height": 96}
    path = write_portrait_video(tmp_path / "rotated.mp4", rotation=rotation, **video)
    assert probe_video(str(path)).rotation == rotation
    # Display 64 x 96 fits 96 x 96 with 16 black columns either side: columns 16..80 are the frame.
    frames, upright = (
        np.stack([f.image for f in decode(p, size=96, crop="pad")]).astype(int)
        for p in (path, write_portrait_video(tmp_path / "upright.mp4", **video))
    )
    assert np.abs(frames - upright).mean() < 3  # a frame turned the wrong way differs by ~14
    red = np.abs(frames[:, :, 16:80] - COLOURS[HAT]).sum(axis=3) < 60
    hat = load_truth(path)["masks_hat"]
    assert ((red & hat).sum(axis=(1, 2)) / (red | hat).sum(axis=(1, 2)) > 0.6).all()  # the hat is where truth says


def test_threads_are_passed_to_decoder_and_filters(portrait: Path, spawned: list[subprocess.Popen]) -> None:
    decode(portrait, threads=2)
    args = spawned[-1].args
    input_options = args[: args.index("-i")]
    assert input_options[input_options.index("-threads") + 1] == "2"
    assert args[args.index("-filter_complex_threads") + 1] == "2"


def test_closing_early_kills_and_reaps_ffmpeg(portrait: Path, spawned: list[subprocess.Popen]) -> None:
    # 256 px frames overflow the pipe buffer, so ffmpeg is still writing when we stop.
    frames = iter_frames(str(portrait), probe_video(str(portrait)), DecodeConfig(size=256))
    next(frames)
    (process,) = [p for p in spawned if p.args[0] == find_ffmpeg()[0]]
    assert process.poll() is None
    frames.close()
    assert process.returncode is not None  # reaped: no zombie left
    assert process.stdout.closed and process.stderr.closed


def test_cut_stream_yields_only_frames_before_the_cut_then_a_data_error(edge_cases: dict[str, Path]) -> None:
    path = edge_cases["truncated_stream"]
    received = []
    with pytest.raises(DataError, match=r"^decode failed after \d+ frames: Invalid NAL unit size") as error:
        for frame in iter_frames(str(path), probe_video(str(path)), DecodeConfig(size=32)):
            received.append(frame)
    # The file is cut in its fourth packet (the third frame shown), which used to come out concealed;
    # ffmpeg now stops there, losing the good frames it still held for reordering (tests/tasks/test_damaged_video.py).
    assert len(received) <= 2
    assert f"after {len(received)} frames" in str(error.value)


def test_unusual_file_names_work(edge_cases: dict[str, Path], tmp_path: Path, portrait: Path) -> None:
    colon = tmp_path / "12:30 take 2.mp4"  # ffmpeg would read "12:" as a protocol
    colon.write_bytes(portrait.read_bytes())
    assert len(decode(colon)) == 24
    assert len(decode(edge_cases["spaces and ünïcode name"])) == 24
