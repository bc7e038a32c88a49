"""Publishing files atomically (write under a hidden partial name, then rename), and checking them by hash.

A reader (or a re-run after `kill -9`) sees either the previous file or the whole
new one, never half of it. Every file of a build (shards, manifest tables, unit
reports, summaries, the card) is published through `publishing`; a folder (a training
checkpoint, an exported pipeline) through `publishing_folder`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


def partial_path(path: Path) -> Path:
    """The hidden name a file is written under before it is published: `.NAME.partial`."""
    return path.with_name(f".{path.name}.partial")


@contextlib.contextmanager
def publishing(path: Path, durable: bool = False) -> Iterator[Path]:
    """Yield the partial path to write; on success rename it to `path`, on error delete it.

    durable: fsync the file before the rename (for large outputs that must survive a power cut).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(path)
    try:
        yield partial
        if durable:
            with open(partial, "rb+") as handle:
                os.fsync(handle.fileno())
        partial.replace(path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def old_path(path: Path) -> Path:
    """The hidden name a published folder is moved to while its successor takes its place: `.NAME.old`."""
    return path.with_name(f".{path.name}.old")


@contextlib.contextmanager
def publishing_folder(path: Path) -> Iterator[Path]:
    """Yield a fresh partial folder to fill; on success it replaces `path` (a previous folder is renamed away
    first and deleted after, so `path` is at every moment the old folder or the new one, or between two renames
    absent), on error it is deleted."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial, old = partial_path(path), old_path(path)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        yield partial
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            path.rename(old)
        try:
            partial.rename(path)
        except BaseException:
            if old.exists() and not path.exists():
                old.rename(path)
            raise
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def write_atomic(path: Path, data: bytes | str) -> None:
    """Publish `data` as `path` in one step."""
    with publishing(path) as partial:
        partial.write_bytes(data.encode() if isinstance(data, str) else data)


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file's bytes, read in blocks."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def file_problem(path: Path, sha256: str, size_bytes: int | None = None) -> str | None:
    """Why `path` is not the file a manifest lists (missing, another size, another sha256), or None when it is."""
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if size_bytes is not None and size != size_bytes:
        return f"size {size} != manifest {size_bytes}"
    if sha256_file(path) != sha256:
        return "sha256 differs from the manifest"
    return None
