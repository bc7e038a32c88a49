"""Writing WebDataset shards that are reproducible and never visible half-written.

Each shard is written to a hidden `.NAME.partial` file in the same folder, hashed
while it is written, and renamed to `NAME` only once closed. A fixed member mtime
and a fixed owner make the same samples in the same order give byte-identical tars.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import BinaryIO

import webdataset as wds
from pydantic import BaseModel

SHARD_MTIME = 0.0  # member timestamps: fixed, so that tars are byte-identical across runs


class ShardRecord(BaseModel):
    """A closed shard: its file name, content hash, size and sample count."""

    shard: str
    sha256: str
    size_bytes: int
    num_samples: int


class _HashingFile:
    """A write-only file wrapper that hashes and counts what passes through it."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.handle.write(data)

    def flush(self) -> None:
        self.handle.flush()

    def tell(self) -> int:
        return self.size


class RotatingShardWriter:
    """Writes samples into `PREFIX-NNNNN.tar` shards, starting a new one at a sample or byte limit.

    Use as a context manager; `records` lists the shards closed so far. Leaving the
    block through an exception deletes the shard in progress instead of publishing it.
    """

    def __init__(self, directory: Path, prefix: str, samples_per_shard: int, max_shard_bytes: int) -> None:
        self.directory = directory
        self.prefix = prefix
        self.samples_per_shard = samples_per_shard
        self.max_shard_bytes = max_shard_bytes
        self.records: list[ShardRecord] = []
        self._tar: wds.TarWriter | None = None
        self._sink: _HashingFile | None = None
        self._partial: Path | None = None
        self._count = 0
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def current_shard(self) -> str:
        """Name of the shard the next sample goes into."""
        return f"{self.prefix}-{len(self.records):05d}.tar"

    def write(self, sample: dict[str, object]) -> str:
        """Append one encoded sample; returns the shard name it went into."""
        if self._tar is None:
            self._open()
        shard = self.current_shard
        self._tar.write(sample)
        self._count += 1
        if self._count >= self.samples_per_shard or self._sink.size >= self.max_shard_bytes:
            self._close()
        return shard

    def _open(self) -> None:
        self._partial = self.directory / f".{self.current_shard}.partial"
        handle = open(self._partial, "wb")
        self._sink = _HashingFile(handle)
        self._tar = wds.TarWriter(self._sink, mtime=SHARD_MTIME, encoder=False)
        self._count = 0

    def _close(self) -> None:
        self._tar.close()  # writes the tar end blocks through the sink
        handle = self._sink.handle
        handle.flush()
        os.fsync(handle.fileno())
        handle.close()
        final = self.directory / self.current_shard
        self.records.append(
            ShardRecord(shard=final.name, sha256=self._sink.digest.hexdigest(), size_bytes=self._sink.size,
                        num_samples=self._count)
        )
        self._partial.replace(final)
        self._tar = self._sink = self._partial = None

    def _discard(self) -> None:
        self._tar.close()
        self._sink.handle.close()
        self._partial.unlink(missing_ok=True)
        self._tar = self._sink = self._partial = None

    def __enter__(self) -> RotatingShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._tar is None:
            return
        if exc_type is None:
            self._close()
        else:
            self._discard()

