"""References from across the scene: the candidate pool, pairs drawn from it at a distance from the targets."""

from __future__ import annotations

import re

import numpy as np
import pytest

from data_specs.perception import PerceptionMeta
from data_specs.sample import ClipSample
from data_specs.training_samples import PairConfig, TrainingSamplesConfig
from tasks.errors import DataError
from tasks.media import Frame
from tasks.samples.pairs import clip_rng
from tasks.samples.scene_references import ReferencePool, ReferencePools, plan_pool_pairs, with_references
from tasks.scenes import SceneSample
from tests.samples.samples_testing import perceived_clip, sample_processor

FPS = 25.0
PAIRS = PairConfig(pairs_per_clip=4, frames=4, frame_stride=2, min_ref_distance=3, seed=7,
                   references={"scope": "scene", "min_gap_s": 0.4})


def part(scene: ClipSample, positions: list[int], key: str) -> ClipSample:
    """Frames `positions` of a perceived clip as a clip of their own (a clip of the scene, or one candidate)."""
    meta, perception = scene.meta, scene.meta.perception
    picked = PerceptionMeta(keypoint_layout=perception.keypoint_layout,
                            crop_boxes=[perception.crop_boxes[p] for p in positions],
                            presence={a: [flags[p] for p in positions] for a, flags in perception.presence.items()},
                            provenance=perception.provenance)
    return ClipSample(key=key, meta=meta.model_copy(update={
        "frame_indices": [meta.frame_indices[p] for p in positions], "time_s": [meta.time_s[p] for p in positions],
        "perception": picked}), frames=scene.frames[positions], keypoints=scene.keypoints[positions],
        landmarks=scene.landmarks[positions], pose_frames=scene.pose_frames[positions],
        masks={a: m[positions] for a, m in scene.masks.items()})


@pytest.fixture
def scene() -> ClipSample:
    """40 frames (1.6 s at 25 fps) of one scene; the hat is visible in frames 30-39 only."""
    return perceived_clip(frames=40, hat_frames=tuple(range(30, 40)), key="vid_c00000")


def pool_of(scene: ClipSample, positions: list[int]) -> ReferencePool:
    return ReferencePool(0, [part(scene, [p], f"vid_ref{p}") for p in positions], drawn=len(positions))


def test_references_come_from_the_pool_far_from_every_target(scene: ClipSample):
    clip = part(scene, list(range(14, 26)), "vid_c00001")
    positions = [0, 3, 6, 12, 20, 33, 36, 39]
    pool = pool_of(scene, positions)
    for stage in (1, 2):
        plans = plan_pool_pairs(clip, pool, PAIRS, stage, clip_rng(7, clip.key, stage))
        assert plans == plan_pool_pairs(clip, pool, PAIRS, stage, clip_rng(7, clip.key, stage))
        assert plans != plan_pool_pairs(clip, pool, PAIRS, stage, clip_rng(8, clip.key, stage))
        assert len(plans) == 4 and {p.attribute for p in plans} == {"hair", "hat"}  # attributes take turns
        for plan in plans:
            targets = np.array(plan.targets)
            assert len(targets) == (1 if stage == 1 else 4) and targets.max() < len(clip.frames)
            if stage == 2:
                assert list(np.diff(targets)) == [2, 2, 2]
            target_times = np.array(clip.meta.time_s)[targets]
            refs = [positions[plan.attribute_ref - len(clip.frames)], positions[plan.portrait_ref - len(clip.frames)]]
            for ref in refs:
                assert np.abs(scene.meta.time_s[ref] - target_times).min() >= 0.4 - 1e-9
            assert abs(refs[0] - refs[1]) >= PAIRS.min_ref_distance
            assert scene.meta.perception.presence[plan.attribute][refs[0]]


def test_the_extended_clip_holds_the_pool_after_the_clip(scene: ClipSample):
    clip = part(scene, list(range(14, 26)), "vid_c00001")
    pool = pool_of(scene, [0, 39])
    extended = with_references(clip, pool)
    assert extended.key == clip.key and len(extended.frames) == 14
    np.testing.assert_array_equal(extended.frames[12], scene.frames[0])
    np.testing.assert_array_equal(extended.masks["hat"][13], scene.masks["hat"][39])
    np.testing.assert_array_equal(extended.landmarks[13], scene.landmarks[39])
    assert extended.meta.frame_indices[12:] == [100, 139] and extended.meta.time_s[13] == scene.meta.time_s[39]
    assert extended.meta.perception == clip.meta.perception


@pytest.mark.parametrize(("positions", "reason"), [
    ([], "no reference candidate: 0 of 0 reference candidate"),
    ([16, 18, 21], "no reference 0.4 s from the targets (pairs.references.min_gap_s) with hair visible: "
                   "the clip spans 0.56-1.00 s, the candidates lie at 0.64, 0.72, 0.84 s"),
])
def test_a_clip_without_a_far_enough_reference_is_a_data_error(scene: ClipSample, positions, reason):
    clip = part(scene, list(range(14, 26)), "vid_c00001")
    with pytest.raises(DataError, match=re.escape(reason)):
        plan_pool_pairs(clip, pool_of(scene, positions), PAIRS, 1, clip_rng(0, clip.key))


def test_pools_are_perceived_once_per_scene_and_only_when_asked(scene: ClipSample):
    perceived = []

    def perceive(frame: Frame, scene_index: int | None) -> ClipSample:
        perceived.append(frame.index)
        if frame.index == 2:
            raise DataError("no face: none detected in any of the 1 frames")
        return part(scene, [frame.index], f"vid_ref{frame.index}")

    def frames(*indices: int) -> tuple[Frame, ...]:
        return tuple(Frame(i, i / FPS, np.zeros((2, 2, 3), np.uint8)) for i in indices)

    samples = iter([SceneSample(0, 0, 9, frames(1, 2, 5)), SceneSample(1, 10, 19, frames(12)),
                    SceneSample(2, 20, 29, frames(22, 28))])
    pools = ReferencePools(samples, perceive)
    assert perceived == []
    first = pools.for_scene(0)
    assert pools.for_scene(0) is first and perceived == [1, 2, 5]
    assert [c.meta.frame_indices[0] for c in first.candidates] == [101, 105] and first.drawn == 3
    assert first.rejected == ["frame 2: no face: none detected in any of the 1 frames"]
    assert "2 of 3 reference candidate(s) of scene 0 perceived (first rejection: frame 2" in first.describe()
    assert [c.meta.frame_indices[0] for c in pools.for_scene(2).candidates] == [122, 128]  # scene 1: never asked
    assert perceived == [1, 2, 5, 22, 28]
    with pytest.raises(RuntimeError, match="found no scene 3"):
        pools.for_scene(3)


def test_the_processor_builds_pairs_from_the_scene_and_records_the_gap(scene: ClipSample):
    config = TrainingSamplesConfig(pairs=PAIRS, augment={"enabled": False}, expansion={"mode": "none"})
    clip = part(scene, list(range(14, 26)), "vid_c00001")
    clip.meta = clip.meta.model_copy(update={"scene_index": 3})
    positions = [0, 3, 6, 33, 36, 39]
    processor = sample_processor(config)
    samples = processor(clip, pool_of(scene, positions))
    assert len(samples) == 2 * PAIRS.pairs_per_clip
    for sample in samples:
        meta = sample.meta
        assert meta.scene_index == 3 and meta.reference_scope == "scene"
        for ref in (meta.attribute_ref, meta.portrait_ref):
            assert ref.position is None and ref.frame_index - 100 in positions
            assert ref.time_s == scene.meta.time_s[ref.frame_index - 100]
            target_times = [scene.meta.time_s[i - 100] for i in meta.target_frame_indices]
            assert ref.gap_s == pytest.approx(min(abs(ref.time_s - t) for t in target_times)) and ref.gap_s >= 0.4
        assert meta.reference_gap_s == min(meta.attribute_ref.gap_s, meta.portrait_ref.gap_s)
        np.testing.assert_array_equal(sample.portrait_image, scene.frames[meta.portrait_ref.frame_index - 100])
        attribute_mask = scene.masks[meta.attribute][meta.attribute_ref.frame_index - 100]
        np.testing.assert_array_equal(sample.attribute_ref,
                                      scene.frames[meta.attribute_ref.frame_index - 100] * attribute_mask[..., None])
        np.testing.assert_array_equal(sample.targets, clip.frames[meta.target_positions])
    with pytest.raises(ValueError, match="scope 'scene' draws references from the scene's pool"):
        processor(clip)
