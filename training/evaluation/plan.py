"""Planning an evaluation: which clips to generate, with whose attribute, and every refusal before any work.

    plan = plan_evaluation(config)   # EvaluationError for a model, dataset, attribute or extractor file unusable

One pair per (evaluation clip, attribute) of the dataset's evaluation split, self transfer and, across videos,
cross transfer (`EvalItem`).

Triplet-backed cross items (`EvalConfig.triplets`, videos of `tasks.synthetic.write_triplets` built into the
dataset): a dataset video is a triplet's A, B or truth by its source file's name. The cross item of an A clip
borrows the attribute of a B pair and takes the guidance and the frames to match from a pair of the truth video
(A's motion wearing B's attribute; same head geometry, so the build's perception cuts it as it cuts A): the
generated clip and the portrait-reference copy are scored against those frames.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from data_specs.evaluation import CROSS, SELF, EvalConfig, Transfer
from data_specs.layout import OutputLayout
from tasks.synthetic import TripletSpec, read_triplets
from training.data import DatasetIndex, PairEntry

__all__ = ["EvalItem", "EvalPlan", "EvaluationError", "check_model", "plan_evaluation"]


class EvaluationError(ValueError):
    """An evaluation that cannot start: the message names the model, dataset, attribute or file."""


@dataclass(frozen=True)
class EvalItem:
    """One clip to generate: the portrait, motion and truth of `target`, the attribute of `attribute_from`; on a
    triplet, the motion and truth of `truth` instead (a pair of the triplet's truth video)."""

    target: PairEntry
    attribute_from: PairEntry
    transfer: Transfer
    truth: PairEntry | None = None


@dataclass
class EvalPlan:
    """The items to generate, the attributes they cover, and what the plan noticed (shown in the report)."""

    index: DatasetIndex
    items: list[EvalItem]
    attributes: list[str]
    notes: list[str] = field(default_factory=list)


def check_model(folder: str | Path) -> Path:
    """Refuse a folder that is not a saved `DurianPipeline` (its model_index.json names the class)."""
    folder = Path(folder)
    index = folder / "model_index.json"
    if not index.is_file():
        raise EvaluationError(f"model {folder} is not a saved DurianPipeline: it has no model_index.json")
    name = json.loads(index.read_text()).get("_class_name")
    if name != "DurianPipeline":
        raise EvaluationError(f"model {folder} is a saved {name}, not a DurianPipeline")
    return folder


def _check_extractor_files(config: EvalConfig) -> None:
    """Every configured extractor file exists (the transformers ones may also be hub ids, when online)."""
    paths = config.extractors
    for name in ("inception", "video", "lpips", "arcface"):
        if (path := getattr(paths, name)) is not None and not Path(path).is_file():
            raise EvaluationError(f"extractors.{name}: {path} is not a file")
    for name in ("clip", "dino"):
        if (source := getattr(paths, name)) is not None and Path(source).is_absolute() and not Path(source).exists():
            raise EvaluationError(f"extractors.{name}: {source} does not exist")


def plan_evaluation(config: EvalConfig) -> EvalPlan:
    """The clips to evaluate: one pair per (evaluation clip, attribute), self and cross transfer; raises
    EvaluationError / FileNotFoundError for a model, dataset, attribute or extractor file that cannot be used."""
    check_model(config.model)
    _check_extractor_files(config)
    index = DatasetIndex.open(config.dataset)
    if not index.validation:
        raise EvaluationError(f"dataset {config.dataset} has no evaluation split: every video is a training video "
                              "(build it with split.eval_fraction > 0 and enough videos)")
    chosen: dict[str, list[PairEntry]] = defaultdict(list)
    seen: set[tuple[str, str]] = set()
    for pair in index.validation_pairs(config.training_stage):  # by video, then key: the first pair of each clip
        if (pair.clip_id, pair.attribute) not in seen:
            seen.add((pair.clip_id, pair.attribute))
            chosen[pair.attribute].append(pair)
    if not chosen:
        raise EvaluationError(f"dataset {config.dataset} has no stage-{config.training_stage} samples in its "
                              "evaluation split")
    attributes = list(config.attributes) or sorted(chosen)
    missing = [a for a in attributes if a not in chosen]
    if missing:
        raise EvaluationError(f"no evaluation clips for attribute {', '.join(missing)} in {config.dataset} (it has "
                              f"{', '.join(f'{a}: {len(c)}' for a, c in sorted(chosen.items()))})")
    items, notes = [], []
    triplets = _TripletVideos.find(config, index, notes) if config.triplets else None
    for attribute in attributes:
        clips = _across_videos(chosen[attribute])[:config.max_clips_per_attribute]
        items += [EvalItem(clip, clip, SELF) for clip in clips]
        if not config.cross_transfer:
            continue
        videos = {c.video_id for c in clips}
        if len(videos) < 2:
            notes.append(f"{attribute}: no cross transfer (its evaluation clips are all from one video)")
            continue
        for i, clip in enumerate(clips):  # B of its triplet, or the next clip of another video, lends the attribute
            backed = triplets.item(clip, config.training_stage) if triplets else None
            donor = next(c for c in clips[i + 1:] + clips[:i] if c.video_id != clip.video_id)
            items.append(backed or EvalItem(clip, donor, CROSS))
    if triplets:
        backed = [i for i in items if i.truth is not None]
        notes.append(f"{len(backed)} cross clips are triplet-backed (scored against the truth of {config.triplets})")
        unused = sorted({spec.index for spec, role in triplets.role_of.values() if role == "a"}
                        - {triplets.role_of[i.target.video_id][0].index for i in backed})
        if unused:  # e.g. A does not wear the attribute: no clip of A has the region to regenerate
            notes.append(f"{len(unused)} triplets in the dataset back no clip (e.g. triplet {unused[0]}): their A "
                         "has no evaluation clip of the triplet's attribute (A lacks it, or the split or "
                         "max_clips_per_attribute left it out)")
    return EvalPlan(index=index, items=items, attributes=attributes, notes=notes)


@dataclass
class _TripletVideos:
    """The dataset's videos that are a triplet's A, B or truth (by their source file's name)."""

    index: DatasetIndex
    role_of: dict[str, tuple[TripletSpec, str]]  # video id -> (triplet, "a" | "b" | "truth")
    video_of: dict[tuple[int, str], str]  # (triplet index, role) -> video id

    @classmethod
    def find(cls, config: EvalConfig, index: DatasetIndex, notes: list[str]) -> _TripletVideos:
        folder = Path(config.triplets)
        if not (folder / "triplets.json").is_file():
            raise EvaluationError(f"triplets: {folder} has no triplets.json (written by durian make-videos "
                                  "--triplets)")
        roles = {spec.path(folder, role).name: (spec, role) for spec in read_triplets(folder)
                 for role in ("a", "b", "truth")}
        table = pq.read_table(OutputLayout(index.root).manifest("samples"), columns=["video_id", "source_path"])
        role_of = {}
        for video_id, source in set(zip(*table.to_pydict().values())):
            if (found := roles.get(str(source).rsplit("/", 1)[-1])) is not None:
                role_of[video_id] = found
        video_of = {(spec.index, role): video_id for video_id, (spec, role) in role_of.items()}
        incomplete = sorted({spec.index for spec, _ in roles.values()
                             if any((spec.index, r) not in video_of for r in ("a", "b", "truth"))})
        if incomplete:
            notes.append(f"{len(incomplete)} triplets have a video missing from the dataset (e.g. triplet "
                         f"{incomplete[0]}): their clips are not triplet-backed")
        leaked = sorted(video_id for (_, role), video_id in video_of.items()
                        if role == "truth" and video_id not in index.validation)
        if leaked:
            notes.append(f"{len(leaked)} triplet truth videos are in the training split (e.g. {leaked[0]}): "
                         "the model may have seen the answers")
        return cls(index, role_of, video_of)

    def item(self, clip: PairEntry, training_stage: int) -> EvalItem | None:
        """The triplet-backed cross item of `clip` when its video is a triplet's A lending that attribute."""
        spec, role = self.role_of.get(clip.video_id, (None, None))
        if role != "a" or spec.attribute != clip.attribute:
            return None
        donors, truths = ([p for p in self.index.pairs if p.stage == training_stage and p.attribute == clip.attribute
                           and p.video_id == self.video_of.get((spec.index, r))] for r in ("b", "truth"))
        if not donors or not truths:
            return None
        position = clip.clip_id.removeprefix(clip.video_id)  # the same clip of the truth video, if it has one
        truth = next((t for t in truths if t.clip_id.removeprefix(t.video_id) == position), truths[0])
        return EvalItem(clip, donors[0], CROSS, truth)


def _across_videos(clips: list[PairEntry]) -> list[PairEntry]:
    """Clips reordered so that videos take turns (each video's first clip, then each one's second, ...): a capped
    evaluation covers as many identities as it can, and cross transfer finds another video to borrow from."""
    by_video: dict[str, list[PairEntry]] = defaultdict(list)
    for clip in clips:
        by_video[clip.video_id].append(clip)
    rounds = max(len(v) for v in by_video.values())
    return [v[i] for i in range(rounds) for v in by_video.values() if i < len(v)]
