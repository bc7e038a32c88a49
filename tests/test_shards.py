"""Shard writing: rotation, reproducible bytes, hashes, and no half-written shard ever visible."""

import hashlib
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import webdataset as wds

from data_specs.files import file_problem, sha256_file, write_atomic
from data_specs.sample import encode_sample
from tasks.shards import RotatingShardWriter
from tests.test_sample_layout import make_sample


def write_samples(directory: Path, count: int, per_shard: int = 2) -> RotatingShardWriter:
    with RotatingShardWriter(directory, "unit", per_shard, 1 << 30) as writer:
        for index in range(count):
            writer.write(encode_sample(make_sample(f"v_c{index:05d}"), 90))
    return writer


def test_rotates_and_records_hash_size_and_count(tmp_path: Path):
    writer = write_samples(tmp_path, 5)
    assert [r.shard for r in writer.records] == ["unit-00000.tar", "unit-00001.tar", "unit-00002.tar"]
    assert [r.num_samples for r in writer.records] == [2, 2, 1]
    for record in writer.records:
        data = (tmp_path / record.shard).read_bytes()
        assert record.size_bytes == len(data) and record.sha256 == hashlib.sha256(data).hexdigest()
    keys = [s["__key__"] for s in wds.WebDataset(str(tmp_path / "unit-{00000..00002}.tar"), shardshuffle=False)]
    assert keys == [f"v_c{i:05d}" for i in range(5)]
    listing = subprocess.run(["tar", "-tf", str(tmp_path / "unit-00000.tar")], capture_output=True, text=True,
                             check=True).stdout.split()
    assert listing[0] == "v_c00000.frame.0000.jpg" and len(listing) == 2 * (1 + 3 + 1 + 3)


def test_same_samples_give_byte_identical_shards(tmp_path: Path):
    first = write_samples(tmp_path / "a", 3)
    second = write_samples(tmp_path / "b", 3)
    assert [r.sha256 for r in first.records] == [r.sha256 for r in second.records]


def test_byte_limit_closes_a_shard(tmp_path: Path):
    with RotatingShardWriter(tmp_path, "u", 1000, 1 << 16) as writer:
        for index in range(30):
            writer.write(encode_sample(make_sample(f"v_c{index:05d}"), 90))
    assert len(writer.records) > 1
    assert all(r.size_bytes >= 1 << 16 for r in writer.records[:-1])


def test_shard_in_progress_is_hidden_and_discarded_on_error(tmp_path: Path):
    with pytest.raises(RuntimeError):
        with RotatingShardWriter(tmp_path, "u", 10, 1 << 30) as writer:
            writer.write(encode_sample(make_sample("v_c00000"), 90))
            assert list(tmp_path.glob("*.tar")) == []  # only the hidden .partial exists mid-shard
            assert [p.name for p in tmp_path.iterdir()] == [".u-00000.tar.partial"]
            raise RuntimeError("worker interrupted")
    assert list(tmp_path.iterdir()) == []


def test_shards_hold_the_members_webdataset_tarwriter_writes(tmp_path: Path):
    samples = [encode_sample(make_sample(f"v_c{index:05d}"), 90) for index in range(3)]
    with RotatingShardWriter(tmp_path, "u", 10, 1 << 30) as writer:
        for sample in samples:
            writer.write(sample)
    reference = tmp_path / "reference.tar"
    with wds.TarWriter(str(reference), mtime=0.0, encoder=False) as tar:
        for sample in samples:
            tar.write(sample)
    assert members(tmp_path / "u-00000.tar") == members(reference)


def members(path: Path) -> list[tuple]:
    with tarfile.open(path) as tar:
        return [(m.name, m.uname, m.gname, m.mode, int(m.mtime), tar.extractfile(m).read()) for m in tar]


def test_the_data_path_never_imports_torch():
    """Ray data workers and the CLI start in a fraction of a second only while torch stays out."""
    code = ("import sys, flows.cli, flows.build_dataset, tasks.unit, tasks.manifests, tasks.sources; "
            "print(sorted(m for m in ('torch', 'webdataset') if m in sys.modules))")
    imported = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert imported.strip() == "[]"


def test_file_problem_names_a_missing_resized_or_altered_file(tmp_path: Path):
    path = tmp_path / "shard.tar"
    write_atomic(path, b"abcdef")
    digest = sha256_file(path)
    assert digest == hashlib.sha256(b"abcdef").hexdigest()
    assert file_problem(path, digest, 6) is None and file_problem(path, digest) is None
    assert file_problem(path, digest, 7) == "size 6 != manifest 7"
    write_atomic(path, b"abcdeg")
    assert file_problem(path, digest, 6) == "sha256 differs from the manifest"
    assert file_problem(tmp_path / "gone.tar", digest, 6) == "missing"
