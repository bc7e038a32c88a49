"""Writing WebDataset shards that are reproducible and never visible half-written.

A shard is a POSIX (USTAR) tar in WebDataset's layout: the members of one sample are
adjacent, named `KEY.FIELD`, in sorted field order, with the owner and mode that
`webdataset.TarWriter` gives them. It is written with the standard library's `tarfile`
rather than through `webdataset`, whose import pulls in torch (seconds of start-up on
every data worker, which never needs it); a test checks that both write the same
members. USTAR with an integer mtime also spares the 512-byte PAX header that
`TarWriter` puts before every member.

Each shard is written under a hidden partial name, hashed while it is written, and
published by rename only once closed. A fixed member mtime and owner make the same
samples in the same order give byte-identical tars.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import tarfile
from pathlib import Path
from typing import BinaryIO

from pydantic import BaseModel

from data_specs.files import publishing

SHARD_MTIME = 0  # member timestamps: fixed, so that tars are byte-identical across runs
MEMBER_OWNER = "bigdata"  # webdataset's default user and group names
MEMBER_MODE = 0o444


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

    def tell(self) -> int:
        return self.size


def add_sample(tar: tarfile.TarFile, sample: dict[str, object]) -> None:
    """Append one encoded sample (`{"__key__": key, field: bytes}`) as adjacent `KEY.FIELD` members."""
    key = sample["__key__"]
    for field in sorted(name for name in sample if not name.startswith("_")):
        data = sample[field]
        if not isinstance(data, bytes):
            raise TypeError(f"sample {key}: field {field} must be bytes, got {type(data).__name__}")
        info = tarfile.TarInfo(f"{key}.{field}")
        info.size, info.mtime, info.mode = len(data), SHARD_MTIME, MEMBER_MODE
        info.uname = info.gname = MEMBER_OWNER
        tar.addfile(info, io.BytesIO(data))


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
        self._open_shard: contextlib.ExitStack | None = None
        self._tar: tarfile.TarFile | None = None
        self._sink: _HashingFile | None = None
        self._count = 0

    @property
    def current_shard(self) -> str:
        """Name of the shard the next sample goes into."""
        return f"{self.prefix}-{len(self.records):05d}.tar"

    def write(self, sample: dict[str, object]) -> str:
        """Append one encoded sample; returns the shard name it went into."""
        if self._tar is None:
            self._open()
        shard = self.current_shard
        add_sample(self._tar, sample)
        self._count += 1
        if self._count >= self.samples_per_shard or self._sink.size >= self.max_shard_bytes:
            self._close()
        return shard

    def _open(self) -> None:
        self._open_shard = contextlib.ExitStack()
        partial = self._open_shard.enter_context(publishing(self.directory / self.current_shard, durable=True))
        self._sink = _HashingFile(self._open_shard.enter_context(open(partial, "wb")))
        self._tar = tarfile.open(fileobj=self._sink, mode="w", format=tarfile.USTAR_FORMAT)
        self._count = 0

    def _close(self) -> None:
        self._tar.close()  # writes the tar end blocks through the sink
        self._open_shard.close()  # closes the file, then publishes it under its final name
        self.records.append(ShardRecord(shard=self.current_shard, sha256=self._sink.digest.hexdigest(),
                                        size_bytes=self._sink.size, num_samples=self._count))
        self._open_shard = self._tar = self._sink = None

    def __enter__(self) -> RotatingShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._tar is None:
            return
        if exc_type is None:
            self._close()
        else:  # the partial file is deleted by `publishing`
            self._open_shard.__exit__(exc_type, exc, tb)
            self._open_shard = self._tar = self._sink = None
