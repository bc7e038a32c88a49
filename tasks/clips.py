"""Cutting a stream of decoded frames into fixed-length clips without holding the video."""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable, Iterator
from typing import TypeVar

FrameT = TypeVar("FrameT")


def cut_clips(frames: Iterable[FrameT], length: int, stride: int) -> Iterator[list[FrameT]]:
    """Yield windows of `length` consecutive frames whose starts are `stride` frames apart.

    Only the current window is kept in memory. A tail shorter than `length` is dropped.
    """
    window: deque[FrameT] = deque(maxlen=length)
    skip = 0  # frames still to drop before the next window may start (stride > length)
    for frame in frames:
        if skip:
            skip -= 1
            continue
        window.append(frame)
        if len(window) == length:
            yield list(window)
            if stride >= length:
                window.clear()
                skip = stride - length
            else:
                for _ in range(stride):
                    window.popleft()


def cut_scene_clips(scenes: Iterable[tuple[int, FrameT]], length: int,
                    stride: int) -> Iterator[tuple[int, list[FrameT]]]:
    """Yield (scene index, clip): `cut_clips` within each run of frames of one scene, so no clip straddles a cut.

    Windows start afresh at every scene's first frame; a scene's tail shorter than `length` is dropped.
    """
    for scene, run in itertools.groupby(scenes, key=lambda item: item[0]):
        for clip in cut_clips((frame for _, frame in run), length, stride):
            yield scene, clip
