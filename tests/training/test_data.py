"""The training loader: split by video, batches, ranks and workers, exact resume, corrupt shards, refusals."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from data_specs.layout import OutputLayout
from data_specs.split import SplitConfig, split_of
from data_specs.training import DataConfig, StageRun
from tests.samples.samples_testing import perceived_clip
from tests.training.training_testing import make_pairs, write_pair_dataset, write_samples
from training.data import DatasetIndex, make_loader, validation_samples

SIZE, FRAMES = 32, 4
STAGE1, STAGE2 = StageRun(stage=1, steps=1), StageRun(stage=2, steps=1, frames=2)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 videos x 4 pairs per stage, 3 samples per shard (shards mix videos)."""
    return write_pair_dataset(tmp_path_factory.mktemp("data") / "ds", clips=8, size=SIZE, frames=FRAMES,
                              pairs_per_clip=4, hat_clips=(0, 3), samples_per_shard=3, eval_clips=(2, 5))


def data(dataset: Path, **overrides) -> DataConfig:
    return DataConfig(**{"dataset": str(dataset), "batch_size": 2, "shuffle_buffer": 4, "loader_workers": 0,
                         **overrides})


def loader(dataset: Path, stage_run: StageRun = STAGE1, rank: int = 0, world_size: int = 1, start_batch: int = 0,
           **overrides):
    config = data(dataset, **overrides)
    index = DatasetIndex.open(dataset)
    return make_loader(index, config, stage_run, rank, world_size, seed=3, start_batch=start_batch)


def take(batches, n: int) -> list:
    return list(itertools.islice(batches, n))


# ------------------------------------------------------------------------------------------ split


def test_the_split_is_by_video_stable_and_roughly_the_fraction():
    videos = [f"video{i:04d}" for i in range(2000)]
    config = SplitConfig(eval_fraction=0.1)
    held = {v for v in videos if split_of(v, config) == "eval"}
    assert 0.08 < len(held) / len(videos) < 0.12
    assert {v for v in reversed(videos) if split_of(v, config) == "eval"} == held  # order-free
    more = videos + [f"new{i}" for i in range(500)]
    assert {v for v in more if split_of(v, config) == "eval"} & set(videos) == held  # adding videos moves none
    assert {v for v in videos if split_of(v, SplitConfig(eval_fraction=0.1, seed=1)) == "eval"} != held
    assert all(split_of(v, SplitConfig(eval_fraction=0.0)) == "train" for v in videos)


def test_no_validation_video_reaches_training_and_validation_samples_are_fixed(dataset: Path):
    index = DatasetIndex.open(dataset)
    assert index.validation == {"vid02", "vid05"}  # the manifests' split column
    seen = {v for batch in take(loader(dataset), 30) for v in batch.video_ids}
    assert seen and not seen & index.validation
    assert seen == {p.video_id for p in index.training_pairs(1)}
    held = validation_samples(index, 2, 3)
    assert len(held) == 3 and {s.meta.video_id for s in held} <= index.validation
    assert all(s.meta.training_stage == 2 for s in held)
    assert [s.key for s in held] == [s.key for s in validation_samples(index, 2, 3)]


# ------------------------------------------------------------------------------------------ batches


def test_stage_1_batch_shapes_and_ranges(dataset: Path):
    batch = next(loader(dataset))
    assert batch.targets.shape == (2, 1, 3, SIZE, SIZE) and batch.targets.dtype == torch.float32
    assert -1 <= batch.targets.min() < 0 < batch.targets.max() <= 1  # [0, 255] -> [-1, 1]
    assert batch.pose_frames.shape == (2, 3, 1, SIZE, SIZE)
    assert 0 <= batch.pose_frames.min() and batch.pose_frames.max() <= 1
    for name in ("attribute", "portrait"):
        ref, mask = getattr(batch, f"{name}_ref"), getattr(batch, f"{name}_mask")
        assert ref.shape == (2, 3, SIZE, SIZE) and mask.shape == (2, 1, SIZE, SIZE)
        assert 0 <= ref.min() and ref.max() <= 1 and set(mask.unique().tolist()) <= {0.0, 1.0}
    assert (batch.attribute_ref * (1 - batch.attribute_mask)).abs().max() == 0  # zero outside M_attr
    assert (batch.portrait_ref * batch.portrait_mask).abs().max() == 0  # zero inside M_port_train
    assert batch.keypoints.shape[:2] == (2, 1) and batch.stage == 1 and batch.skipped_shards == 0
    assert len(batch.keys) == len(batch.attributes) == len(batch.video_ids) == 2
    assert batch.portrait_image.shape == (2, 3, SIZE, SIZE) and 0 <= batch.portrait_image.min()
    assert (batch.portrait_image * batch.portrait_mask).abs().max() > 0  # unmasked: shows what the ref hides
    assert batch.portrait_keypoints.shape == (2, 5, 2) and batch.portrait_keypoints.dtype == np.float32


def test_stage_2_batches_keep_the_first_frames(dataset: Path):
    batch = next(loader(dataset, STAGE2))
    assert batch.targets.shape == (2, 2, 3, SIZE, SIZE) and batch.pose_frames.shape == (2, 3, 2, SIZE, SIZE)
    assert batch.stage == 2 and batch.keypoints.shape[1] == 2
    index = DatasetIndex.open(dataset)
    full = next(s for s in index.training_pairs(2) if s.key == batch.keys[0])
    assert full.targets == FRAMES
    everything = dataclasses.replace(index, validation=frozenset(p.video_id for p in index.pairs))
    first = next(s for s in validation_samples(everything, 2, 100) if s.key == batch.keys[0])  # decoded whole
    np.testing.assert_allclose(batch.targets[0].numpy(), first.targets[:2].transpose(0, 3, 1, 2) / 127.5 - 1,
                               atol=1e-6)


# ------------------------------------------------------------------------------------------ ranks, workers, resume


@pytest.mark.parametrize("workers", [0, 1])
def test_every_rank_gets_batches_forever_and_ranks_differ(dataset: Path, workers: int):
    index = DatasetIndex.open(dataset)
    per_round = len(index.training_pairs(1))
    runs = [take(loader(dataset, rank=rank, world_size=2, loader_workers=workers), per_round) for rank in (0, 1)]
    assert all(len(run) == per_round for run in runs)  # two rounds' worth each: they wrap around
    assert all(len(batch) == 2 for run in runs for batch in run)
    first = [{k for batch in run[:2] for k in batch.keys} for run in runs]
    assert not first[0] & first[1]  # in a round the ranks read different shards
    assert [b.keys for b in runs[0]] != [b.keys for b in runs[1]]


@pytest.mark.parametrize(("workers", "start"), [(0, 7), (2, 9)])
def test_resuming_gives_exactly_the_batches_that_would_have_come(dataset: Path, workers: int, start: int):
    kwargs = {"stage_run": STAGE2, "rank": 1, "world_size": 2, "loader_workers": workers, "rebalance": True}
    whole = take(loader(dataset, **kwargs), start + 4)  # crosses round boundaries
    resumed_loader = loader(dataset, start_batch=start, **kwargs)
    resumed = take(resumed_loader, 4)
    assert resumed_loader.batches == start + 4
    for a, b in zip(whole[start:], resumed, strict=True):
        assert a.keys == b.keys
        torch.testing.assert_close(a.targets, b.targets, rtol=0, atol=0)
        torch.testing.assert_close(a.portrait_ref, b.portrait_ref, rtol=0, atol=0)
    assert [b.keys for b in take(loader(dataset, **kwargs), start + 4)] == [b.keys for b in whole]


def test_a_corrupt_shard_is_skipped_counted_and_the_stream_goes_on(dataset: Path, tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture):
    copy = tmp_path / "ds"
    shutil.copytree(dataset, copy)
    index = DatasetIndex.open(copy)
    shard = index.training_shards(1)[1]
    path = OutputLayout(copy).shard(shard)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2: len(raw) // 2 + 64] = b"\xff" * 64
    path.write_bytes(bytes(raw))
    assert index.verify() == [shard]
    lost = {p.key for p in index.training_pairs(1) if p.shard == shard}
    with caplog.at_level(logging.WARNING, logger="training.data"):
        batches = take(loader(copy), 2 * len(index.training_pairs(1)))
    assert sum(b.skipped_shards for b in batches) >= 2  # once per round
    assert any(shard in r.getMessage() and "sha256" in r.getMessage() for r in caplog.records)
    keys = {k for b in batches for k in b.keys}
    assert not keys & lost and keys == {p.key for p in index.training_pairs(1)} - lost
    clean = take(loader(copy, verify_shards=True), 10)  # verified up front: left out, nothing to skip
    assert sum(b.skipped_shards for b in clean) == 0


def test_rebalancing_evens_out_a_skewed_dataset(tmp_path: Path):
    root = write_pair_dataset(tmp_path / "skewed", clips=6, size=16, pairs_per_clip=4, hat_clips=(0,),
                              stages=(1,), samples_per_shard=4)
    index = DatasetIndex.open(root)
    counts = Counter(p.attribute for p in index.training_pairs(1))
    assert counts["hair"] >= 5 * counts["hat"] > 0
    seen = Counter(a for b in take(loader(root, batch_size=4, rebalance=True,
                                          shuffle_buffer=8), 60) for a in b.attributes)
    assert abs(seen["hair"] - seen["hat"]) <= 0.25 * max(seen.values()), seen


# ------------------------------------------------------------------------------------------ refusals


def test_unusable_datasets_are_refused_with_clear_messages(dataset: Path, tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        DatasetIndex.open(tmp_path / "nowhere")
    (tmp_path / "half").mkdir()
    with pytest.raises(FileNotFoundError, match="not the output of a completed build-dataset"):
        DatasetIndex.open(tmp_path / "half")
    clips = tmp_path / "clips"
    write_samples(clips, [perceived_clip(frames=2, size=16)])
    with pytest.raises(ValueError, match="built without training_samples"):
        DatasetIndex.open(clips)
    only_one = write_samples(tmp_path / "stage1", make_pairs(clips=2, size=16, stages=(1,)))
    with pytest.raises(ValueError, match="no stage-2 samples"):
        DatasetIndex.open(only_one, stages=(1, 2))
    index = DatasetIndex.open(dataset)
    with pytest.raises(ValueError, match=r"stage 2 trains on 6 frames .* have 4 target frames"):
        index.check_fits(StageRun(stage=2, steps=1, frames=6), SIZE)
    with pytest.raises(ValueError, match="training resolution 64 does not match the dataset's 32 x 32 crops"):
        index.check_fits(STAGE1, 64)
    index.check_fits(StageRun(stage=2, steps=1, frames=FRAMES), SIZE)
