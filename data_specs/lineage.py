"""Lineage: what every manifest row says about where it came from and what made it.

`code_version()` stamps the source of the packages that decide a build's bytes and the versions of the
libraries that compute its pixels; `Stamp` and `Lineage` are the columns every manifest row carries,
built in one place.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path

# Packages whose source decides what a build writes (model/: the loaders and networks perception and the
# training-sample processor run); a change in any of them makes every unit of work stale, so an incremental
# rebuild redoes it.
OUTPUT_PACKAGES = ("data_specs", "tasks", "model")
# Libraries that decode, resize, detect, segment or generate: another version may give other pixels. (ffmpeg,
# a binary, is covered by the build fingerprint, `tasks.fingerprint`.)
OUTPUT_LIBRARIES = ("numpy", "opencv-python", "opencv-python-headless", "pillow", "torch", "torchvision", "timm",
                    "facexlib", "diffusers", "transformers", "scenedetect", "webdataset")


@cache
def code_version() -> str:
    """`<distribution version>+<digest of our output packages' sources and the output libraries' versions>`."""
    try:
        release = metadata.version("durian")
    except metadata.PackageNotFoundError:
        release = "0+unknown"
    digest = hashlib.sha256(source_digest(Path(__file__).resolve().parent.parent, OUTPUT_PACKAGES).encode())
    for name, version in library_versions().items():
        digest.update(f"\0{name}=={version}".encode())
    return f"{release}+{digest.hexdigest()[:12]}"


def source_digest(root: Path, packages: tuple[str, ...]) -> str:
    """sha256 over the path and bytes of every `.py` file of `packages` under `root`."""
    digest = hashlib.sha256()
    for package in packages:
        for source in sorted((root / package).rglob("*.py")):
            digest.update(source.relative_to(root).as_posix().encode())
            digest.update(source.read_bytes())
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    """The installed version of each of `OUTPUT_LIBRARIES` ('-' when not installed)."""
    versions = {}
    for name in OUTPUT_LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "-"
    return versions


@dataclass(kw_only=True)
class Stamp:
    """Which config, code and unit of work produced a row."""

    config_hash: str
    code_version: str
    unit_id: str

    def with_source(self, source_path: str, content_sha256: str | None = None) -> Lineage:
        return Lineage(source_path=source_path, content_sha256=content_sha256, **self.columns())

    def columns(self) -> dict[str, str | None]:
        """The lineage columns as keyword arguments for a row."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}


@dataclass(kw_only=True)
class Lineage(Stamp):
    """A `Stamp` plus the source video and its content hash (None until the file was read)."""

    source_path: str
    content_sha256: str | None = None
