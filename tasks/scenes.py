"""Scene detection on the decoded frames, streamed, and the bounded sample of a scene's frames.

`split_scenes` feeds small copies (`scenes.analysis_side`) of the frames the unit decodes anyway
to PySceneDetect's `AdaptiveDetector` or `ContentDetector` (their `process_frame(timecode,
bgr_frame)` API takes frames from any source) and yields every frame with its scene's index. A detector names a cut up
to `event_buffer_length` frames after it has seen it, so frames are held back that long: memory
stays at a few frames (`scenes.min_scene_s` seconds with the content detector), never the video.

`sample_scene_frames` keeps a uniform, seeded sample of at most K frames per scene (or per video):
bottom-k by a random key drawn per frame in order from a generator of (seed, video, scene), so the
sample depends on the video and the seed alone, and K frames are held at a time.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import cv2
import numpy as np
from scenedetect import FrameTimecode
from scenedetect.detector import SceneDetector
from scenedetect.detectors import AdaptiveDetector, ContentDetector

from data_specs.scenes import SceneConfig
from tasks.media import Frame


def scene_detector(config: SceneConfig, rate: float) -> SceneDetector | None:
    """The configured PySceneDetect detector for frames at `rate` per second; None for `detector: none`."""
    # In frames, not seconds: a length in seconds makes the detectors hold 240 frames per second of it.
    min_scene_len = round(config.min_scene_s * rate)
    if config.detector == "content":
        return ContentDetector(threshold=config.threshold, min_scene_len=min_scene_len)
    if config.detector == "adaptive":
        return AdaptiveDetector(adaptive_threshold=config.adaptive_threshold, min_scene_len=min_scene_len,
                                min_content_val=config.min_content_val)
    return None


def analysis_frame(image: np.ndarray, side: int) -> np.ndarray:
    """The BGR copy of an RGB frame a detector sees: scaled down to `side` on the longer side."""
    height, width = image.shape[:2]
    scale = side / max(height, width)
    if scale < 1:
        # Bilinear, as PySceneDetect's own SceneManager downscales: area averaging costs 17 ms a 1080p frame.
        image = cv2.resize(image, (max(1, round(width * scale)), max(1, round(height * scale))),
                           interpolation=cv2.INTER_LINEAR)
    return cv2.cvtColor(image, cv2.COLOR_RGB2BGR)


def split_scenes(frames: Iterable[Frame], config: SceneConfig, rate: float) -> Iterator[tuple[int, Frame]]:
    """Yield (scene index, frame) for every frame, in order; scene 0 starts at the first frame.

    `frame.index` must count up by one from the first frame (as `tasks.media.iter_frames` yields them).
    """
    rate = float(rate)  # FrameTimecode refuses an int rate
    detector = scene_detector(config, rate)
    if detector is None:
        for frame in frames:
            yield 0, frame
        return
    lag = detector.event_buffer_length
    pending: deque[Frame] = deque()
    cuts: list[int] = []  # frame indices that start a new scene, not yet reached by the output
    scene = 0

    def release(until: int) -> Iterator[tuple[int, Frame]]:
        nonlocal scene
        while pending and pending[0].index <= until:
            frame = pending.popleft()
            while cuts and cuts[0] <= frame.index:
                cuts.pop(0)
                scene += 1
            yield scene, frame

    last = None
    for frame in frames:
        found = detector.process_frame(FrameTimecode(frame.index, rate), analysis_frame(frame.image,
                                                                                           config.analysis_side))
        cuts = sorted({*cuts, *(timecode.frame_num for timecode in found)})
        pending.append(frame)
        last = frame.index
        # No cut can still be named at or before `last - lag`.
        yield from release(last - lag)
    if last is not None:
        cuts = sorted({*cuts, *(timecode.frame_num for timecode in detector.post_process(FrameTimecode(last, rate)))})
    yield from release(last if last is not None else -1)


@dataclass(frozen=True)
class SceneSample:
    """A scene's (or a whole video's) sampled frames.

    Attributes:
        scene_index: the scene's index in the video; None when the sample spans the whole video.
        first_index, last_index: the output-frame indices the scene (or video) spans, both included.
        frames: at most K frames, in frame order.
    """

    scene_index: int | None
    first_index: int
    last_index: int
    frames: tuple[Frame, ...]


def sample_scene_frames(scenes: Iterable[tuple[int, Frame]], k: int,
                        rng_for: Callable[[int | None], np.random.Generator],
                        whole_video: bool = False) -> Iterator[SceneSample]:
    """Yield each scene's `SceneSample` (one for the whole video with `whole_video`) as soon as it ends.

    rng_for(scene index, or None for the whole video): the generator of that sample's random keys.
    """
    current: int | None = None
    heap: list[tuple[float, int, Frame]] = []  # (-key, index, frame): the k smallest keys, largest on top
    first = last = -1
    rng: np.random.Generator | None = None

    def done() -> SceneSample:
        kept = sorted((frame for _, _, frame in heap), key=lambda frame: frame.index)
        return SceneSample(None if whole_video else current, first, last, tuple(kept))

    for scene, frame in scenes:
        group = None if whole_video else scene
        if rng is None or group != current:
            if rng is not None:
                yield done()
            current, heap, first, rng = group, [], frame.index, rng_for(group)
        last = frame.index
        key = float(rng.random())
        if len(heap) < k:
            heapq.heappush(heap, (-key, frame.index, frame))
        elif key < -heap[0][0]:
            heapq.heapreplace(heap, (-key, frame.index, frame))
    if rng is not None:
        yield done()
