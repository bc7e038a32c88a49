"""The training-side reader of a `build-dataset` output: split, index, streaming loader and batches.

    index = DatasetIndex.open(config.data.dataset)
    index.check_fits(stage_run, config.model_resolution())        # before any worker starts
    loader = make_loader(index, config.data, stage_run, rank, world_size, seed=config.seed, start_batch=n)
    for batch in loader: ...                                       # TrainingBatch, forever
    checkpoint["batches"] = loader.batches                         # resume: make_loader(..., start_batch=n)

Split: the manifests' `split` column (by source video, `data_specs.split`): training reads `train` samples only;
validation during training and evaluation read `eval` samples, so no identity of theirs is ever trained on.

Stream (`PairStream`): an endless sequence of rounds. Round r shuffles the training shards with a generator
seeded by (seed, r) (the same on every rank) and deals them round-robin to the `world_size x workers` slots
(slot = worker * world_size + rank; with fewer shards than slots the list is cycled, so every slot reads at
least one shard per round and every rank produces batches forever). A slot keeps the pair samples of the
stage from training videos (and with `rebalance` accepts each with probability w_a / max w, drawn from a
generator seeded by (seed, r, slot)) and passes them through a shuffle buffer seeded by (seed, r, slot),
drained at the end of the round. Everything a slot keeps in a round is decided from the manifests, so the
number of samples of a round is known without opening a shard.

Position: the number of BATCHES the trainer took from the loader. DataLoader worker k of n serves batches
k, k + n, ... (it answers in turn); a loader built with `start_batch=N` gives worker k the role of worker
(k + N) % n, and that worker skips the batches it had already served: whole rounds by their manifest counts
(no I/O), then within a round raw tar members without decoding an image. So the batches from `start_batch=N`
equal batches N, N+1, ... of an uninterrupted loader with the same (seed, rank, world_size, workers, batch
size). Exact unless a shard was found corrupt in a skipped round, or a sample failed to decode.

Corrupt shards: every shard is read whole and its sha256 checked against the manifest before its samples are
used; a shard that is missing, does not match, or is not a readable tar is skipped with a warning and counted
in the next batch's `skipped_shards` (per worker, since the previous batch: sum them for a total).
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import tarfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from data_specs.balance import rebalance_weights
from data_specs.files import file_problem
from data_specs.images import images_to_tensor
from data_specs.layout import OutputLayout
from data_specs.sample import PairSample, decode_sample
from data_specs.schemas import read_table
from data_specs.split import EVAL
from data_specs.training import DataConfig, StageRun, TrainConfigError

__all__ = ["DatasetIndex", "PairEntry", "PairLoader", "PairStream", "TrainingBatch", "collate", "make_loader",
           "pins_batches", "read_pairs", "validation_samples"]

log = logging.getLogger(__name__)

_TARGET_PREFIX, _TARGET_SUFFIX = "target.", ".jpg"
_SHARD_ORDER, _SHUFFLE, _REBALANCE = 1, 2, 3  # seed-sequence tags: separate streams of random numbers
_MAX_EMPTY_ROUNDS = 10_000


# ---------------------------------------------------------------------------------------------- the index


@dataclass(frozen=True)
class PairEntry:
    """What the manifest says about one pair sample."""

    key: str
    shard: str
    video_id: str
    clip_id: str
    stage: int
    attribute: str
    targets: int  # target frames


@dataclass
class DatasetIndex:
    """The manifests of one dataset folder, read once: shards with their sha256, pair samples, the split.

    Plain Python data only, so it travels to DataLoader workers cheaply.
    """

    root: Path
    shard_sha256: dict[str, str]  # shard -> sha256, every shard of the manifest
    pairs: list[PairEntry]  # every pair sample, sorted by (shard, key)
    validation: frozenset[str]  # video ids of the evaluation split
    _first: dict[int, PairSample] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, root: str | Path, stages: Sequence[int] = ()) -> DatasetIndex:
        """Read the manifests under `root`; raise FileNotFoundError / ValueError for anything unusable.

        stages: training stages that must have training samples (e.g. those of the run).
        """
        root = Path(root)
        layout = OutputLayout(root)
        if not root.is_dir():
            raise FileNotFoundError(f"dataset folder {root} does not exist")
        for table in ("samples", "shards"):
            if not layout.manifest(table).is_file():
                raise FileNotFoundError(f"{root} has no {layout.manifest(table).relative_to(root)}: it is not the "
                                        "output of a completed build-dataset run")
        shards = read_table("shards", layout.manifest("shards")).select(["shard", "sha256"]).to_pylist()
        rows = read_table("samples", layout.manifest("samples")).select(
            ["sample_key", "shard", "video_id", "clip_id", "kind", "training_stage", "attribute", "fields",
             "split"]).to_pylist()
        pairs = sorted((PairEntry(key=r["sample_key"], shard=r["shard"], video_id=r["video_id"], clip_id=r["clip_id"],
                              stage=int(r["training_stage"]), attribute=r["attribute"] or "unknown",
                              targets=sum(f.startswith(_TARGET_PREFIX) and f.endswith(_TARGET_SUFFIX)
                                          for f in r["fields"]))
                        for r in rows if r["kind"] == "pair"), key=lambda p: (p.shard, p.key))
        if not pairs:
            raise ValueError(f"{root} has no training pairs ({len(rows)} clip samples): it was built without "
                             "training_samples")
        sha = {row["shard"]: row["sha256"] for row in shards}
        unknown = sorted({p.shard for p in pairs} - set(sha))
        if unknown:
            raise ValueError(f"{root}: samples name shards the shards manifest lacks: {', '.join(unknown[:5])}")
        held = frozenset(r["video_id"] for r in rows if r["kind"] == "pair" and r["split"] == EVAL)
        index = cls(root, sha, pairs, held)
        for stage in stages:
            index.require_stage(stage)
        return index

    # ------------------------------------------------------------------ what is in it

    @property
    def stages(self) -> list[int]:
        return sorted({p.stage for p in self.pairs})

    def training_pairs(self, stage: int) -> list[PairEntry]:
        """The stage's pair samples from training videos, sorted by (shard, key)."""
        return [p for p in self.pairs if p.stage == stage and p.video_id not in self.validation]

    def validation_pairs(self, stage: int) -> list[PairEntry]:
        """The stage's pair samples from validation videos, sorted by (video, key)."""
        return sorted((p for p in self.pairs if p.stage == stage and p.video_id in self.validation),
                      key=lambda p: (p.video_id, p.key))

    def training_shards(self, stage: int) -> list[str]:
        """Shards holding at least one training sample of the stage, sorted."""
        return sorted({p.shard for p in self.training_pairs(stage)})

    def require_stage(self, stage: int) -> None:
        """Raise ValueError unless the stage has training samples."""
        if not any(p.stage == stage for p in self.pairs):
            raise ValueError(f"{self.root} has no stage-{stage} samples (it has stage "
                             f"{', '.join(map(str, self.stages))}); build it with training_samples.pairs.stages "
                             f"including {stage}")
        if not self.training_pairs(stage):
            raise ValueError(f"{self.root}: every stage-{stage} sample is from an evaluation video; build with a "
                             "lower split.eval_fraction or more videos")

    def sample_frames(self, stage: int) -> int:
        """Target frames of the stage's samples (the fewest, should they differ)."""
        self.require_stage(stage)
        return min(p.targets for p in self.pairs if p.stage == stage)

    def first_sample(self, stage: int) -> PairSample:
        """The stage's first readable sample (corrupt shards are skipped): what the build wrote for the stage."""
        if stage not in self._first:
            self.require_stage(stage)
            for pair in (p for p in self.pairs if p.stage == stage):
                if raw := _read_shard(self.root, pair.shard, self.shard_sha256[pair.shard], {pair.key}):
                    self._first[stage] = decode_sample(raw[0])
                    break
            else:
                raise ValueError(f"{self.root}: every shard of the stage-{stage} samples is missing or corrupt")
        return self._first[stage]

    def image_size(self, stage: int) -> tuple[int, int]:
        """(height, width) of the stage's crops."""
        return tuple(self.first_sample(stage).targets.shape[1:3])

    def check_fits(self, stage_run: StageRun, resolution: int | None) -> None:
        """Raise TrainConfigError (a ValueError) when the stage cannot train on this dataset."""
        self.require_stage(stage_run.stage)
        if stage_run.stage == 2 and stage_run.frames > (have := self.sample_frames(2)):
            raise TrainConfigError(f"stage 2 trains on {stage_run.frames} frames but the dataset's stage-2 "
                                   f"samples have {have} target frames (training_samples.pairs.frames)")
        if resolution is not None:
            height, width = self.image_size(stage_run.stage)
            if (height, width) != (resolution, resolution):
                raise TrainConfigError(f"training resolution {resolution} does not match the dataset's "
                                       f"{height} x {width} crops")

    # ------------------------------------------------------------------ shards

    def verify(self) -> list[str]:
        """Shards holding pair samples whose file is missing or whose sha256 differs from the manifest."""
        bad = []
        for shard in sorted({p.shard for p in self.pairs}):
            try:
                problem = file_problem(OutputLayout(self.root).shard(shard), self.shard_sha256[shard])
            except OSError as err:
                problem = str(err)
            if problem is not None:
                bad.append(shard)
        return bad

    def exclude(self, shards: Iterable[str]) -> DatasetIndex:
        """This index without the samples of `shards` (e.g. those `verify` found bad)."""
        drop = set(shards)
        return replace(self, pairs=[p for p in self.pairs if p.shard not in drop], _first={})


def _read_shard(root: Path, shard: str, sha256: str, keys: set[str]) -> list[dict[str, object]] | None:
    """The raw samples (`{"__key__": key, field: bytes}`) of `keys` in tar order; None if the shard is bad.

    The file is read whole and checked against its manifest hash first, so a damaged shard gives nothing
    rather than a part.
    """
    path = OutputLayout(root).shard(shard)
    try:
        data = path.read_bytes()
    except OSError as err:
        log.warning("skipping shard %s: %s", shard, err)
        return None
    if hashlib.sha256(data).hexdigest() != sha256:
        log.warning("skipping shard %s: its sha256 does not match the manifest (damaged or rewritten)", shard)
        return None
    samples: dict[str, dict[str, object]] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, _, name = member.name.rpartition("/")[2].partition(".")
                if key in keys:
                    samples.setdefault(key, {"__key__": key})[name] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as err:
        log.warning("skipping shard %s: not a readable tar (%s)", shard, err)
        return None
    if missing := keys - samples.keys():
        log.warning("shard %s lacks %d samples the manifest puts there (e.g. %s)", shard, len(missing),
                    min(missing))
    return list(samples.values())


# ---------------------------------------------------------------------------------------------- batches


@dataclass
class TrainingBatch:
    """B decoded pair samples as tensors, in the layouts `DurianModel` takes.

    targets (B, F, 3, H, W) float32 in [-1, 1]; pose_frames (B, 3, F, H, W) in [0, 1]; references
    (B, 3, H, W) in [0, 1] with masks (B, 1, H, W) float 0/1; portrait_image (B, 3, H, W) in [0, 1] (the
    unmasked portrait reference, for the identity encoder only) and portrait_keypoints (B, 5, 2) numpy
    float32 (its ArcFace points, in its pixels); keypoints (B, F, K, 3) and latents (NAME -> float16 tensors
    as stored, `target` (B, F, C, h, w)) when every sample has them. skipped_shards: corrupt shards this
    batch's worker skipped since its previous batch; skipped_samples: samples that failed to decode.
    """

    targets: torch.Tensor
    pose_frames: torch.Tensor
    attribute_ref: torch.Tensor
    attribute_mask: torch.Tensor
    portrait_ref: torch.Tensor
    portrait_mask: torch.Tensor
    portrait_image: torch.Tensor
    portrait_keypoints: np.ndarray
    keys: list[str]
    attributes: list[str]
    video_ids: list[str]
    stage: int
    keypoints: torch.Tensor | None = None
    latents: dict[str, torch.Tensor] = field(default_factory=dict)
    skipped_shards: int = 0
    skipped_samples: int = 0

    def __len__(self) -> int:
        return len(self.keys)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> TrainingBatch:
        """A copy with every tensor on `device`."""
        return self._map_tensors(lambda tensor: tensor.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> TrainingBatch:
        """A copy with every tensor in page-locked memory (what a DataLoader with `pin_memory` calls), so that
        the step's copies to the GPU do not wait for it."""
        return self._map_tensors(torch.Tensor.pin_memory)

    def _map_tensors(self, function: Callable[[torch.Tensor], torch.Tensor]) -> TrainingBatch:
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                moved[f.name] = function(value)
            elif f.name == "latents":
                moved[f.name] = {k: function(v) for k, v in value.items()}
        return replace(self, **moved)


def _images(stack: np.ndarray) -> torch.Tensor:
    """(..., H, W, 3) uint8 -> (..., 3, H, W) float32 in [0, 1], contiguous (what the collated batch holds)."""
    return images_to_tensor(stack).contiguous()


def _masks(stack: np.ndarray) -> torch.Tensor:
    """(B, H, W) bool -> (B, 1, H, W) float32."""
    return torch.from_numpy(np.ascontiguousarray(stack)).float().unsqueeze(1)


def collate(samples: Sequence[PairSample], frames: int | None = None, skipped_shards: int = 0,
            skipped_samples: int = 0) -> TrainingBatch:
    """Decoded samples -> a `TrainingBatch`; `frames` keeps the first `frames` targets of each sample."""
    if not samples:
        raise ValueError("cannot collate an empty batch")
    f = frames or min(len(s.targets) for s in samples)
    if any(len(s.targets) < f for s in samples):
        raise ValueError(f"asked for {f} target frames, a sample has {min(len(s.targets) for s in samples)}")
    targets = _images(np.stack([s.targets[:f] for s in samples])).mul_(2).sub_(1)
    pose = _images(np.stack([s.pose_frames[:f] for s in samples])).transpose(1, 2).contiguous()
    batch = TrainingBatch(
        targets=targets, pose_frames=pose,
        attribute_ref=_images(np.stack([s.attribute_ref for s in samples])),
        attribute_mask=_masks(np.stack([s.attribute_mask for s in samples])),
        portrait_ref=_images(np.stack([s.portrait_ref for s in samples])),
        portrait_mask=_masks(np.stack([s.portrait_mask for s in samples])),
        keys=[s.key for s in samples], attributes=[s.meta.attribute for s in samples],
        video_ids=[s.meta.video_id for s in samples], stage=samples[0].meta.training_stage,
        portrait_image=_images(np.stack([s.portrait_image for s in samples])),
        portrait_keypoints=np.stack([s.portrait_keypoints for s in samples]).astype(np.float32),
        skipped_shards=skipped_shards, skipped_samples=skipped_samples)
    if all(s.keypoints is not None for s in samples):
        batch.keypoints = torch.from_numpy(np.stack([s.keypoints[:f] for s in samples]).astype(np.float32))
    names = set(samples[0].latents)
    if names and all(set(s.latents) == names for s in samples):
        batch.latents = {name: torch.from_numpy(np.stack([s.latents[name][:f] if name == "target"
                                                          else s.latents[name] for s in samples]))
                         for name in sorted(names)}
    return batch


@dataclass
class _StreamItem:
    """What a stream worker yields per batch: decoded samples and what it skipped on the way."""

    samples: list[PairSample]
    skipped_shards: int
    skipped_samples: int


def _collate_item(item: _StreamItem, frames: int | None) -> TrainingBatch:
    return collate(item.samples, frames, item.skipped_shards, item.skipped_samples)


# ---------------------------------------------------------------------------------------------- the stream


def _batches_before(start_batch: int, worker: int, workers: int) -> int:
    """How many of batches 0 .. start_batch - 1 worker `worker` of `workers` served (batch j: worker j % n)."""
    return max(0, -(-(start_batch - worker) // workers))


class PairStream(IterableDataset):
    """Endless batches of one stage's training pairs for one rank; see the module docstring.

    Yields one item per batch (the DataLoader runs with `batch_size=None`), so each worker's batches are
    whole and the DataLoader's turn-taking decides the order.
    """

    def __init__(self, index: DatasetIndex, stage: int, batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, shuffle_buffer: int = 64, rebalance: bool = False,
                 start_batch: int = 0) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        index.require_stage(stage)
        self.root, self.stage, self.batch_size, self.seed = index.root, stage, batch_size, seed
        self.rank, self.world_size, self.shuffle_buffer = rank, world_size, max(1, shuffle_buffer)
        self.start_batch = start_batch
        pairs = index.training_pairs(stage)
        self.shards = sorted({p.shard for p in pairs})
        self.sha256 = {shard: index.shard_sha256[shard] for shard in self.shards}
        by_shard: dict[str, list[PairEntry]] = defaultdict(list)
        for pair in pairs:
            by_shard[pair.shard].append(pair)
        self.candidates = {shard: sorted(by_shard[shard], key=lambda p: p.key) for shard in self.shards}
        self.accept: dict[str, float] | None = None
        if rebalance:
            weights = rebalance_weights(Counter(p.attribute for p in pairs))
            top = max(weights.values())
            self.accept = {attribute: w / top for attribute, w in weights.items()}

    # ------------------------------------------------------------------ the plan (manifests only)

    def _rng(self, *tags: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, *tags])

    def plan(self, round_: int, slot: int, slots: int) -> list[tuple[str, list[str]]]:
        """The shards slot `slot` of `slots` reads in round `round_`, each with the keys it keeps."""
        order = [self.shards[i] for i in self._rng(_SHARD_ORDER, round_).permutation(len(self.shards))]
        extended = [order[i % len(order)] for i in range(max(len(order), slots))]
        mine = extended[slot::slots]
        rng = self._rng(_REBALANCE, round_, slot) if self.accept else None
        plan = []
        for shard in mine:
            pairs = self.candidates[shard]
            if rng is not None:
                draws = rng.random(len(pairs))
                pairs = [p for p, u in zip(pairs, draws) if u < self.accept[p.attribute]]
            plan.append((shard, [p.key for p in pairs]))
        return plan

    # ------------------------------------------------------------------ reading

    def _raw_samples(self, round_: int, slot: int, slots: int) -> Iterator[dict[str, object] | None]:
        """Raw samples of the rounds from `round_` on, in stream order; None marks a skipped corrupt shard."""
        while True:
            shuffle = self._rng(_SHUFFLE, self.world_size, slots, slot, round_)
            buffer: list[dict[str, object]] = []
            for shard, keys in self.plan(round_, slot, slots):
                if not keys:
                    continue
                raws = _read_shard(self.root, shard, self.sha256[shard], set(keys))
                if raws is None:
                    yield None
                    continue
                for raw in raws:
                    buffer.append(raw)
                    if len(buffer) >= self.shuffle_buffer:
                        yield _pop_random(buffer, shuffle)
            while buffer:
                yield _pop_random(buffer, shuffle)
            round_ += 1

    def batches(self, worker: int, workers: int) -> Iterator[_StreamItem]:
        """Worker `worker` of `workers`' batches from its first one not before `start_batch`."""
        slots, slot = workers * self.world_size, worker * self.world_size + self.rank
        skip = _batches_before(self.start_batch, worker, workers) * self.batch_size
        round_, empty = 0, 0
        while True:  # whole rounds, by their manifest counts
            count = sum(len(keys) for _, keys in self.plan(round_, slot, slots))
            empty = 0 if count else empty + 1
            if empty > _MAX_EMPTY_ROUNDS:
                raise RuntimeError(f"rank {self.rank} worker {worker}: no stage-{self.stage} sample in "
                                   f"{_MAX_EMPTY_ROUNDS} rounds")
            if skip < count:
                break
            skip, round_ = skip - count, round_ + 1
        samples: list[PairSample] = []
        skipped_shards = skipped_samples = 0
        fruitless = 0  # consecutive corrupt shards with no good sample in between
        for raw in self._raw_samples(round_, slot, slots):
            if raw is None:
                fruitless += 1
                if fruitless > 10 * max(1, len(self.shards)):
                    raise RuntimeError(f"rank {self.rank} worker {worker}: every shard it reads is corrupt")
                skipped_shards += skip == 0
                continue
            fruitless = 0
            if skip:
                skip -= 1  # fast-forward: no image is decoded
                continue
            try:
                sample = decode_sample(raw)
            except Exception as err:  # noqa: BLE001 - any damage to one sample must not stop training
                log.warning("skipping sample %s: %s", raw.get("__key__"), err)
                skipped_samples += 1
                continue
            samples.append(sample)
            if len(samples) == self.batch_size:
                yield _StreamItem(samples, skipped_shards, skipped_samples)
                samples, skipped_shards, skipped_samples = [], 0, 0

    def __iter__(self) -> Iterator[_StreamItem]:
        info = get_worker_info()
        worker_id, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        # The DataLoader asks its worker 0 first: give it the role of the worker that serves `start_batch`.
        return self.batches((worker_id + self.start_batch) % workers, workers)


def _pop_random(buffer: list, rng: np.random.Generator) -> object:
    """Remove and return a random element (swap with the last, pop)."""
    i = int(rng.integers(len(buffer)))
    buffer[i], buffer[-1] = buffer[-1], buffer[i]
    return buffer.pop()


# ---------------------------------------------------------------------------------------------- the loader


class PairLoader:
    """An endless iterator of `TrainingBatch`es that counts the batches taken (the resume position)."""

    def __init__(self, loader: DataLoader, stream: PairStream, workers: int) -> None:
        self.loader, self.stream, self.workers = loader, stream, workers
        self.batches = stream.start_batch
        self._iterator: Iterator[TrainingBatch] | None = None

    def __iter__(self) -> PairLoader:
        return self

    def __next__(self) -> TrainingBatch:
        if self._iterator is None:
            self._iterator = iter(self.loader)
        batch = next(self._iterator)
        self.batches += 1
        return batch


def make_loader(index: DatasetIndex, config: DataConfig, stage_run: StageRun, rank: int = 0, world_size: int = 1,
                seed: int = 0, start_batch: int = 0, pin_memory: bool = False) -> PairLoader:
    """The rank's endless loader of `config.batch_size`-sample batches for `stage_run`.

    seed: the same on every rank (it orders the shards all ranks share out). start_batch: batches this rank
    already took (`PairLoader.batches`); resuming is exact with the same seed, world size,
    `loader_workers` and batch size. pin_memory: batches in page-locked memory (when training on a GPU: see
    `pins_batches`), so their copies to the device are asynchronous.
    """
    index.check_fits(stage_run, None)
    if config.verify_shards and (bad := index.verify()):
        log.warning("%d shards do not match their manifest hash and are left out: %s", len(bad), ", ".join(bad))
        index = index.exclude(bad)
    stream = PairStream(index, stage_run.stage, config.batch_size, seed, rank, world_size, config.shuffle_buffer,
                        config.rebalance, start_batch)
    slots = world_size * max(1, config.loader_workers)
    if len(stream.shards) < slots:
        log.warning("%d training shards for %d readers (ranks x loader workers): shards are read by several "
                    "ranks in a round, so ranks see some of the same samples", len(stream.shards), slots)
    workers = config.loader_workers
    frames = stage_run.frames if stage_run.stage == 2 else 1
    loader = DataLoader(stream, batch_size=None, num_workers=workers, persistent_workers=workers > 0,
                        collate_fn=functools.partial(_collate_item, frames=frames),
                        prefetch_factor=2 if workers else None, pin_memory=pin_memory)
    return PairLoader(loader, stream, max(1, workers))


def pins_batches(device: torch.device) -> bool:
    """Whether a loader feeding a step on `device` pins its batches: on CUDA, where a copy from pageable memory
    blocks the host until it is done (the step's copies are `non_blocking`)."""
    return device.type == "cuda"


def validation_samples(index: DatasetIndex, stage: int, count: int) -> list[PairSample]:
    """The first `count` samples of the stage from validation videos (by video, then key), decoded.

    Empty when nothing is held out; samples of corrupt shards are left out (with a warning).
    """
    return read_pairs(index, index.validation_pairs(stage)[:count])


def read_pairs(index: DatasetIndex, pairs: Sequence[PairEntry]) -> list[PairSample]:
    """The given pair samples decoded, in order, reading each shard once; those of corrupt shards are left out
    (with a warning)."""
    by_shard: dict[str, set[str]] = defaultdict(set)
    for pair in pairs:
        by_shard[pair.shard].add(pair.key)
    decoded: dict[str, PairSample] = {}
    for shard, keys in by_shard.items():
        for raw in _read_shard(index.root, shard, index.shard_sha256[shard], keys) or []:
            decoded[str(raw["__key__"])] = decode_sample(raw)
    return [decoded[p.key] for p in pairs if p.key in decoded]
