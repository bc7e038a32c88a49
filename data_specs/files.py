"""Publishing files atomically: write under a hidden partial name, then rename.

A reader (or a re-run after `kill -9`) sees either the previous file or the whole
new one, never half of it. Every output of a build (shards, manifest tables, unit
reports, summaries) is published through this one helper.
"""

from __future__ import annotations

import contextlib
import os
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


def write_atomic(path: Path, data: bytes | str) -> None:
    """Publish `data` as `path` in one step."""
    with publishing(path) as partial:
        partial.write_bytes(data.encode() if isinstance(data, str) else data)
