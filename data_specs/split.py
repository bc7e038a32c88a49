"""The train / evaluation split of a dataset, by source video, recorded in the samples manifest.

A video's side is decided by the video alone: a hash of (seed, the sha256 of its bytes) against
`eval_fraction`. So a build that adds videos never moves an existing one, the same video lands on the same
side wherever it is stored (its id includes its path; its content does not), copies of one video never
straddle the split, and every sample of a video (every clip, every pair) is on the same side: no frame of
an evaluation video is ever a training sample. Portrait datasets hold one identity per source video, so
splitting by video is splitting by identity as far as the manifests know.
"""

from __future__ import annotations

import hashlib
from typing import Literal

from pydantic import Field

from data_specs.spec import Spec

__all__ = ["EVAL", "TRAIN", "Split", "SplitConfig", "split_of"]

Split = Literal["train", "eval"]
TRAIN: Split = "train"
EVAL: Split = "eval"


class SplitConfig(Spec):
    """Which source videos are held out for evaluation (and for validation during training)."""

    eval_fraction: float = Field(0.1, ge=0, lt=1, description="Expected share of source videos held out for "
                                 "evaluation; each video is drawn on its own, so small datasets may hold out none.")
    seed: int = Field(0, ge=0, description="Another seed draws another split.")


def split_of(video_key: str, config: SplitConfig) -> Split:
    """The side of one source video, given its content sha256 (or, unknown, its id): `eval` when the hash of
    (seed, key) in [0, 1) is below the fraction."""
    digest = hashlib.sha256(f"{config.seed}\0{video_key}".encode()).digest()
    return EVAL if int.from_bytes(digest[:8], "big") / 2**64 < config.eval_fraction else TRAIN
