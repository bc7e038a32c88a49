"""The train / evaluation split of a dataset, by identity, recorded in the samples manifest.

A video's side is decided by a key alone: a hash of (seed, key) against `eval_fraction`. The key is the
video's `group` when its input manifest gives one, else the sha256 of its bytes. So a build that adds
videos never moves an existing one, every sample of a video (every clip, every pair) is on the same side
(no frame of an evaluation video is ever a training sample), copies of one video never straddle the split,
and with groups, no person or take does either.

Why groups: CelebV-Text, VFHQ and NeRSemble hold many files per person (NeRSemble: 16 cameras per take);
split by file, one person lands on both sides and evaluation measures memorisation. Use as `group`: the
person's id where the dataset has one (CelebV-Text, VFHQ: the identity or source-video id the clips were
cut from; NeRSemble: the participant id, or `participant/take` to keep people but split takes).
"""

from __future__ import annotations

import hashlib
from typing import Literal

from pydantic import Field

from data_specs.spec import Spec

__all__ = ["EVAL", "TRAIN", "Split", "SplitConfig", "split_key", "split_of"]

Split = Literal["train", "eval"]
TRAIN: Split = "train"
EVAL: Split = "eval"
_GROUP_KEY = "group\0"  # starts the split key of a video with a group


class SplitConfig(Spec):
    """Which source videos are held out for evaluation (and for validation during training)."""

    eval_fraction: float = Field(0.1, ge=0, lt=1, description="Expected share of groups (or of source videos without "
                                 "a `group`) held out for evaluation; each is drawn on its own, so small datasets may "
                                 "hold out none.")
    seed: int = Field(0, ge=0, description="Another seed draws another split.")
    eval_groups: tuple[str, ...] = Field((), description="Groups always held out, whatever the draw (a benchmark's "
                                         "fixed test people; the demo's cross-transfer triplets, whose truth must "
                                         "never be trained on).")


def split_of(video_key: str, config: SplitConfig) -> Split:
    """The side of one source video, given its content sha256 (or, unknown, its id): `eval` when the hash of
    (seed, key) in [0, 1) is below the fraction, or its group is one of `eval_groups`."""
    if video_key.startswith(_GROUP_KEY) and video_key.removeprefix(_GROUP_KEY) in config.eval_groups:
        return EVAL
    digest = hashlib.sha256(f"{config.seed}\0{video_key}".encode()).digest()
    return EVAL if int.from_bytes(digest[:8], "big") / 2**64 < config.eval_fraction else TRAIN


def split_key(group: str | None, content_sha256: str | None, video_id: str) -> str:
    """What decides a video's side: its group (every video of it on one side), else its content, else its id."""
    if group:
        return f"{_GROUP_KEY}{group}"  # never equal to a content hash, so a group cannot collide with a video
    return content_sha256 or video_id
