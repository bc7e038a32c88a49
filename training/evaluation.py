"""Evaluation of a saved `DurianPipeline` on a dataset's evaluation split: plan, generate and measure, summarise.

    plan = plan_evaluation(config)                  # every refusal happens here, before any work
    results = Evaluator(config, plan.index).evaluate(plan.items[i:j])   # per worker (a Ray actor), per chunk
    report = summarise(config, plan, results)       # per-attribute table, FID, FVD
    write_report(config, report)                    # Parquet, Markdown, the worst/best video grid

Self transfer reconstructs each clip with `training.reconstruction` (the code path of the validation pass);
every metric is `training.metrics`' and every network `training.extractors`'. A clip that fails becomes a row
with status "failed" and its reason; the others are evaluated.

Triplet-backed cross items (`EvalConfig.triplets`, videos of `tasks.synthetic.write_triplets` built into the
dataset): a dataset video is a triplet's A, B or truth by its source file's name. The cross item of an A clip
borrows the attribute of a B pair and takes the guidance and the frames to match from a pair of the truth video
(A's motion wearing B's attribute; same head geometry, so the build's perception cuts it as it cuts A): the
generated clip and the portrait-reference copy are scored against those frames.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from data_specs.evaluation import EVAL_CLIPS, PAPER_HAIR_SELF_TRANSFER, TRIPLET_METRICS, EvalConfig
from data_specs.files import publishing
from data_specs.layout import OutputLayout
from data_specs.perception import KEYPOINT_LAYOUTS, arcface_points
from data_specs.sample import PairSample
from tasks.synthetic import TripletSpec, read_triplets
from training.data import DatasetIndex, PairEntry, read_pairs
from training.reconstruction import comparison_columns, generate, images

__all__ = ["ClipResult", "EvalItem", "EvalPlan", "EvalReport", "EvaluationError", "Evaluator", "check_model",
           "failed", "plan_evaluation", "summarise", "write_report"]

log = logging.getLogger(__name__)

SELF, CROSS = "self", "cross"
TABLE_FILE, SUMMARY_FILE, GRID_FILE, SUMMARY_JSON = "clips.parquet", "summary.md", "grid.mp4", "summary.json"
GENERATED_DIR = "generated"


class EvaluationError(ValueError):
    """An evaluation that cannot start: the message names the model, dataset, attribute or file."""


@dataclass(frozen=True)
class EvalItem:
    """One clip to generate: the portrait, motion and truth of `target`, the attribute of `attribute_from`; on a
    triplet, the motion and truth of `truth` instead (a pair of the triplet's truth video)."""

    target: PairEntry
    attribute_from: PairEntry
    transfer: str  # self | cross
    truth: PairEntry | None = None


@dataclass
class EvalPlan:
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
    for pair in index.validation_pairs(config.stage):  # by video, then key: the first pair of each clip
        if (pair.clip_id, pair.attribute) not in seen:
            seen.add((pair.clip_id, pair.attribute))
            chosen[pair.attribute].append(pair)
    if not chosen:
        raise EvaluationError(f"dataset {config.dataset} has no stage-{config.stage} samples in its evaluation split")
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
            backed = triplets.item(clip, config.stage) if triplets else None
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
        import pyarrow.parquet as pq

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

    def item(self, clip: PairEntry, stage: int) -> EvalItem | None:
        """The triplet-backed cross item of `clip` when its video is a triplet's A lending that attribute."""
        spec, role = self.role_of.get(clip.video_id, (None, None))
        if role != "a" or spec.attribute != clip.attribute:
            return None
        donors, truths = ([p for p in self.index.pairs if p.stage == stage and p.attribute == clip.attribute
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


# ---------------------------------------------------------------------------------------------- measuring


@dataclass
class ClipResult:
    """One generated clip: its table row and the features the distribution metrics need."""

    row: dict[str, object]
    inception_generated: np.ndarray | None = None  # (F, D) per frame (self transfer)
    inception_real: np.ndarray | None = None
    video_generated: np.ndarray | None = None  # (1, D) per clip (cross transfer)
    video_real: np.ndarray | None = None


def _row(item: EvalItem) -> dict[str, object]:
    return {"sample_key": item.target.key, "video_id": item.target.video_id, "attribute": item.target.attribute,
            "transfer": item.transfer, "attribute_sample_key": item.attribute_from.key,
            "attribute_video_id": item.attribute_from.video_id, "frames": 0, "status": "failed",
            "truth_sample_key": item.truth.key if item.truth else None,
            "truth_video_id": item.truth.video_id if item.truth else None}


def failed(item: EvalItem, reason: str) -> ClipResult:
    """The result of an item that could not be evaluated: a failure row with its reason."""
    return ClipResult(row={**_row(item), "reason": reason})


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    from training.metrics import cosine_similarity_per_pair

    return float(np.mean(cosine_similarity_per_pair(a, b.expand_as(a))))


class Evaluator:
    """The pipeline and the configured extractors, loaded once (a Ray actor holds one), generating and measuring
    clips. On CUDA the pipeline runs in bf16 and the extractors in fp32."""

    def __init__(self, config: EvalConfig, index: DatasetIndex, device: str | None = None) -> None:
        from model.pipeline import DurianPipeline
        from training import extractors as ex

        self.config, self.index = config, index
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.pipeline = DurianPipeline.from_pretrained(config.model, dtype=dtype).to(self.device)
        self.pipeline.set_progress_bar_config(disable=True)
        paths, dev = config.extractors, self.device
        self.lpips = ex.LpipsNet.load(paths.lpips, paths.lpips_net, device=dev) if paths.lpips else None
        self.inception = ex.InceptionFeatures.load(paths.inception, device=dev) if paths.inception else None
        self.video = ex.VideoFeatures.load(paths.video, paths.video_arch, device=dev) if paths.video else None
        self.clip = ex.ClipImageFeatures.load(paths.clip, device=dev) if paths.clip else None
        self.dino = ex.DinoFeatures.load(paths.dino, device=dev) if paths.dino else None
        self.identity = (ex.IdentityFeatures.load(paths.arcface, paths.identity, device=dev)
                         if paths.arcface else None)
        self.output = Path(config.output_dir) / GENERATED_DIR

    def evaluate(self, items: list[EvalItem]) -> list[ClipResult]:
        """Generate and measure each item; a failure is the item's row with its reason."""
        needed = {p.key: p for i in items for p in (i.target, i.attribute_from, i.truth) if p is not None}
        samples = {s.key: s for s in read_pairs(self.index, list(needed.values()))}
        results = []
        for item in items:
            try:
                keys = [p.key for p in (item.target, item.attribute_from, item.truth) if p is not None]
                missing = [k for k in keys if k not in samples]
                if missing:
                    raise ValueError(f"sample {missing[0]} could not be read (its shard is missing or corrupt)")
                results.append(self._measure(item, samples[item.target.key], samples[item.attribute_from.key],
                                             samples[item.truth.key] if item.truth else None, _row(item)))
            except Exception as err:  # noqa: BLE001 - one clip's failure is its row; the others go on
                log.warning("evaluation of %s (%s) failed: %s", item.target.key, item.transfer, err)
                results.append(failed(item, f"{type(err).__name__}: {err}"))
        return results

    def _measure(self, item: EvalItem, sample: PairSample, donor: PairSample, truth: PairSample | None,
                 row: dict) -> ClipResult:
        from training.metrics import lpips_per_sample, reconstruction_metrics_per_sample

        config = self.config
        if truth is not None:  # A's portrait following the truth video's motion: its frames are the answer
            sample = replace(sample, targets=truth.targets, pose_frames=truth.pose_frames, keypoints=truth.keypoints,
                             landmarks=truth.landmarks)
        started = time.perf_counter()
        generated, region = generate(self.pipeline, sample, None if item.transfer == SELF else donor,
                                     frames=config.frames, steps=config.steps, guidance_scale=config.guidance_scale,
                                     seed=config.seed)
        measured = time.perf_counter()
        fake, real = images(generated), images(sample.targets[:len(generated)])
        result = ClipResult(row=row)
        if item.transfer == SELF:
            for name, values in reconstruction_metrics_per_sample(fake, real).items():
                row[name] = float(np.mean(values))
            if self.lpips is not None:
                row["lpips"] = float(np.mean(lpips_per_sample(fake, real, self.lpips)))
            if self.inception is not None:
                result.inception_generated = self.inception.features(fake).cpu().numpy()
                result.inception_real = self.inception.features(real).cpu().numpy()
        else:
            reference = images(donor.attribute_ref[None])
            masked = fake * torch.from_numpy(np.asarray(region, np.float32))[None, None]
            if self.clip is not None:
                row["clip_i"] = _cosine(self.clip.features(masked), self.clip.features(reference))
            if self.dino is not None:
                row["dino"] = _cosine(self.dino.features(masked), self.dino.features(reference))
            if self.identity is not None and sample.keypoints is not None:
                if sample.landmarks is not None:  # the detector's five points, which ArcFace aligns with
                    points = sample.landmarks[:len(generated)]
                else:  # a dataset written before samples carried landmarks
                    layout = KEYPOINT_LAYOUTS[sample.meta.keypoint_layout]
                    points = np.stack([arcface_points(k, layout) for k in sample.keypoints[:len(generated)]])
                portrait = self.identity.features(images(sample.portrait_image[None]),
                                                  keypoints=sample.portrait_keypoints[None])
                row["id_similarity"] = _cosine(self.identity.features(fake, keypoints=points), portrait)
            if truth is not None:
                row.update(self._against_truth(fake, real, sample.portrait_image, truth.portrait_mask))
            if self.video is not None:
                result.video_generated = self.video.features(fake.transpose(0, 1)[None]).cpu().numpy()
                result.video_real = self.video.features(real.transpose(0, 1)[None]).cpu().numpy()
        row.update(frames=len(generated), status="ok", generate_s=measured - started,
                   measure_s=time.perf_counter() - measured)
        self.output.mkdir(parents=True, exist_ok=True)
        with publishing(self.output / f"{item.target.key}.{item.transfer}.npz") as partial:
            with open(partial, "wb") as handle:
                np.savez_compressed(handle, generated=generated, region=np.asarray(region, np.float32))
        return result


    def _against_truth(self, generated: torch.Tensor, truth: torch.Tensor, portrait: np.ndarray,
                       region: np.ndarray) -> dict[str, float]:
        """The truth_* and copy_* columns: the generated frames and the portrait-reference copy (the portrait
        frame shown for every target) against the truth frames, whole and inside the truth's attribute region."""
        from training.metrics import reconstruction_metrics_per_sample, region_metrics_per_sample

        copy = images(np.repeat(portrait[None], len(truth), axis=0))
        columns = {}
        for who, frames in (("truth", generated), ("copy", copy)):
            scores = reconstruction_metrics_per_sample(frames, truth, self.lpips)
            if region.any():
                scores |= region_metrics_per_sample(frames, truth, torch.from_numpy(np.asarray(region)))
            columns |= {f"{who}_{name}": float(np.mean(values)) for name, values in scores.items()}
        return columns


# ---------------------------------------------------------------------------------------------- the report


@dataclass
class EvalReport:
    rows: list[dict[str, object]]
    per_attribute: list[dict[str, object]]  # one row per (attribute, transfer) and an "all" row per transfer
    notes: list[str]
    timing: dict[str, float]


def _frechet(generated: list[np.ndarray], real: list[np.ndarray]) -> float | None:
    from training.metrics import frechet_distance

    if not generated or not real:
        return None
    a, b = np.concatenate(generated), np.concatenate(real)
    if len(a) < 2 or len(b) < 2:
        return None
    return frechet_distance(torch.from_numpy(a).double(), torch.from_numpy(b).double())


def summarise(config: EvalConfig, plan: EvalPlan, results: list[ClipResult]) -> EvalReport:
    """Per-attribute means of the per-clip metrics, FID (self) and the FVD-style distance (cross)."""
    rows = [r.row for r in results]
    notes = list(plan.notes)
    extractors = config.extractors
    for name, metric in (("lpips", "LPIPS"), ("inception", "FID"), ("clip", "CLIP-I"), ("dino", "DINO"),
                         ("arcface", "ID similarity"), ("video", "FVD")):
        if getattr(extractors, name) is None:
            notes.append(f"{metric} not measured: extractors.{name} is not set")
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        notes.append(f"{len(failed)} of {len(rows)} clips failed (their reasons are in {TABLE_FILE})")
    table = []
    for transfer in (SELF, CROSS):
        for attribute in [*plan.attributes, "all"]:
            chosen = [r for r in results if r.row["transfer"] == transfer and r.row["status"] == "ok"
                      and attribute in ("all", r.row["attribute"])]
            if not chosen:
                continue
            entry: dict[str, object] = {"attribute": attribute, "transfer": transfer, "clips": len(chosen)}
            names = ("l1", "psnr", "ssim", "lpips") if transfer == SELF else ("clip_i", "dino", "id_similarity",
                                                                              *TRIPLET_METRICS)
            if transfer == CROSS:
                entry["triplet_clips"] = sum(r.row.get("truth_sample_key") is not None for r in chosen)
            for name in names:
                values = [r.row[name] for r in chosen if r.row.get(name) is not None]
                entry[name] = float(np.mean(values)) if values else None
            if transfer == SELF:
                entry["fid"] = _frechet([r.inception_generated for r in chosen if r.inception_generated is not None],
                                        [r.inception_real for r in chosen if r.inception_real is not None])
            else:
                entry["fvd"] = _frechet([r.video_generated for r in chosen if r.video_generated is not None],
                                        [r.video_real for r in chosen if r.video_real is not None])
            table.append(entry)
    ok = [r for r in rows if r["status"] == "ok"]
    timing = {"generate_s": float(sum(r["generate_s"] for r in ok)), "measure_s": float(sum(r["measure_s"] for r in ok))}
    return EvalReport(rows=rows, per_attribute=table, notes=notes, timing=timing)


def _format(value: object, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def summary_markdown(config: EvalConfig, report: EvalReport) -> str:
    """The per-attribute tables, the paper's published figures beside them (labelled as the paper's), notes."""
    lines = [f"# Evaluation of `{config.model}`", "", f"Dataset: `{config.dataset}` (evaluation split), "
             f"stage-{config.stage} samples, {config.steps} DDIM steps, guidance {config.guidance_scale}.", "",
             "## Self transfer (reconstruction of held-out clips)", "",
             "| attribute | clips | L1 ↓ | PSNR ↑ | SSIM ↑ | LPIPS ↓ | FID ↓ |", "|---|---|---|---|---|---|---|"]
    for e in (e for e in report.per_attribute if e["transfer"] == SELF):
        lines.append(f"| {e['attribute']} | {e['clips']} | " + " | ".join(
            _format(e[m]) for m in ("l1", "psnr", "ssim", "lpips", "fid")) + " |")
    paper = PAPER_HAIR_SELF_TRANSFER
    lines.append("| *paper, Table 1 (hair)* | – | " + " | ".join(
        f"*{paper[m]}*" for m in ("l1", "psnr", "ssim", "lpips", "fid")) + " |")
    lines += ["", "The last row is the paper's published figure, not a measurement of this run.", "",
              "## Cross transfer (attribute from another video)", "",
              "| attribute | clips | CLIP-I ↑ | DINO ↑ | ID similarity ↑ | FVD-style ↓ |", "|---|---|---|---|---|---|"]
    for e in (e for e in report.per_attribute if e["transfer"] == CROSS):
        lines.append(f"| {e['attribute']} | {e['clips']} | " + " | ".join(
            _format(e[m]) for m in ("clip_i", "dino", "id_similarity", "fvd")) + " |")
    backed = [e for e in report.per_attribute if e["transfer"] == CROSS and e["triplet_clips"]]
    if backed:
        lines += ["", "## Cross transfer against the triplet truth (generated / portrait copy)", "",
                  "| attribute | clips | L1 ↓ | PSNR ↑ | SSIM ↑ | LPIPS ↓ | region L1 ↓ | region PSNR ↑ |",
                  "|---|---|---|---|---|---|---|---|"]
        for e in backed:
            lines.append(f"| {e['attribute']} | {e['triplet_clips']} | " + " | ".join(
                f"{_format(e[f'truth_{m}'])} / {_format(e[f'copy_{m}'])}"
                for m in ("l1", "psnr", "ssim", "lpips", "region_l1", "region_psnr")) + " |")
        lines += ["", "Each cell: the generated clip / the portrait-reference copy, against the exact truth; the "
                  "region is the truth's attribute region (M_port_train of its pair)."]
    total = report.timing["generate_s"] + report.timing["measure_s"]
    share = report.timing["generate_s"] / total if total else 0.0
    lines += ["", "## Notes", "",
              f"- time: {report.timing['generate_s']:.1f} s generating, {report.timing['measure_s']:.1f} s measuring "
              f"({share:.0%} generating)",
              "- FID uses torchvision's Inception-v3 pool features and the FVD-style distance a torchvision video "
              "ResNet (not pytorch-fid's TF Inception or I3D): compare values within this pipeline.",
              *[f"- {note}" for note in report.notes]]
    return "\n".join(lines) + "\n"


def write_report(config: EvalConfig, report: EvalReport) -> dict[str, Path]:
    """clips.parquet, summary.md, summary.json and grid.mp4 under `output_dir`, each published atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"table": out / TABLE_FILE, "summary": out / SUMMARY_FILE, "json": out / SUMMARY_JSON}
    columns = {f.name: [row.get(f.name) for row in report.rows] for f in EVAL_CLIPS}
    with publishing(paths["table"]) as partial:
        pq.write_table(pa.table(columns, schema=EVAL_CLIPS), partial)
    with publishing(paths["summary"]) as partial:
        Path(partial).write_text(summary_markdown(config, report), encoding="utf-8")
    with publishing(paths["json"]) as partial:
        Path(partial).write_text(json.dumps({"per_attribute": report.per_attribute, "notes": report.notes,
                                             "timing": report.timing}, indent=1), encoding="utf-8")
    grid = worst_and_best_grid(config, report)
    if grid is not None:
        paths["grid"] = grid
    return paths


def worst_and_best_grid(config: EvalConfig, report: EvalReport) -> Path | None:
    """A video of the worst and the best self-transfer clips by L1, one row each: portrait, attribute, guidance,
    result, real. None when no clip was reconstructed."""
    from training.monitoring import side_by_side_frames, write_mp4

    ranked = sorted((r for r in report.rows if r["transfer"] == SELF and r["status"] == "ok"),
                    key=lambda r: r["l1"], reverse=True)
    if not ranked:
        return None
    k = min(config.grid_clips, (len(ranked) + 1) // 2)
    chosen = [("worst", i, r) for i, r in enumerate(ranked[:k])] + [
        ("best", i, r) for i, r in enumerate(reversed(ranked[-k:])) if r not in ranked[:k]]
    index = DatasetIndex.open(config.dataset)
    entries = {p.key: p for p in index.pairs}
    samples = {s.key: s for s in read_pairs(index, [entries[r["sample_key"]] for _, _, r in chosen])}
    rows, height = [], None
    for label, rank, row in chosen:
        sample = samples.get(row["sample_key"])
        if sample is None:
            continue
        with np.load(Path(config.output_dir) / GENERATED_DIR / f"{row['sample_key']}.{SELF}.npz") as stored:
            generated = stored["generated"]
        columns, labels = comparison_columns(sample, generated)
        labels[3] = f"{label} {rank + 1}: L1 {row['l1']:.3f}"
        tile = side_by_side_frames(columns, labels, height=height)
        height = height or sample.targets.shape[1]
        rows.append(tile)
    if not rows:
        return None
    frames = max(len(r) for r in rows)
    rows = [np.concatenate([r, np.repeat(r[-1:], frames - len(r), axis=0)]) for r in rows]
    width = max(r.shape[2] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, 0), (0, width - r.shape[2]), (0, 0))) for r in rows]
    fps = next(iter(samples.values())).meta.fps or 8.0
    return write_mp4(np.concatenate(rows, axis=1), Path(config.output_dir) / GRID_FILE, fps)
