"""The interface of per-clip work: CPU processors inside the unit task, models in long-lived actors.

A *clip processor* (`ClipProcessor`) maps one sample to a list of samples inside the unit task,
on the CPU that decodes and encodes: records in, records out. Most processors return one sample
(perception crops a clip); the training-sample processor returns a clip's K pairs; an empty list
drops the record. A problem with the record's data is raised as `DataError`: the unit
runner records it as a failure row for that record and carries on. Any other exception
ends the record's video, as one failure row naming the error (the unit's other videos are
kept), unless it is infrastructure (I/O, memory, Ray: `tasks.errors.is_infrastructure`),
which propagates, and Ray retries the unit.

A *model* (`ModelSpec`) is whatever a processor needs that is costly to load or wants a GPU:
an object with `setup()` (load the weights) and batched methods over frames. A processor
declares the models it defines in `models` and the models of other processors it calls, by
name, in `requires` (the training-sample processor requires perception's `segmenter`); the
builder (`tasks.build_processors`) checks that every required model is defined. The flow runs
each model in long-lived Ray actors, created and set up once per build and sized from the
model's `Resources` (so a GPU model gets a GPU); without Ray (tests, one machine) it runs
in-process (`tasks.build_processors.LocalModel`). Either way `setup(models)` hands the processor
a proxy per name that forwards attribute calls to the model, so a processor annotates what it
keeps with the model's interface (`self.detector: FaceDetector = models["face_detector"]`)
and calls it as a local object (`self.detector.detect(frames, refs)`).

A processor that needs more of a video than one clip (the training samples' references from
the whole scene) implements `VideoProcessor`: the unit enters `for_video` once per video and
runs that video's clips through what it yields.

Without Prefect or Ray imports here, and no concrete processor: `tasks.build_processors` composes them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from data_specs.sample import ClipSample, Sample
from data_specs.spec import Resources

if TYPE_CHECKING:
    from tasks.media import Frame

__all__ = ["ClipProcessor", "ModelSpec", "Resources", "SceneFrames", "VideoScan", "VideoProcessor"]


@dataclass(frozen=True)
class ModelSpec:
    """A model a processor defines: how to build it (a picklable factory; `setup()` loads it) and what it needs."""

    name: str
    factory: Callable[[], Any]
    resources: Resources
    replicas: int = 1


@runtime_checkable
class ClipProcessor(Protocol):
    name: str
    resources: Resources
    models: tuple[ModelSpec, ...]  # the models this processor defines, by `ModelSpec.name`
    requires: tuple[str, ...]  # the names of models other processors define that this processor calls

    def setup(self, models: Mapping[str, Any]) -> None:
        """Keep the proxies of `models` and `requires` (by name), load light state; once per worker process and build."""

    def __call__(self, sample: Sample) -> list[Sample]:
        """Process one record; raise `DataError` when its data is at fault."""


class SceneFrames(Protocol):
    """A second pass over a video's frames, as (scene index, frame), cut as the clip pass cuts them."""

    def __iter__(self) -> Iterator[tuple[int, Frame]]: ...

    def close(self) -> None:
        """Stop the pass's decoder."""


class VideoScan(Protocol):
    """What the unit offers a `VideoProcessor` of the video whose clips it is cutting."""

    video_id: str

    def scenes(self) -> SceneFrames:
        """The video's range decoded again with the clip pass's settings (frame indices and scenes agree with
        the clip pass); a decode error ends it quietly, since the clip pass meets and records the same error."""

    def through_earlier_processors(self, frame: Frame, scene_index: int | None) -> ClipSample:
        """`frame` as a one-frame clip of its own (never written) through the processors before this one;
        `DataError` when one of them rejects it."""


@runtime_checkable
class VideoProcessor(ClipProcessor, Protocol):
    """A clip processor with per-video state: the unit runs a video's clips through what `for_video` yields."""

    def for_video(self, video: VideoScan) -> AbstractContextManager[Callable[[Sample], list[Sample]]]:
        """The processor as it processes this video's clips, for the duration of the video."""
