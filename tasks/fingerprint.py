"""What decides a unit's output besides its videos: the fingerprint's share that is the same for every unit.

A unit is skipped when its fingerprint is unchanged, so the fingerprint must change whenever the
output could: with the output-relevant config and the split, the code and libraries
(`data_specs.lineage.code_version`), the ffmpeg binary that decodes, and the contents of every weight
file the config names. A checkpoint swapped at the same path changes nothing else.

A weight file is known by its content hash. Hashing gigabytes on every nightly run would cost
minutes, so hashes are cached beside the build (`OUTPUT/weights.json`) under the file's size, mtime,
ctime and inode: any write, copy or rename over the file changes its ctime (which no tool can set back),
so it is hashed again; a file merely touched is re-hashed but, its content unchanged, leaves every unit
skipped. Hub ids (a model name that is not a local path) are not files and are not covered: pin a
local folder to have them covered.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

from data_specs.config import BuildConfig
from data_specs.files import sha256_file, write_atomic
from data_specs.layout import OutputLayout
from data_specs.lineage import code_version
from tasks.media import find_ffmpeg

WEIGHT_SUFFIXES = (".pth", ".pt", ".pt2", ".ckpt", ".bin", ".safetensors", ".onnx", ".npz", ".npy")


def build_identity(config: BuildConfig) -> str:
    """Digest of everything but the videos and the output-relevant config that decides what units write."""
    weights = weights_identity(config)
    parts = [code_version(), ffmpeg_version(), config.split.model_dump_json(),
             *(f"{path}\0{size}\0{sha256}" for path, (size, sha256) in sorted(weights.items()))]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


@cache
def ffmpeg_version() -> str:
    """The first line of `ffmpeg -version` (version and build) where the build is planned, which is the binary the
    workers decode with on one machine; on a cluster, install the same ffmpeg on every node."""
    try:
        ffmpeg, _ = find_ffmpeg()
    except RuntimeError:
        return "ffmpeg not found where the build is planned"  # the workers report it, video by video
    return subprocess.run([ffmpeg, "-version"], capture_output=True, text=True, check=True).stdout.split("\n")[0]


def weight_files(config: BuildConfig) -> list[Path]:
    """Every file the output-relevant config names: files given as paths, and the files in folders given as
    paths (diffusers model folders, facexlib's weights_dir), sorted."""
    settings = config.model_dump(mode="json", exclude={"inputs", "output_dir", "execution", "split"})
    files: set[Path] = set()
    for value in _strings(settings):
        if os.sep not in value and not value.endswith(WEIGHT_SUFFIXES):
            continue  # a name or a hub id, not a path
        path = Path(value).expanduser()
        if path.is_file():
            files.add(path.resolve())
        elif path.is_dir():
            files.update(p.resolve() for p in path.rglob("*") if p.is_file())
    return sorted(files)


def weights_identity(config: BuildConfig) -> dict[str, tuple[int, str]]:
    """path -> (size, sha256) of every weight file, hashing only files the cache beside the build does not know
    in their current state."""
    files = weight_files(config)
    if not files:
        return {}
    cache_file = OutputLayout(config.output_path).weights_cache
    try:
        known = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        known = {}
    current, identity = {}, {}
    for path in files:
        stat = path.stat()
        state = [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]
        entry = known.get(str(path))
        if entry is None or entry["state"] != state:
            entry = {"state": state, "sha256": sha256_file(path)}
        current[str(path)] = entry
        identity[str(path)] = (stat.st_size, entry["sha256"])
    if current != known:
        write_atomic(cache_file, json.dumps(current, indent=1, sort_keys=True))
    return identity


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)

