"""The shard sample layout: one encoder and one decoder, read back through real WebDataset."""

import tarfile

import numpy as np
import pytest
import webdataset as wds

from data_specs.sample import ClipMeta, ClipSample, decode_sample, encode_sample


def make_sample(key: str = "vid-0123456789_c00001", frames: int = 3, with_extras: bool = True) -> ClipSample:
    rng = np.random.default_rng(0)
    # Smooth images, so JPEG error stays small and the comparison below is meaningful.
    ramp = np.linspace(0, 255, 32, dtype=np.float32)
    base = (ramp[None, :, None] * 0.5 + ramp[:, None, None] * 0.5).repeat(3, axis=2)
    images = np.stack([np.clip(base + 20 * i, 0, 255) for i in range(frames)]).astype(np.uint8)
    meta = ClipMeta(video_id="vid-0123456789", clip_index=1, frame_indices=list(range(4, 4 + frames)),
                    time_s=[i / 8 for i in range(4, 4 + frames)], fps=8.0, source_path="/v/a b.mp4",
                    content_sha256="ab" * 32, config_hash="c" * 16, code_version="0.1.0+x")
    extras = {}
    if with_extras:
        extras = {"keypoints": rng.random((frames, 5, 3), dtype=np.float32),
                  "masks": {"hair": rng.random((frames, 32, 32)) > 0.5}}
    return ClipSample(key=key, meta=meta, frames=images, **extras)


def test_round_trip_keeps_every_field():
    sample = make_sample()
    decoded = decode_sample(encode_sample(sample, jpeg_quality=95))
    assert decoded.key == sample.key and decoded.meta == sample.meta
    assert decoded.frames.shape == sample.frames.shape and decoded.frames.dtype == np.uint8
    assert np.abs(decoded.frames.astype(int) - sample.frames).mean() < 2.0
    np.testing.assert_array_equal(decoded.keypoints, sample.keypoints)
    np.testing.assert_array_equal(decoded.masks["hair"], sample.masks["hair"])


def test_field_names_match_what_is_encoded():
    sample = make_sample()
    encoded = encode_sample(sample, jpeg_quality=90)
    assert sorted(sample.field_names()) == sorted(set(encoded) - {"__key__"})
    assert "frame.0002.jpg" in encoded and "mask.hair.0000.png" in encoded and "keypoints.npy" in encoded


def test_key_with_a_dot_is_rejected():
    with pytest.raises(ValueError, match="contains a dot"):
        encode_sample(make_sample(key="bad.key"), jpeg_quality=90)


def test_frame_count_must_match_meta():
    sample = make_sample()
    sample.frames = sample.frames[:2]
    with pytest.raises(ValueError, match="one index per frame"):
        encode_sample(sample, jpeg_quality=90)


def test_plain_webdataset_groups_members_into_one_sample(tmp_path):
    path = tmp_path / "s.tar"
    with wds.TarWriter(str(path), encoder=False) as sink:
        sink.write(encode_sample(make_sample("a_c00000"), 90))
        sink.write(encode_sample(make_sample("b_c00000", with_extras=False), 90))
    raw = list(wds.WebDataset(str(path), shardshuffle=False))
    assert [item["__key__"] for item in raw] == ["a_c00000", "b_c00000"]
    decoded = [decode_sample(item) for item in raw]
    assert decoded[1].keypoints is None and decoded[1].masks == {}
    # WebDataset's own decoder understands the extensions too.
    rgb = next(iter(wds.WebDataset(str(path), shardshuffle=False).decode("rgb8")))
    assert rgb["frame.0000.jpg"].shape == (32, 32, 3)
    with tarfile.open(path) as tar:
        names = tar.getnames()
    # Members of a sample are adjacent (TarWriter writes a sample's fields in sorted order).
    assert [name.split(".")[0] for name in names] == ["a_c00000"] * 8 + ["b_c00000"] * 4
