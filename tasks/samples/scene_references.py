"""References from across the scene: the perceived candidate pool of each scene, and pairs drawn from it.

The training-sample processor runs a scene pass beside the unit's clip pass
(`TrainingSampleProcessor.for_video`: `tasks.scenes.sample_scene_frames` over the unit's second decode of the
same range, `tasks.base.VideoScan`): at most K frames per scene (or per video) are kept, and the first clip of
a scene that reaches the processor has them perceived as one-frame clips by the processors before it
(`ReferencePools.for_scene`). Each pair then takes its two references from that pool, at least
`pairs.references.min_gap_s` from every one of its targets (`plan_pool_pairs`), with the draws of
`pairs.clip_rng`, so a clip's pairs depend only on the seed, the video and the clip.

Only the current scene's pool is held: the clip pass moves forward through the scenes, and a pool
is dropped once a later scene is asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from data_specs.sample import ClipSample
from data_specs.training_samples import PairConfig
from tasks.errors import DataError, failure_reason
from tasks.media import Frame
from tasks.samples.pairs import PairPlan
from tasks.scenes import SceneSample


@dataclass
class ReferencePool:
    """The perceived reference candidates of one scene (or of the whole video).

    Attributes:
        scene_index: the scene's index in the video; None for a whole-video pool.
        candidates: one-frame perceived clips (crop, masks, keypoints, pose frame), in frame order.
        drawn: candidate frames drawn before perception.
        rejected: why perception rejected the others.
    """

    scene_index: int | None
    candidates: list[ClipSample]
    drawn: int
    rejected: list[str] = field(default_factory=list)

    @property
    def frame_indices(self) -> np.ndarray:
        return np.array([c.meta.frame_indices[0] for c in self.candidates], np.int64)

    @property
    def times(self) -> np.ndarray:
        return np.array([c.meta.time_s[0] for c in self.candidates], np.float64)

    def presence(self, attributes: list[str]) -> dict[str, np.ndarray]:
        """{attribute: (candidates,) bool}: where each attribute is visible."""
        return {a: np.array([bool(c.meta.perception.presence[a][0]) for c in self.candidates], bool)
                for a in attributes}

    def describe(self) -> str:
        where = "the video" if self.scene_index is None else f"scene {self.scene_index}"
        text = f"{len(self.candidates)} of {self.drawn} reference candidate(s) of {where} perceived"
        if self.rejected:
            text += f" (first rejection: {self.rejected[0]})"
        return text


class ReferencePools:
    """The pools of one video's scenes, in scene order, each perceived on first use; a context that ends the
    scene pass.

    samples: the scene pass (`sample_scene_frames`), consumed lazily; perceive: a candidate frame of a
    scene to its perceived one-frame clip, `DataError` when perception rejects it; close: stops the scene
    pass's decoder.
    """

    def __init__(self, samples: Iterator[SceneSample], perceive: Callable[[Frame, int | None], ClipSample],
                 close: Callable[[], None] = lambda: None) -> None:
        self._samples = samples
        self._perceive = perceive
        self._close = close
        self._current: ReferencePool | None = None

    def __enter__(self) -> ReferencePools:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._close()

    def for_scene(self, scene_index: int) -> ReferencePool:
        """The pool of the scene `scene_index` (the video's pool for a whole-video pass); scenes only move on."""
        pool = self._current
        if pool is not None and pool.scene_index in (None, scene_index):
            return pool
        for sample in self._samples:
            if sample.scene_index in (None, scene_index):
                self._current = self._perceived(sample)
                return self._current
        raise RuntimeError(f"the scene pass found no scene {scene_index}: it decodes the same frames as the clip "
                           "pass and must cut them alike")

    def _perceived(self, sample: SceneSample) -> ReferencePool:
        candidates, rejected = [], []
        for frame in sample.frames:
            try:
                candidates.append(self._perceive(frame, sample.scene_index))
            except DataError as err:
                rejected.append(f"frame {frame.index}: {failure_reason(err)}")
        return ReferencePool(sample.scene_index, candidates, len(sample.frames), rejected)


def with_references(clip: ClipSample, pool: ReferencePool) -> ClipSample:
    """The clip with the pool's candidates appended after its frames: position len(clip.frames) + i is candidate i.

    The pair-building steps then index references and targets alike; the meta's frame indices and times
    grow with them (lineage and perception meta stay the clip's).
    """
    parts = [clip, *pool.candidates]
    meta = clip.meta.model_copy(update={
        "frame_indices": [i for part in parts for i in part.meta.frame_indices],
        "time_s": [t for part in parts for t in part.meta.time_s]})

    def joined(name: str) -> np.ndarray | None:
        arrays = [getattr(part, name) for part in parts]
        return None if arrays[0] is None else np.concatenate(arrays)

    return ClipSample(key=clip.key, meta=meta, frames=joined("frames"), keypoints=joined("keypoints"),
                      landmarks=joined("landmarks"), pose_frames=joined("pose_frames"),
                      masks={a: np.concatenate([part.masks[a] for part in parts]) for a in clip.masks})


def plan_pool_pairs(clip: ClipSample, pool: ReferencePool, config: PairConfig, stage: int,
                    rng: np.random.Generator) -> list[PairPlan]:
    """`config.pairs_per_clip` pairs whose references come from `pool`; `DataError` when the clip cannot give them.

    Targets follow the stage rules of `pairs.plan_pairs` (stage 1: one clip frame; stage 2: `frames` frames at
    `frame_stride`). A reference is a candidate at least `references.min_gap_s` from every target of its pair
    (never a target frame itself); the attribute reference shows the attribute; the portrait reference is a
    candidate at least `min_ref_distance` frames from it. Attributes that some placement of the targets can
    serve take turns from a random start, as in `plan_pairs`. References are positions in
    `with_references(clip, pool)`.
    """
    num_frames = len(clip.frames)
    span = config.target_span(stage)
    if num_frames < span:
        raise DataError(f"clip too short: {num_frames} frame(s), a stage-{stage} sample needs {span} "
                        f"(pairs.frames x pairs.frame_stride)")
    if not pool.candidates:
        raise DataError(f"no reference candidate: {pool.describe()}")
    gap = config.references.min_gap_s
    placements = np.arange(num_frames - span + 1)[:, None] + np.arange(0, span, config.frame_stride)  # (P, T)
    target_times = np.asarray(clip.meta.time_s)[placements]
    target_indices = np.asarray(clip.meta.frame_indices)[placements]
    pool_times, pool_indices = pool.times, pool.frame_indices
    gaps = np.abs(pool_times[None, None, :] - target_times[:, :, None]).min(axis=1)  # (P, K)
    is_target = (pool_indices[None, None, :] == target_indices[:, :, None]).any(axis=1)
    eligible = (gaps >= gap - 1e-6) & ~is_target  # 1e-6: times are index / rate, a gap of whole frames is exact
    apart = np.abs(pool_indices[:, None] - pool_indices[None, :]) >= config.min_ref_distance  # (K, K)
    # partners[p, a]: eligible portrait references for the attribute reference a with the targets at p.
    partners = eligible.astype(np.int64) @ apart.T.astype(np.int64)
    presence = pool.presence(sorted(clip.masks))
    usable = {}  # attribute -> (P, K): attribute references that have a portrait reference, per placement
    for attribute, visible in presence.items():
        choices = eligible & visible[None, :] & (partners > 0)
        if choices.any():
            usable[attribute] = choices
    if not usable:
        shown = [a for a, visible in presence.items() if visible.any()]
        clip_times = f"{clip.meta.time_s[0]:.2f}-{clip.meta.time_s[-1]:.2f} s"
        if not shown:
            raise DataError(f"no attribute visible in any reference candidate ({pool.describe()})")
        times = ", ".join(f"{t:.2f}" for t in pool_times)
        raise DataError(f"no reference {gap:g} s from the targets (pairs.references.min_gap_s) with "
                        f"{' or '.join(shown)} visible: the clip spans {clip_times}, the candidates lie at {times} s "
                        f"({pool.describe()})")
    attributes = list(usable)
    start = int(rng.integers(len(attributes)))
    pairs = []
    for index in range(config.pairs_per_clip):
        attribute = attributes[(start + index) % len(attributes)]
        choices = usable[attribute]
        placement = int(rng.choice(np.flatnonzero(choices.any(axis=1))))
        attribute_ref = int(rng.choice(np.flatnonzero(choices[placement])))
        portrait_ref = int(rng.choice(np.flatnonzero(eligible[placement] & apart[attribute_ref])))
        pairs.append(PairPlan(index, attribute, num_frames + attribute_ref, num_frames + portrait_ref,
                              tuple(int(t) for t in placements[placement])))
    return pairs
