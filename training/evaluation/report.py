"""The report of an evaluation: the per-attribute table with FID (self transfer) and the FVD-style distance
(cross transfer), and the files `output_dir` receives, each published atomically:

| file | what |
|---|---|
| `clips.parquet` | one `EvalClipRow` per clip and transfer (`data_specs.evaluation.EVAL_CLIPS`), failures with reasons |
| `summary.md` | the per-attribute tables beside the paper's published figures, and the notes |
| `summary.json` | the per-attribute table, notes and timing |
| `grid.mp4` | the worst and best self-transfer clips by L1, side by side with the real frames |

The Fréchet distances pool the features every clip's `ClipResult` carries (computed on the Ray actors), per
attribute and over all, with `training.evaluation.metrics.frechet_distance`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from data_specs.evaluation import (
    CROSS,
    PAPER_HAIR_SELF_TRANSFER,
    SELF,
    TRIPLET_METRICS,
    ClipResult,
    EvalClipRow,
    EvalConfig,
    eval_clips_table,
)
from data_specs.files import publishing
from training.data import DatasetIndex, read_pairs
from training.evaluation.evaluator import generated_path
from training.evaluation.metrics import frechet_distance
from training.evaluation.plan import EvalPlan
from training.reconstruction import comparison_columns

__all__ = ["EvalReport", "summarise", "summary_markdown", "write_report", "worst_and_best_grid"]

TABLE_FILE, SUMMARY_FILE, GRID_FILE, SUMMARY_JSON = "clips.parquet", "summary.md", "grid.mp4", "summary.json"


@dataclass
class EvalReport:
    """What an evaluation measured: the per-clip rows and the per-attribute means, with notes and timing, and the
    dataset index the plan read (the grid reads its samples through it)."""

    index: DatasetIndex
    rows: list[EvalClipRow]
    per_attribute: list[dict[str, object]]  # one row per (attribute, transfer) and an "all" row per transfer
    notes: list[str]
    timing: dict[str, float]


def _frechet(generated: list[np.ndarray], real: list[np.ndarray]) -> float | None:
    """The Fréchet distance of the pooled per-clip features; None with fewer than two features a side."""
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
    failed = [r for r in rows if r.status != "ok"]
    if failed:
        notes.append(f"{len(failed)} of {len(rows)} clips failed (their reasons are in {TABLE_FILE})")
    table = []
    for transfer in (SELF, CROSS):
        for attribute in [*plan.attributes, "all"]:
            chosen = [r for r in results if r.row.transfer == transfer and r.row.status == "ok"
                      and attribute in ("all", r.row.attribute)]
            if not chosen:
                continue
            entry: dict[str, object] = {"attribute": attribute, "transfer": transfer, "clips": len(chosen)}
            names = ("l1", "psnr", "ssim", "lpips") if transfer == SELF else ("clip_i", "dino", "id_similarity",
                                                                              *TRIPLET_METRICS)
            if transfer == CROSS:
                entry["triplet_clips"] = sum(r.row.truth_sample_key is not None for r in chosen)
            for name in names:
                values = [v for r in chosen if (v := getattr(r.row, name)) is not None]
                entry[name] = float(np.mean(values)) if values else None
            if transfer == SELF:
                entry["fid"] = _frechet([r.inception_generated for r in chosen if r.inception_generated is not None],
                                        [r.inception_real for r in chosen if r.inception_real is not None])
            else:
                entry["fvd"] = _frechet([r.video_generated for r in chosen if r.video_generated is not None],
                                        [r.video_real for r in chosen if r.video_real is not None])
            table.append(entry)
    ok = [r for r in rows if r.status == "ok"]
    timing = {"generate_s": float(sum(r.generate_s for r in ok)), "measure_s": float(sum(r.measure_s for r in ok))}
    return EvalReport(index=plan.index, rows=rows, per_attribute=table, notes=notes, timing=timing)


def _format(value: object, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def summary_markdown(config: EvalConfig, report: EvalReport) -> str:
    """The per-attribute tables, the paper's published figures beside them (labelled as the paper's), notes."""
    lines = [f"# Evaluation of `{config.model}`", "", f"Dataset: `{config.dataset}` (evaluation split), "
             f"stage-{config.training_stage} samples, {config.steps} DDIM steps, guidance {config.guidance_scale}.", "",
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
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"table": out / TABLE_FILE, "summary": out / SUMMARY_FILE, "json": out / SUMMARY_JSON}
    with publishing(paths["table"]) as partial:
        pq.write_table(eval_clips_table(report.rows), partial)
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

    ranked = sorted((r for r in report.rows if r.transfer == SELF and r.status == "ok"),
                    key=lambda r: r.l1, reverse=True)
    if not ranked:
        return None
    k = min(config.grid_clips, (len(ranked) + 1) // 2)
    chosen = [("worst", i, r) for i, r in enumerate(ranked[:k])] + [
        ("best", i, r) for i, r in enumerate(reversed(ranked[-k:])) if r not in ranked[:k]]
    entries = {p.key: p for p in report.index.pairs}
    samples = {s.key: s for s in read_pairs(report.index, [entries[r.sample_key] for _, _, r in chosen])}
    rows, height = [], None
    for label, rank, row in chosen:
        sample = samples.get(row.sample_key)
        if sample is None:
            continue
        with np.load(generated_path(config.output_dir, row.sample_key, SELF)) as stored:
            generated = stored["generated"]
        columns, labels = comparison_columns(sample, generated)
        labels[3] = f"{label} {rank + 1}: L1 {row.l1:.3f}"
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
