"""Cutting a stream of decoded frames into fixed-length clips without holding the video."""

from __future__ import annotations

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
