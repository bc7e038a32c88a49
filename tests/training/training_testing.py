"""A small training dataset written directly (no flow): pair samples in shards plus the samples/shards manifests.

`write_pair_dataset` lays a folder out like a `build-dataset` output with `training_samples` (the files the
training loader reads), in well under a second per clip, so training tests need neither Prefect nor Ray.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from data_specs.layout import OutputLayout
from data_specs.lineage import Lineage, Stamp
from data_specs.sample import PairSample, Sample, encode_sample
from data_specs.schemas import ShardRow, to_table, write_table_atomic
from data_specs.split import EVAL, TRAIN
from data_specs.training_samples import AugmentConfig, ExpansionConfig, PairConfig, TrainingSamplesConfig
from tasks.shards import RotatingShardWriter
from tasks.unit import sample_row
from tests.samples.samples_testing import perceived_clip, sample_processor

STAMP = Stamp(config_hash="c0ffee", code_version="test", unit_id="u0")


def make_pairs(clips: int = 6, size: int = 32, frames: int = 4, pairs_per_clip: int = 2,
               hat_clips: tuple[int, ...] = (), stages: tuple[int, ...] = (1, 2)) -> list[PairSample]:
    """Pair samples of `clips` clips, one source video each (`vid00`, `vid01`, ...).

    Clip i shows hair in every frame and, if i is in `hat_clips`, a hat too (its pairs then alternate between
    the two attributes); stage-2 samples have `frames` targets.
    """
    config = TrainingSamplesConfig(
        pairs=PairConfig(pairs_per_clip=pairs_per_clip, stages=stages, frames=frames, min_ref_distance=2,
                         references={"scope": "clip"}),
        expansion=ExpansionConfig(mode="none"), augment=AugmentConfig(enabled=False))
    processor = sample_processor(config)
    samples: list[PairSample] = []
    clip_frames = max(frames, 3) + 2
    for i in range(clips):
        hat = tuple(range(clip_frames)) if i in hat_clips else ()
        clip = perceived_clip(frames=clip_frames, size=size, hat_frames=hat, seed=i, key=f"vid{i:02d}_c00000")
        samples += processor(clip)
    return samples


def write_samples(root: Path, samples: list[Sample], samples_per_shard: int = 4,
                  eval_videos: Collection[str] = ()) -> Path:
    """Write `samples` into shards under `root` with their `samples` and `shards` manifests (shards last);
    the samples of `eval_videos` are in the evaluation split."""
    layout = OutputLayout(Path(root))
    layout.shards.mkdir(parents=True, exist_ok=True)
    layout.manifests.mkdir(parents=True, exist_ok=True)
    rows = []
    with RotatingShardWriter(layout.shards, "u0-test", samples_per_shard, 1 << 30) as writer:
        for sample in samples:
            shard = writer.write(encode_sample(sample, jpeg_quality=95))
            lineage = Lineage(source_path=sample.meta.source_path, content_sha256=sample.meta.content_sha256,
                              **STAMP.columns())
            rows.append(sample_row(sample, shard, lineage, EVAL if sample.meta.video_id in eval_videos else TRAIN))
    shards = [ShardRow(shard=r.shard, sha256=r.sha256, size_bytes=r.size_bytes, num_samples=r.num_samples,
                       **STAMP.columns()) for r in writer.records]
    write_table_atomic(to_table("samples", rows), layout.manifest("samples"))
    write_table_atomic(to_table("shards", shards), layout.manifest("shards"))
    return Path(root)


def write_pair_dataset(root: Path, clips: int = 6, size: int = 32, frames: int = 4, pairs_per_clip: int = 2,
                       hat_clips: tuple[int, ...] = (), stages: tuple[int, ...] = (1, 2),
                       samples_per_shard: int = 4, eval_clips: tuple[int, ...] = ()) -> Path:
    """A dataset folder of pair samples from `clips` videos (see `make_pairs`), the videos of `eval_clips` in
    the evaluation split; returns `root`."""
    samples = make_pairs(clips, size, frames, pairs_per_clip, hat_clips, stages)
    return write_samples(root, samples, samples_per_shard, {f"vid{i:02d}" for i in eval_clips})
