"""Nothing damaged reaches a shard: a video corrupted in its middle gives only frames decoded before the damage,
through `iter_frames` and through a whole unit."""

import subprocess
import tarfile
from collections import defaultdict
from pathlib import Path

import ffmpeg
import numpy as np
import pyarrow.parquet as pq
import pytest

from data_specs.sample import decode_sample
from data_specs.units import WorkUnit
from data_specs.video import DecodeConfig
from tasks.errors import DataError
from tasks.media import file_url, find_ffmpeg, iter_frames, probe_video, write_video
from tasks.sources import list_videos
from tasks.unit import run_unit
from tests.conftest import small_config

FRAMES, FPS, SIZE, DAMAGED, BLOCK = 100, 10.0, 128, 53, 4096


@pytest.fixture(scope="module")
def damaged(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, int]:
    """(clean video, the same with a bad block in the data of frame 53, first frame the damage reaches).

    H.264 with B frames and a keyframe every 10 frames, BT.709; textured so that the
    garbage is caught by the decoder. A B frame shown before frame 53 may be decoded after
    it and reference it, so the damage reaches the first frame of those decoded from there on.
    """
    folder = tmp_path_factory.mktemp("damaged")
    rng = np.random.default_rng(3)
    texture = rng.integers(0, 256, (SIZE * 2, SIZE * 2, 3), dtype=np.uint8)
    frames = np.stack([np.roll(texture, (2 * i, 3 * i), axis=(0, 1))[:SIZE, :SIZE] for i in range(FRAMES)])
    clean = write_video(frames, folder / "clean" / "talk.mp4", FPS, matrix="bt709")
    info = ffmpeg.probe(file_url(clean), cmd=find_ffmpeg()[1], show_packets=None, select_streams="v")
    shown = [round(float(packet["pts_time"]) * FPS) for packet in info["packets"]]  # in decoding order
    position = shown.index(DAMAGED)
    packet = info["packets"][position]
    # A bad 4 KiB block from the middle of the frame's data on: garbage where the decoder reads
    # the frame, and where it finds the next packets' lengths.
    start = int(packet["pos"]) + int(packet["size"]) // 2
    data = bytearray(clean.read_bytes())
    data[start: start + BLOCK] = rng.integers(0, 256, BLOCK, dtype=np.uint8).tobytes()
    broken = folder / "broken" / "talk.mp4"
    broken.parent.mkdir()
    broken.write_bytes(bytes(data))
    return clean, broken, min(shown[position:])


def plain_decode(path: Path) -> np.ndarray:
    """What ffmpeg gives without being told to stop at damage: every frame, concealed ones included."""
    raw = subprocess.run([find_ffmpeg()[0], "-v", "quiet", "-i", file_url(path), "-f", "rawvideo", "-pix_fmt",
                          "yuv420p", "-"], capture_output=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, SIZE * SIZE * 3 // 2)


def test_the_damage_is_real_and_plain_ffmpeg_passes_it_on(damaged: tuple[Path, Path, int]) -> None:
    clean, broken, first_damaged = damaged
    good, bad = plain_decode(clean), plain_decode(broken)
    assert len(good) == len(bad) == FRAMES  # concealed, not dropped: what the pipeline used to yield
    differing = [i for i in range(FRAMES) if not np.array_equal(good[i], bad[i])]
    assert first_damaged <= DAMAGED and differing and first_damaged <= differing[0] <= DAMAGED


def test_decoding_stops_before_the_damage(damaged: tuple[Path, Path, int]) -> None:
    clean, broken, first_damaged = damaged
    config = DecodeConfig(size=SIZE)
    reference = [frame.image for frame in iter_frames(str(clean), probe_video(str(clean)), config)]
    received = []
    with pytest.raises(DataError, match=r"^decode failed after \d+ frames: ") as error:
        for frame in iter_frames(str(broken), probe_video(str(broken)), config):
            received.append(frame)
    assert f"after {len(received)} frames" in str(error.value)
    assert [frame.index for frame in received] == list(range(len(received)))
    # Only the frames still held for reordering when ffmpeg stopped are lost.
    assert first_damaged - 8 <= len(received) <= first_damaged
    assert all(np.array_equal(frame.image, reference[frame.index]) for frame in received)


def test_no_sample_holds_a_frame_at_or_after_the_damage(damaged: tuple[Path, Path, int], tmp_path: Path) -> None:
    clean, broken, first_damaged = damaged
    config = small_config(broken.parent, tmp_path / "out", decode={"fps": None, "size": SIZE})
    unit = WorkUnit(unit_id="damaged", fingerprint="0" * 16, videos=tuple(list_videos(config.inputs)))
    report = run_unit(unit, config)
    parts = config.output_path / report.parts_dir
    (video,) = pq.read_table(parts / "videos.parquet").to_pylist()
    assert video["status"] == "partial" and video["frames_decoded"] <= first_damaged
    assert (video["color_space"], video["color_range"], video["yuv_matrix"], video["yuv_range"]) == (
        "bt709", "tv", "bt709", "limited")
    (failure,) = pq.read_table(parts / "failures.parquet").to_pylist()
    assert failure["failed_in"] == "decode" and failure["reason"].startswith("decode failed after")

    fields: dict[str, dict[str, bytes]] = defaultdict(dict)
    for shard in report.shards:
        with tarfile.open(config.output_path / "shards" / shard) as tar:
            for member in tar.getmembers():
                key, extension = member.name.split(".", 1)
                fields[key][extension] = tar.extractfile(member).read()
    samples = [decode_sample({"__key__": key, **raw}) for key, raw in fields.items()]
    # 4-frame clips: all those wholly before the last frames lost to reordering are there.
    assert len(samples) >= (first_damaged - 8) // 4
    reference = [frame.image for frame in iter_frames(str(clean), probe_video(str(clean)), config.decode)]
    for sample in samples:
        assert max(sample.meta.frame_indices) < first_damaged
        for index, image in zip(sample.meta.frame_indices, sample.frames):
            # A JPEG of the clean frame it claims to be (the texture moves: the next frame is ~65 levels off).
            assert np.abs(image.astype(int) - reference[index]).mean() < 16
