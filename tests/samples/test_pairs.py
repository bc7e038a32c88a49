"""Pair sampling, mask expansion, complementary masking and augmentation, on a hand-made perceived clip."""

from __future__ import annotations

import numpy as np
import pytest

from data_specs.sample import PairSample, decode_sample, encode_sample
from data_specs.training_samples import AugmentConfig, PairConfig, TrainingSamplesConfig
from tasks.errors import DataError
from tasks.samples import augment
from tasks.samples.expansion import dilate_erode
from tasks.samples.pairs import clip_rng, plan_pairs
from tests.samples.samples_testing import perceived_clip, sample_processor

# References from the clip itself: these tests look at one clip (scene references: test_scene_references.py).
PAIRS = PairConfig(pairs_per_clip=3, frames=4, frame_stride=2, min_ref_distance=5, seed=7, references={"scope": "clip"})


def test_pairs_keep_their_distance_are_deterministic_and_counted():
    presence = {"hair": np.ones(12, bool), "hat": np.zeros(12, bool)}
    for stage in (1, 2):
        pairs = plan_pairs(12, presence, PAIRS, stage, clip_rng(7, "k", stage))
        assert len(pairs) == PAIRS.pairs_per_clip
        assert pairs == plan_pairs(12, presence, PAIRS, stage, clip_rng(7, "k", stage))
        assert pairs != plan_pairs(12, presence, PAIRS, stage, clip_rng(8, "k", stage))
        for pair in pairs:
            assert abs(pair.attribute_ref - pair.portrait_ref) >= PAIRS.min_ref_distance
            assert pair.attribute == "hair"  # never an attribute that is not visible
            if stage == 1:
                assert len(pair.targets) == 1 and pair.targets[0] not in (pair.attribute_ref, pair.portrait_ref)
            else:
                assert list(pair.targets) == list(range(pair.targets[0], pair.targets[0] + 7, 2))
                assert pair.targets[-1] < 12


def test_attributes_take_turns_and_the_attribute_reference_shows_its_attribute():
    presence = {"hair": np.ones(12, bool), "hat": np.arange(12) >= 8}
    pairs = plan_pairs(12, presence, PAIRS.model_copy(update={"pairs_per_clip": 4}), 1, clip_rng(0, "k"))
    assert {p.attribute for p in pairs} == {"hair", "hat"}
    assert all(p.attribute_ref >= 8 for p in pairs if p.attribute == "hat")


@pytest.mark.parametrize(("frames", "presence", "reason"), [
    (3, {"hair": np.ones(3, bool)}, "clip too short"),
    (12, {"hair": np.zeros(12, bool), "hat": np.zeros(12, bool)}, "no attribute visible"),
    (7, {"hair": np.arange(7) == 3}, "no two frames 5 apart"),
])
def test_clips_that_cannot_give_pairs_are_data_errors(frames, presence, reason):
    with pytest.raises(DataError, match=reason):
        plan_pairs(frames, presence, PAIRS, 2, clip_rng(0, "k"))


def test_dilation_grows_the_mask_and_the_union_contains_it():
    mask = np.zeros((40, 40), bool)
    mask[15:25, 15:25] = True
    grown = dilate_erode(mask, 4, 1)
    assert grown[mask].all() and grown.sum() > mask.sum()


@pytest.mark.parametrize("fill", ["constant", "reflect"])
def test_recorded_augmentation_reproduces_the_reference(fill):
    config = TrainingSamplesConfig(pairs=PAIRS, augment=AugmentConfig(fill=fill, fill_value=(10, 200, 30)))
    clip = perceived_clip()
    samples = sample_processor(config)(clip)
    assert len(samples) == 2 * PAIRS.pairs_per_clip
    for sample in samples:
        meta = sample.meta
        attribute_mask = clip.masks[meta.attribute][meta.attribute_ref.position]
        reference = augment.apply(clip.frames[meta.attribute_ref.position], attribute_mask,
                                  meta.attribute_ref.augmentation, augment.ATTRIBUTE)
        np.testing.assert_array_equal(reference.mask, sample.attribute_mask)
        np.testing.assert_array_equal(reference.image, sample.attribute_ref)
        # The portrait reference replays from M_port_train (M_attr grown by the recorded radii).
        mask = clip.masks[meta.attribute][meta.portrait_ref.position]
        grown = mask | dilate_erode(mask, meta.expansion.dilate_px, meta.expansion.erode_px)
        portrait = augment.apply(clip.frames[meta.portrait_ref.position], grown, meta.portrait_ref.augmentation,
                                 augment.PORTRAIT)
        np.testing.assert_array_equal(portrait.mask, sample.portrait_mask)
        np.testing.assert_array_equal(portrait.image, sample.portrait_ref)
        np.testing.assert_array_equal(portrait.unmasked, sample.portrait_image)
        assert meta.attribute_ref.augmentation.angle_deg != 0 and meta.attribute_ref.augmentation.exposed_area > 0
        # The stored ArcFace points follow the warp: a one-pixel mask at a point lands where the points say.
        point = clip.keypoints[meta.attribute_ref.position, 0, :2]
        dot = np.zeros(attribute_mask.shape, bool)
        dot[int(round(point[1])), int(round(point[0]))] = True
        moved = augment.warp_reference(dot.astype(np.uint8)[..., None].repeat(3, -1), dot,
                                       meta.attribute_ref.augmentation, augment.ATTRIBUTE).mask
        y, x = np.argwhere(moved).mean(axis=0)
        expected = augment.warp_points(np.round(point)[None], meta.attribute_ref.augmentation, dot.shape)[0]
        np.testing.assert_allclose([x, y], expected, atol=1.0)
        np.testing.assert_allclose(sample.attribute_keypoints[0], augment.warp_points(
            point[None], meta.attribute_ref.augmentation, dot.shape)[0], atol=1e-4)


def test_references_are_masked_complementarily():
    config = TrainingSamplesConfig(pairs=PAIRS)  # dilate expansion, augmentation on
    clip = perceived_clip(hat_frames=tuple(range(8, 12)))
    samples = sample_processor(config)(clip)
    assert {s.meta.attribute for s in samples} == {"hair", "hat"}
    for sample in samples:
        meta = sample.meta
        assert not sample.portrait_ref[sample.portrait_mask].any()
        np.testing.assert_array_equal(sample.portrait_ref, sample.portrait_image * ~sample.portrait_mask[..., None])
        assert not sample.attribute_ref[~sample.attribute_mask].any()
        assert sample.attribute_ref[sample.attribute_mask].any()
        # M_port_train contains M_attr of the portrait frame, under the same warp.
        params = meta.portrait_ref.augmentation
        attribute_in_portrait = augment.apply(clip.frames[0], clip.masks[meta.attribute][meta.portrait_ref.position],
                                              params, augment.PORTRAIT).mask
        assert sample.portrait_mask[attribute_in_portrait].all()
        if meta.attribute == "hair":  # the hat is not visible in any frame far enough from a hat frame
            assert meta.expansion.expanded_area > meta.expansion.attribute_area > 0
        assert meta.expansion.mode == "dilate" and meta.expansion.dilate_px > 0


def test_without_augmentation_or_expansion_the_masks_are_the_frames():
    config = TrainingSamplesConfig(pairs=PAIRS, augment={"enabled": False}, expansion={"mode": "none"})
    clip = perceived_clip()
    for sample in sample_processor(config)(clip):
        p, a = sample.meta.portrait_ref.position, sample.meta.attribute_ref.position
        np.testing.assert_array_equal(sample.portrait_mask, clip.masks["hair"][p])
        np.testing.assert_array_equal(sample.attribute_ref, clip.frames[a] * clip.masks["hair"][a][..., None])
        np.testing.assert_array_equal(sample.targets, clip.frames[sample.meta.target_positions])
        np.testing.assert_array_equal(sample.pose_frames, clip.pose_frames[sample.meta.target_positions])
        np.testing.assert_array_equal(sample.portrait_image, clip.frames[p])
        np.testing.assert_allclose(sample.portrait_keypoints, clip.keypoints[p, :, :2], atol=1e-4)  # truth_5: 5
        np.testing.assert_allclose(sample.attribute_keypoints, clip.keypoints[a, :, :2], atol=1e-4)


def test_the_processor_is_deterministic_per_clip():
    config = TrainingSamplesConfig(pairs=PAIRS)
    first = sample_processor(config)(perceived_clip())
    again = sample_processor(config)(perceived_clip())
    other = sample_processor(config)(perceived_clip(key="other_c00000"))
    assert [s.meta for s in first] == [s.meta for s in again]
    assert all(np.array_equal(a.portrait_ref, b.portrait_ref) for a, b in zip(first, again))
    assert [s.meta.attribute_ref for s in first] != [s.meta.attribute_ref for s in other]


def test_a_pair_sample_survives_encoding_and_decoding():
    sample = sample_processor(TrainingSamplesConfig(pairs=PAIRS))(perceived_clip())[-1]
    sample.latents = {"target": np.ones((4, 4, 8, 8), np.float16), "attr_ref": np.zeros((4, 8, 8), np.float16),
                      "port_ref": np.zeros((4, 8, 8), np.float16)}
    encoded = encode_sample(sample, jpeg_quality=95)
    assert sorted(name for name in encoded if name != "__key__") == sorted(sample.field_names())
    decoded = decode_sample(encoded)
    assert isinstance(decoded, PairSample) and decoded.meta == sample.meta and decoded.key == sample.key
    assert decoded.targets.shape == (4, 64, 64, 3) and decoded.pose_frames.shape == (4, 64, 64, 3)
    np.testing.assert_array_equal(decoded.attribute_mask, sample.attribute_mask)
    np.testing.assert_array_equal(decoded.portrait_mask, sample.portrait_mask)
    assert np.abs(decoded.targets.astype(int) - sample.targets).mean() < 4
    assert not decoded.portrait_ref[decoded.portrait_mask].any()  # exact again after JPEG
    assert not decoded.attribute_ref[~decoded.attribute_mask].any()
    np.testing.assert_array_equal(decoded.latents["target"], sample.latents["target"])
    np.testing.assert_array_equal(decoded.keypoints, sample.keypoints)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("attribute_mask", np.zeros((32, 32), bool), "attribute mask must be"),
    ("portrait_mask", np.full((64, 64), 3, np.uint8), "portrait mask must be bool"),
    ("pose_frames", np.zeros((4, 64, 64, 3), np.float32), "pose frames must be uint8"),
])
def test_bad_masks_and_frames_are_refused_at_encoding(field, value, message):
    sample = sample_processor(TrainingSamplesConfig(pairs=PAIRS))(perceived_clip())[-1]
    setattr(sample, field, value)
    with pytest.raises(ValueError, match=message):
        encode_sample(sample, jpeg_quality=90)
