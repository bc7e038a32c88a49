"""Which frames of a clip make each self-reconstruction pair (pure; no images touched).

Every draw comes from `clip_rng(seed, clip key, stage)`, so a clip's pairs depend only on the
seed and the clip, never on which worker ran it or in what order.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from data_specs.training_samples import PairConfig
from tasks.errors import DataError


@dataclass(frozen=True)
class PairPlan:
    """One pair: positions within the clip."""

    pair_index: int
    attribute: str
    attribute_ref: int
    portrait_ref: int
    targets: tuple[int, ...]


def clip_rng(seed: int, key: str, *salt: int) -> np.random.Generator:
    """A generator determined by the seed, the clip's key and `salt` (stable across processes and runs)."""
    digest = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    return np.random.default_rng([seed, digest, *salt])


def plan_pairs(num_frames: int, presence: dict[str, np.ndarray], config: PairConfig, stage: int,
               rng: np.random.Generator) -> list[PairPlan]:
    """`config.pairs_per_clip` pairs for a training stage; `DataError` when the clip cannot give them.

    presence: {attribute: (num_frames,) bool}, where each attribute is visible. Attributes take turns
    (from a random start), so a clip showing two attributes gives pairs of both; the attribute
    reference is a frame showing the attribute, the portrait reference any frame at least
    `min_ref_distance` from it. Targets avoid the reference frames when the clip allows it.
    """
    span = config.target_span(stage)
    if num_frames < span:
        raise DataError(f"clip too short: {num_frames} frame(s), a stage-{stage} sample needs {span} "
                        f"(pairs.frames x pairs.frame_stride)")
    visible = {attribute: np.flatnonzero(flags) for attribute, flags in sorted(presence.items())}
    attributes = [attribute for attribute, frames in visible.items() if len(frames)]
    if not attributes:
        raise DataError(f"no attribute visible: the {', '.join(sorted(presence)) or 'attribute'} mask is empty "
                        "in every frame")
    distance = config.min_ref_distance
    usable = [a for a in attributes
              if any(_far_frames(num_frames, int(f), distance).size for f in visible[a])]
    if not usable:
        raise DataError(f"no two frames {distance} apart (pairs.min_ref_distance) with the attribute visible in "
                        f"one of them, in {num_frames} frame(s)")
    start = int(rng.integers(len(usable)))
    pairs = []
    for index in range(config.pairs_per_clip):
        attribute = usable[(start + index) % len(usable)]
        candidates = [int(f) for f in visible[attribute] if _far_frames(num_frames, int(f), distance).size]
        attribute_ref = int(rng.choice(candidates))
        portrait_ref = int(rng.choice(_far_frames(num_frames, attribute_ref, distance)))
        pairs.append(PairPlan(index, attribute, attribute_ref, portrait_ref,
                              _targets(num_frames, config, stage, {attribute_ref, portrait_ref}, rng)))
    return pairs


def _far_frames(num_frames: int, frame: int, distance: int) -> np.ndarray:
    positions = np.arange(num_frames)
    return positions[np.abs(positions - frame) >= distance]


def _targets(num_frames: int, config: PairConfig, stage: int, references: set[int],
             rng: np.random.Generator) -> tuple[int, ...]:
    if stage == 1:
        others = [f for f in range(num_frames) if f not in references]
        return (int(rng.choice(others or range(num_frames))),)
    span = config.target_span(stage)
    start = int(rng.integers(num_frames - span + 1))
    return tuple(range(start, start + span, config.frame_stride))
