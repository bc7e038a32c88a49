"""The dataset-build configuration: one validated, frozen pydantic model per section.

`BuildConfig` is what a user writes in YAML, what `durian build-dataset` reads and
what the Prefect flow `build-dataset` takes as its parameter. Every field has a
default and a description, unknown fields are rejected, and errors name the field
(`clips.length: Input should be greater than or equal to 1`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from data_specs.perception import PerceptionConfig
from data_specs.scenes import SceneConfig
from data_specs.spec import ConfigError, RayConfig, Resources, Spec, load_spec
from data_specs.split import SplitConfig
from data_specs.training_samples import TrainingSamplesConfig
from data_specs.video import DecodeConfig

__all__ = ["BuildConfig", "ConfigError", "ExecutionConfig", "Resources", "Spec", "parse_config"]

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")


class InputsConfig(Spec):
    """Where the videos come from."""

    source: str = Field(
        description=(
            "A folder of videos, a Parquet or CSV manifest with a `path` column "
            "(optional `start_s`, `end_s`, `video_id`, `group`), or an fsspec URL or glob "
            "(file://, s3://, gs://, ...)."
        )
    )
    extensions: tuple[str, ...] = Field(
        VIDEO_EXTENSIONS, description="File name endings taken as videos when listing a folder or URL."
    )
    protocols: tuple[str, ...] = Field(
        ("file",), description="fsspec protocols a manifest row may name besides the source's own (a plain path is "
        "'file'): a manifest is data that anyone can write, and a row naming another protocol (http, s3, memory, "
        "a chained URL, ...) stops the listing with the row named. Add e.g. 's3' to mix local and remote videos."
    )

    @field_validator("source")
    @classmethod
    def _source_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must name a folder, a manifest or a URL")
        return value


class ClipConfig(Spec):
    """How decoded frames are cut into clips (one clip becomes one shard sample)."""

    length: int = Field(16, ge=1, le=1024, description="Frames per clip, after fps resampling.")
    stride: int = Field(16, ge=1, le=100_000, description="Frames between the starts of consecutive clips.")
    max_clips_per_video: int | None = Field(
        None, ge=1, description="Keep at most this many clips per video (None: all)."
    )


class ShardConfig(Spec):
    """How samples are packed into WebDataset tar shards."""

    samples_per_shard: int = Field(64, ge=1, le=1_000_000, description="Close a shard after this many samples.")
    max_shard_bytes: int = Field(
        1 << 30, ge=1 << 16, description="Close a shard once it holds at least this many bytes."
    )


class ExecutionConfig(RayConfig):
    """Which Ray (the fields every command shares), and how the work is spread over it and retried. Does not
    change the outputs."""

    videos_per_unit: int = Field(
        16, ge=1, le=100_000, description="Average number of videos per unit of work (one Ray task)."
    )
    cpus_per_unit: float = Field(1.0, gt=0, description="CPUs Ray reserves for each unit of work.")
    retries: int = Field(
        2, ge=0, le=10, description="Ray re-runs of a unit whose worker died or raised (not for bad videos)."
    )
    actor_restarts: int = Field(
        3, ge=0, le=100, description="Times a model actor whose process died (OOM, a crash, a lost node) is "
        "restarted and set up again, its calls in flight retried on it; beyond that the units calling it fail.")
    on_error: Literal["record", "raise"] = Field(
        "record",
        description="'record': a bad video becomes a failure row and the run goes on; 'raise': stop at the first.",
    )
    lock_wait_s: float = Field(
        0.0, ge=0, description="How long a build waits for another build of the same output folder to finish "
        "(OUTPUT/build.lock names it) before refusing; 0: refuse at once.")
    lock_stale_after_s: float = Field(
        600.0, ge=5, description="A build lock whose holder has not refreshed it (every tenth of this) for this long "
        "is taken over: its run died on a host this one cannot see. On the holder's own host a dead holder's lock "
        "is taken at once.")


class ProcessorSpec(Spec):
    """A clip processor: an entry point of the `durian.clip_processors` group, by name or by its `module:Class`,
    or a `module:Class` that this machine's allow-list file (`$DURIAN_PROCESSOR_ALLOWLIST`) names."""

    target: str = Field(description="Entry-point name or `module:Class` of a `tasks.base.ClipProcessor`; anything "
                        "an installed package does not declare and the allow-list does not name is refused.",
                        pattern=r"^[\w.-]+(:\w+)?$")
    params: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the class.")


class BuildConfig(Spec):
    """A whole dataset build: inputs, the settings of each step, execution and output location."""

    inputs: InputsConfig
    output_dir: str = Field(description="Folder that receives shards/, manifests/ and units/.")
    decode: DecodeConfig = Field(default_factory=DecodeConfig)
    scenes: SceneConfig = Field(default_factory=SceneConfig, description="Each video is cut into scenes (shots) "
                                "first; clips are cut inside scenes, never across a cut.")
    clips: ClipConfig = Field(default_factory=ClipConfig)
    shards: ShardConfig = Field(default_factory=ShardConfig)
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)
    split: SplitConfig = Field(default_factory=SplitConfig, description="Source videos held out for evaluation, "
                               "recorded in the samples manifest's `split` column.")
    perception: PerceptionConfig | None = Field(
        None, description="Face crop, keypoints, pose frames and attribute masks per clip (None: frames as decoded).")
    processors: tuple[ProcessorSpec, ...] = Field(
        (), description="Further clip processors by entry-point name or import path, run after perception, in "
        "order.")
    training_samples: TrainingSamplesConfig | None = Field(
        None, description="Turn each perceived clip into self-reconstruction pairs, the samples training reads "
        "(None: one sample per clip). Needs `perception`.")

    @field_validator("output_dir")
    @classmethod
    def _output_dir_is_local(cls, value: str) -> str:
        if "://" in value and not value.startswith("file://"):
            raise ValueError("must be a local folder (remote outputs are not supported yet)")
        return value.removeprefix("file://")

    @model_validator(mode="after")
    def _training_samples_fit(self) -> BuildConfig:
        samples = self.training_samples
        if samples is None:
            return self
        if self.perception is None:
            raise ValueError("training_samples needs `perception` (crops, pose frames and attribute masks)")
        needed = samples.pairs.frames_needed()
        if self.clips.length < needed:
            raise ValueError(f"clips.length {self.clips.length} is shorter than the {needed} frames a pair needs "
                             f"(training_samples.pairs: frames, frame_stride, min_ref_distance)")
        samples.check_attributes(self.perception.segmentation.attributes)
        if samples.expansion.mode == "generate" and self.perception.segmentation.backend == "truth":
            raise ValueError("expansion.mode 'generate' segments generated images: the 'truth' segmenter knows "
                             "only the test videos; choose a segmentation model")
        samples.check_keypoints(self.perception.keypoints.backend)
        return self

    def output_hash(self) -> str:
        """Hash of every setting that changes the bytes written; execution settings do not."""
        relevant = self.model_dump(mode="json", include={"decode", "scenes", "clips", "shards", "perception",
                                                         "processors", "training_samples"})
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def output_path(self) -> Path:
        return Path(self.output_dir)

    @classmethod
    def from_yaml(cls, path: str | Path) -> BuildConfig:
        """Load and validate a YAML file; `ConfigError` names the file and each bad field."""
        return load_spec(cls, path)


def parse_config(data: dict, origin: str = "config") -> BuildConfig:
    """Validate a plain dict into a `BuildConfig`, turning pydantic's errors into one readable message."""
    return load_spec(BuildConfig, data, origin=origin)
