"""Listing inputs (folder, manifest, fsspec URL) and planning units of work."""

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_specs.config import parse_config
from tasks.sources import InputError, list_videos, plan_units


def touch_videos(folder: Path, names: list[str]) -> None:
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"x" * 10)


def config(source, **execution) -> object:
    return parse_config({"inputs": {"source": str(source)}, "output_dir": "out", "execution": execution})


def test_folder_listing_is_sorted_recursive_and_filtered(tmp_path: Path):
    touch_videos(tmp_path, ["b.mp4", "a.MOV", "notes.txt", "sub/ç d.mkv"])
    refs = list_videos(config(tmp_path).inputs)
    assert [Path(r.uri).name for r in refs] == ["a.MOV", "b.mp4", "ç d.mkv"]
    assert all(r.size_bytes == 10 and r.modified for r in refs)
    assert all("." not in r.video_id and " " not in r.video_id for r in refs)


def test_symbolic_links_to_videos_are_listed_and_broken_ones_skipped(tmp_path: Path):
    touch_videos(tmp_path / "store", ["real.mp4"])
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "linked.mp4").symlink_to(tmp_path / "store" / "real.mp4")
    (tmp_path / "in" / "dangling.mp4").symlink_to(tmp_path / "store" / "gone.mp4")
    (ref,) = list_videos(config(tmp_path / "in").inputs)
    assert Path(ref.uri).name == "linked.mp4" and ref.size_bytes == 10


def test_fsspec_url_and_glob(tmp_path: Path):
    touch_videos(tmp_path, ["a.mp4", "b.mp4", "c.webm"])
    assert len(list_videos(config(f"file://{tmp_path}").inputs)) == 3
    assert [Path(r.uri).name for r in list_videos(config(f"file://{tmp_path}/*.mp4").inputs)] == ["a.mp4", "b.mp4"]


def test_csv_and_parquet_manifests_with_time_ranges(tmp_path: Path):
    touch_videos(tmp_path / "v", ["a.mp4", "b.mp4"])
    (tmp_path / "list.csv").write_text("path,start_s,end_s\nv/a.mp4,1.5,3\nv/b.mp4,,\nv/missing.mp4,,\n")
    refs = list_videos(config(tmp_path / "list.csv").inputs)
    assert [(Path(r.uri).name, r.start_s, r.end_s) for r in refs] == [
        ("a.mp4", 1.5, 3.0), ("b.mp4", 0.0, None), ("missing.mp4", 0.0, None)]
    pq.write_table(pa.table({"path": [str(tmp_path / "v" / "b.mp4")], "video_id": ["clip_b"]}), tmp_path / "m.parquet")
    assert [r.video_id for r in list_videos(config(tmp_path / "m.parquet").inputs)] == ["clip_b"]


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda root: root / "absent", "does not exist"),
        (lambda root: (root / "x.txt").write_text("") * 0 or root / "x.txt", "not a .parquet or .csv manifest"),
    ],
)
def test_unusable_inputs_fail_before_any_work(tmp_path: Path, setup, message: str):
    with pytest.raises(InputError, match=message):
        list_videos(config(setup(tmp_path)).inputs)


def test_manifest_without_path_column(tmp_path: Path):
    (tmp_path / "list.csv").write_text("file\na.mp4\n")
    with pytest.raises(InputError, match="no 'path' column"):
        list_videos(config(tmp_path / "list.csv").inputs)


def test_units_are_stable_when_a_video_is_added(tmp_path: Path):
    touch_videos(tmp_path, [f"v{i:03d}.mp4" for i in range(60)])
    cfg = config(tmp_path, videos_per_unit=5)
    before = plan_units(list_videos(cfg.inputs), cfg)
    assert sum(len(u.videos) for u in before) == 60 and 6 <= len(before) <= 24
    touch_videos(tmp_path, ["v030x.mp4"])
    after = plan_units(list_videos(cfg.inputs), cfg)
    kept = {u.fingerprint for u in after} & {u.fingerprint for u in before}
    # Only the unit the new video landed in changes (split in two if the video is a boundary).
    assert len(kept) == len(before) - 1 and len(after) - len(kept) in (1, 2)


def test_fingerprint_follows_video_changes_and_config(tmp_path: Path):
    touch_videos(tmp_path, ["a.mp4", "b.mp4"])
    cfg = config(tmp_path)
    first = plan_units(list_videos(cfg.inputs), cfg)
    assert plan_units(list_videos(cfg.inputs), cfg) == first
    (tmp_path / "a.mp4").write_bytes(b"y" * 11)
    assert plan_units(list_videos(cfg.inputs), cfg)[0].fingerprint != first[0].fingerprint
    other = parse_config({"inputs": {"source": str(tmp_path)}, "output_dir": "o", "clips": {"length": 3}})
    assert plan_units(list_videos(other.inputs), other)[0].fingerprint != plan_units(list_videos(cfg.inputs), cfg)[0].fingerprint
