"""Listing input videos and grouping them into units of work.

Inputs are a local folder, one video file, a Parquet/CSV manifest, or an fsspec URL/glob. Listing only
stats files (size, modification time), so planning a rebuild of a large dataset
costs no reads; content hashes are taken by the workers.

Every listed video gets a distinct id that can start a sample key: a manifest's `video_id`
is checked (letters, digits, '_' and '-', at most `MAX_VIDEO_ID_LENGTH`), and a derived id
hashes the URI together with the row's time range, so one file listed with two ranges gives
two videos. A bad or repeated id is an `InputError` naming the manifest row, before any work.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import fsspec
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from data_specs.config import BuildConfig, InputsConfig
from data_specs.layout import OutputLayout
from data_specs.sample import safe_key
from data_specs.units import MAX_VIDEO_ID_LENGTH, VIDEO_ID_PATTERN, UnitReport, VideoRef, WorkUnit
from tasks.fingerprint import build_identity

_MANIFEST_SUFFIXES = (".parquet", ".csv")


class InputError(ValueError):
    """The configured input cannot be listed (missing folder, bad manifest); raised before any work."""


def list_videos(inputs: InputsConfig) -> list[VideoRef]:
    """Every input video, sorted by URI. Raises `InputError` when the source is unusable."""
    source = inputs.source
    if "://" not in source:
        path = Path(source).expanduser()
        if not path.exists():
            raise InputError(f"input {source!r} does not exist")
        source = str(path.resolve())
        if path.is_file() and path.suffix.lower() not in _MANIFEST_SUFFIXES:
            if not path.name.lower().endswith(tuple(ext.lower() for ext in inputs.extensions)):
                raise InputError(f"input {inputs.source!r} is a file but neither a video (inputs.extensions: "
                                 f"{', '.join(inputs.extensions)}) nor a .parquet or .csv manifest")
            fs = fsspec.filesystem("file")
            return [_ref(fs, source, fs.info(source))]  # not a glob: a file name may hold '[' or '*'

    if source.lower().endswith(_MANIFEST_SUFFIXES):
        refs = _from_manifest(source, {*inputs.protocols, *_protocols(source)})
    else:
        refs = _from_listing(source, inputs.extensions)
    return sorted(refs, key=lambda ref: (ref.uri, ref.start_s, ref.end_s or float("inf"), ref.video_id))


def _from_listing(source: str, extensions: tuple[str, ...]) -> list[VideoRef]:
    fs, root = fsspec.core.url_to_fs(source)
    if fs.isdir(root):
        infos = fs.find(root, detail=True).values()
    else:
        infos = fs.glob(root, detail=True).values()
        if not infos:
            raise InputError(f"input {source!r} matches nothing")
    wanted = tuple(ext.lower() for ext in extensions)
    candidates = (_followed(fs, info) for info in infos if info["name"].lower().endswith(wanted))
    return [_ref(fs, info["name"], info) for info in candidates if info.get("type") == "file"]


def _followed(fs: fsspec.AbstractFileSystem, info: dict) -> dict:
    """A listing entry with a symbolic link replaced by what it points to (fsspec lists links as 'other');
    a dangling link lists as nothing."""
    if not info.get("islink"):
        return info
    try:
        return fs.info(info["name"])
    except FileNotFoundError:
        return {}


def _protocols(uri: str) -> list[str]:
    """Every fsspec protocol a URI names (a chained URL names several); a plain path is 'file'."""
    *outer, inner = uri.split("::")
    return [part.split("://", 1)[0] for part in outer] + [fsspec.core.split_protocol(inner)[0] or "file"]


def _from_manifest(source: str, protocols: set[str]) -> list[VideoRef]:
    with fsspec.open(source, "rb") as handle:
        table = pq.read_table(handle) if source.lower().endswith(".parquet") else pa_csv.read_csv(handle)
    if "path" not in table.column_names:
        raise InputError(f"manifest {source!r} has no 'path' column (columns: {table.column_names})")
    base = source.rsplit("/", 1)[0] if "/" in source else "."
    refs, rows_of_id = [], {}
    for number, row in enumerate(table.to_pylist(), start=1):
        where = f"manifest {source!r} row {number} (path {row['path']!r})"
        uri = str(row["path"])
        if "://" not in uri and not uri.startswith("/"):
            uri = f"{base}/{uri}"
        if refused := set(_protocols(uri)) - protocols - {"local"}:
            raise InputError(f"{where}: {', '.join(sorted(refused))} URLs are not allowed (inputs.protocols: "
                             f"{', '.join(sorted(protocols))})")
        fs, path = fsspec.core.url_to_fs(uri)
        try:
            info = fs.info(path)
        except FileNotFoundError:
            # Listed but absent: keep it, so the worker records it as a failure row.
            info = {"size": -1}
        video_id = row.get("video_id")
        if video_id is not None and str(video_id) != "":
            _check_video_id(str(video_id), where)
        start_s, end_s = row.get("start_s"), row.get("end_s")
        try:
            start, end = float(start_s or 0.0), float(end_s) if end_s else None
        except (TypeError, ValueError) as err:
            raise InputError(f"{where}: start_s {start_s!r} and end_s {end_s!r} must be seconds") from err
        if start < 0 or (end is not None and end <= start):
            raise InputError(f"{where}: the time range start_s {start} to end_s {end} is not a range of the video")
        ref = _ref(fs, path, info, video_id=video_id, start_s=start, end_s=end, group=row.get("group"))
        if ref.video_id in rows_of_id:
            raise InputError(f"{where}: video id {ref.video_id!r} is already row {rows_of_id[ref.video_id]}'s "
                             "(the same file and time range listed twice, or a repeated video_id); sample keys "
                             "start with the video id and must be unique")
        rows_of_id[ref.video_id] = number
        refs.append(ref)
    return refs


def _check_video_id(video_id: str, where: str) -> None:
    """Raise `InputError` for a manifest id that cannot start a sample key."""
    if not VIDEO_ID_PATTERN.fullmatch(video_id):
        bad = sorted(set(VIDEO_ID_PATTERN.sub("", video_id)))
        raise InputError(f"{where}: video_id {video_id!r} may hold only letters, digits, '_' and '-' (it starts "
                         f"every sample key and tar member name; found {''.join(bad)!r})")
    if len(video_id) > MAX_VIDEO_ID_LENGTH:
        raise InputError(f"{where}: video_id {video_id!r} has {len(video_id)} characters, at most "
                         f"{MAX_VIDEO_ID_LENGTH} fit the shards' tar member names")


def _ref(fs: fsspec.AbstractFileSystem, path: str, info: dict, video_id: str | None = None,
         start_s: float | None = None, end_s: float | None = None, group: str | None = None) -> VideoRef:
    uri = path if _is_local(fs) else fs.unstrip_protocol(path)
    modified = info.get("mtime") or info.get("LastModified") or info.get("ETag") or info.get("etag") or ""
    start, end = float(start_s or 0.0), float(end_s) if end_s else None
    return VideoRef(
        video_id=str(video_id) if video_id is not None and str(video_id) != "" else make_video_id(uri, start, end),
        uri=uri,
        size_bytes=int(info.get("size") or 0),
        modified=str(modified),
        start_s=start,
        end_s=end,
        group=str(group) if group is not None and str(group) != "" else None,
    )


def make_video_id(uri: str, start_s: float = 0.0, end_s: float | None = None) -> str:
    """Readable and unique: the file stem (made key-safe) plus a hash of the full URI and, for a part of the
    file, its time range (so two ranges of one file are two videos; a whole file's id is the URI's alone)."""
    stem = safe_key(Path(uri.rsplit("/", 1)[-1]).stem)[:40]
    identity = uri if start_s == 0 and end_s is None else f"{uri}#t={start_s!r},{end_s!r}"
    return f"{stem}-{hashlib.sha256(identity.encode()).hexdigest()[:10]}"


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def plan_units(videos: list[VideoRef], config: BuildConfig) -> list[WorkUnit]:
    """Group sorted videos into units of about `videos_per_unit` (geometrically distributed sizes).

    A unit ends after a video whose file-name hash falls on a boundary (content-defined
    chunking), so adding or removing one video changes only the unit it lands in: the
    others keep their ids and fingerprints and are skipped by an incremental rebuild.
    The time ranges of one file stay in one unit (its id hashes their URIs).
    """
    target = config.execution.videos_per_unit
    groups: list[list[VideoRef]] = [[]]
    for index, video in enumerate(videos):
        groups[-1].append(video)
        name = video.uri.rsplit("/", 1)[-1]
        more_of_file = index + 1 < len(videos) and videos[index + 1].uri == video.uri
        if not more_of_file and int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) % target == 0:
            groups.append([])
    version, config_hash = build_identity(config), config.output_hash()  # code, libraries, ffmpeg, weights
    units = []
    for group in filter(None, groups):
        unit_id = hashlib.sha256("\n".join(v.uri for v in group).encode()).hexdigest()[:12]
        stamp = "\n".join(v.model_dump_json() for v in group) + config_hash + version
        units.append(WorkUnit(unit_id=unit_id, fingerprint=hashlib.sha256(stamp.encode()).hexdigest()[:16],
                              videos=tuple(group)))
    return units


@contextlib.contextmanager
def local_copy(uri: str) -> Iterator[Path]:
    """A local path for ffmpeg: the file itself when local, else a temporary download."""
    fs, path = fsspec.core.url_to_fs(uri)
    if _is_local(fs):
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="durian-src-") as tmp:
        local = Path(tmp) / Path(path).name
        with fs.open(path, "rb") as remote, open(local, "wb") as out:
            shutil.copyfileobj(remote, out, length=1 << 22)
        yield local


@dataclass(frozen=True)
class BuildPlan:
    """What a build has to do: every unit, those to run, and the reports of those already complete."""

    units: list[WorkUnit]
    todo: list[WorkUnit]
    done: list[UnitReport]


def plan_build(config: BuildConfig, videos: list[VideoRef] | None = None) -> BuildPlan:
    """List (unless `videos` are given) and plan the build; a unit whose last completed run has
    the current fingerprint is done, every other unit is to run."""
    units = plan_units(list_videos(config.inputs) if videos is None else videos, config)
    layout = OutputLayout(config.output_path)
    todo, done = [], []
    for unit in units:
        report = layout.read_report(unit.unit_id)
        if report is not None and report.fingerprint == unit.fingerprint:
            done.append(report.model_copy(update={"skipped": True}))
        else:
            todo.append(unit)
    return BuildPlan(units, todo, done)
