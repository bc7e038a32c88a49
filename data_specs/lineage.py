"""Lineage: the code version stamped on every manifest row and every unit of work."""

from __future__ import annotations

import hashlib
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
