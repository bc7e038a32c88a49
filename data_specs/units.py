"""Units of work: what the flow hands to a worker and what the worker hands back.

A unit is a group of videos processed by one task on one worker. It is named by the
videos it holds (`unit_id`) and stamped with a fingerprint of everything that decides
its output (each video's size and modification time, the output-relevant config, the
split, the code and library versions, ffmpeg's, and the contents of the weight files the
config names: `tasks.fingerprint`): a unit whose fingerprint is unchanged since its
last completed run is skipped.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field

# A video id starts every sample key and so every tar member name of its samples. USTAR (the shards' tar format)
# holds names of at most 100 bytes; the longest member, a pair's "{id}_c00000_s2_p1023.latent.attr_ref.npy", is the
# id plus 36 characters, so ids stop at 60 (room for longer clip indices). WebDataset splits a key at its first dot,
# and slashes or spaces break paths: an id holds letters, digits, '_' and '-' only.
MAX_VIDEO_ID_LENGTH = 60
VIDEO_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]+")


class VideoRef(BaseModel):
    """One input video as listed, before anything is read from it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    video_id: str = Field(description="Stable id: readable stem plus a hash of the URI (and time range), or the "
                          "manifest's; letters, digits, '_' and '-', at most MAX_VIDEO_ID_LENGTH characters.")
    uri: str = Field(description="Local path or fsspec URL.")
    size_bytes: int
    modified: str = Field(description="Modification time (ns) or ETag, whatever the filesystem offers.")
    start_s: float = Field(0.0, ge=0, description="Start of the time range to use.")
    end_s: float | None = Field(None, gt=0, description="End of the time range (None: to the end).")
    group: str | None = Field(None, description="What videos of one identity share (the manifest's `group` column: "
                              "person, take, ...); the train/eval split is drawn per group when set.")


class WorkUnit(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    unit_id: str
    fingerprint: str
    videos: tuple[VideoRef, ...]


class UnitReport(BaseModel):
    """What a finished unit wrote; saved as `units/<unit_id>.done.json`, last of all its files."""

    model_config = ConfigDict(extra="forbid")

    unit_id: str
    fingerprint: str
    shards: list[str] = Field(default_factory=list, description="Shard file names, relative to shards/.")
    parts_dir: str = Field(description="Folder of this unit's manifest parts, relative to the output dir.")
    videos: int = 0
    videos_failed: int = 0
    clips: int = 0
    samples: int = 0
    frames: int = 0
    failures_by_reason: dict[str, int] = Field(default_factory=dict)
    started_at: float = Field(0.0, description="Wall-clock time (epoch seconds) the unit's work began.")
    seconds: float = Field(0.0, description="Time the unit's work took.")
    skipped: bool = Field(False, description="True when the run found this unit already complete.")
