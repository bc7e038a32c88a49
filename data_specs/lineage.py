"""Lineage: what every manifest row says about where it came from and what made it.

`code_version()` stamps the source of the packages that decide a build's bytes;
`Stamp` and `Lineage` are the columns every manifest row carries, built in one place.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path

# Packages whose source decides what a build writes; a change in any of them makes
# every unit of work stale, so an incremental rebuild redoes it.
_OUTPUT_PACKAGES = ("data_specs", "tasks")


@cache
def code_version() -> str:
    """`<distribution version>+<digest of the data_specs and tasks sources>`."""
    try:
        release = metadata.version("durian")
    except metadata.PackageNotFoundError:
        release = "0+unknown"
    digest = hashlib.sha256()
    root = Path(__file__).resolve().parent.parent
    for package in _OUTPUT_PACKAGES:
        for source in sorted((root / package).rglob("*.py")):
            digest.update(source.relative_to(root).as_posix().encode())
            digest.update(source.read_bytes())
    return f"{release}+{digest.hexdigest()[:12]}"


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
