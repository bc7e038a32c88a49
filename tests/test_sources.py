"""Listing inputs (folder, manifest, fsspec URL) and planning units of work."""

import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_specs.config import parse_config
from data_specs.sample import ATTRIBUTE_KEYPOINTS, LATENT_NAMES, clip_key, latent_field, mask_field
from data_specs.units import MAX_VIDEO_ID_LENGTH
from tasks.samples.processor import pair_key
from tasks.shards import add_sample
from tasks.sources import InputError, list_videos, make_video_id, plan_units


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
        (lambda root: (root / "x.txt").write_text("") * 0 or root / "x.txt", "neither a video .* nor a .parquet or .csv manifest"),
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


@pytest.mark.parametrize(("video_id", "message"), [
    ("a" * 61, "has 61 characters, at most 60"),
    ("talk.part1", r"only letters, digits, '_' and '-' .*found '\.'"),
    ("my clip/1", r"found ' /'"),
])
def test_manifest_ids_that_cannot_key_a_sample_are_refused_naming_the_row(tmp_path: Path, video_id: str,
                                                                          message: str):
    touch_videos(tmp_path, ["a.mp4", "b.mp4"])
    pq.write_table(pa.table({"path": ["a.mp4", "b.mp4"], "video_id": ["fine_id", video_id]}), tmp_path / "m.parquet")
    with pytest.raises(InputError, match=rf"m\.parquet' row 2 \(path 'b\.mp4'\): video_id .*{message}"):
        list_videos(config(tmp_path / "m.parquet").inputs)


def test_an_id_of_the_longest_length_fits_every_tar_member_name(tmp_path: Path):
    """The bound on ids is the shards' USTAR name limit: the longest member of the longest key still fits."""
    video_id = "a" * MAX_VIDEO_ID_LENGTH
    (tmp_path / "a.mp4").write_bytes(b"x")
    (tmp_path / "m.csv").write_text(f"path,video_id\na.mp4,{video_id}\n")
    assert [r.video_id for r in list_videos(config(tmp_path / "m.csv").inputs)] == [video_id]
    key = pair_key(clip_key(video_id, 99999), 2, 1023)
    fields = [latent_field(name) for name in LATENT_NAMES] + [ATTRIBUTE_KEYPOINTS]
    with tarfile.open(tmp_path / "longest.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
        add_sample(tar, {"__key__": key, **{field: b"x" for field in fields}})
        add_sample(tar, {"__key__": clip_key(video_id, 99999), mask_field("eyeglasses", 1023): b"x"})
    with pytest.raises(ValueError, match="name is too long"), tarfile.open(
            tmp_path / "too_long.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
        add_sample(tar, {"__key__": pair_key(clip_key(video_id + "a" * 5, 99999), 2, 1023),
                         latent_field("attr_ref"): b"x"})


def test_time_ranges_of_one_file_are_distinct_videos_in_one_unit(tmp_path: Path):
    touch_videos(tmp_path / "v", ["talk.mp4"] + [f"other{i}.mp4" for i in range(30)])
    rows = "".join(f"v/other{i}.mp4,,\n" for i in range(30))
    (tmp_path / "list.csv").write_text(f"path,start_s,end_s\nv/talk.mp4,0,60\n{rows}v/talk.mp4,60,120\nv/talk.mp4,,\n")
    refs = list_videos(config(tmp_path / "list.csv").inputs)
    talks = [r for r in refs if r.uri.endswith("talk.mp4")]
    assert [(r.start_s, r.end_s) for r in talks] == [(0.0, 60.0), (0.0, None), (60.0, 120.0)]
    assert len({r.video_id for r in refs}) == len(refs) == 33
    assert all(r.video_id.startswith("talk-") for r in talks)
    # The whole file keeps the id a folder listing gives it; a range's id is stable across listings.
    assert talks[1].video_id == make_video_id(talks[1].uri)
    assert [r.video_id for r in list_videos(config(tmp_path / "list.csv").inputs)] == [r.video_id for r in refs]
    for per_unit in (1, 2, 3):
        units = plan_units(refs, config(tmp_path / "list.csv", videos_per_unit=per_unit))
        (holder,) = [u for u in units if any(v.uri.endswith("talk.mp4") for v in u.videos)]
        assert sum(v.uri.endswith("talk.mp4") for v in holder.videos) == 3
        assert len({u.unit_id for u in units}) == len(units)


@pytest.mark.parametrize(("rows", "message"), [
    ("v/a.mp4,1,5,\nv/a.mp4,1,5,\n", r"row 2 \(path 'v/a\.mp4'\): video id '.*' is already row 1's"),
    ("v/a.mp4,,,same\nv/b.mp4,,,same\n", r"row 2 \(path 'v/b\.mp4'\): video id 'same' is already row 1's"),
    ("v/a.mp4,5,2,\n", r"row 1 \(path 'v/a\.mp4'\): the time range start_s 5\.0 to end_s 2\.0 is not a range"),
    ("v/a.mp4,-1,,\n", r"row 1 \(path 'v/a\.mp4'\): the time range start_s -1\.0 to end_s None is not a range"),
    ("v/a.mp4,soon,,\n", r"row 1 \(path 'v/a\.mp4'\): start_s 'soon' and end_s None must be seconds"),
])
def test_repeated_ids_and_bad_ranges_are_refused_naming_the_row(tmp_path: Path, rows: str, message: str):
    touch_videos(tmp_path / "v", ["a.mp4", "b.mp4"])
    (tmp_path / "list.csv").write_text("path,start_s,end_s,video_id\n" + rows)
    with pytest.raises(InputError, match=message):
        list_videos(config(tmp_path / "list.csv").inputs)
