"""The dataset card: counts, distributions and rejections of a build, as `card/README.md` plus PNG plots.

Read from the merged manifests only (no shard is opened). The training data of the paper was heavily skewed
across attributes (about 2,086 hair samples against 129 hat samples), so the card puts that skew up front and
gives the per-attribute sampling weights a loader needs to rebalance it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend
from matplotlib.ticker import MaxNLocator

from data_specs.balance import rebalance_weights
from data_specs.files import publishing, write_atomic
from data_specs.layout import OutputLayout
from data_specs.perception import ATTRIBUTES
from data_specs.schemas import read_table
from data_specs.split import EVAL, TRAIN
from tasks.errors import failure_kind

TOP_VIDEOS = 30
PLOT_FILES: dict[str, str] = {
    "attributes": "attributes.png",
    "videos": "samples_per_video.png",
    "mask_area": "mask_area.png",
    "face_size": "face_size.png",
    "crop_scale": "crop_scale.png",
    "rejections": "rejections.png",
}
_COLOURS = dict(zip(ATTRIBUTES, ("tab:orange", "tab:cyan", "tab:green", "tab:purple"), strict=True))
_DPI = 100
_EXPANSIONS = ("none", "dilate", "generate")


@dataclass(frozen=True)
class DatasetCard:
    """What `write_dataset_card` wrote and the numbers it reports.

    samples_per_attribute / samples_per_stage / rebalance_weights: training (`pair`) samples only.
    samples_per_video: training samples per video when the build has any, else all (clip) samples.
    rejections: failure rows tallied by `failure_kind(failed_in, reason)`.
    """

    markdown_path: Path
    plots: dict[str, Path]
    samples_per_attribute: dict[str, int]
    samples_per_stage: dict[int, int]
    samples_per_video: dict[str, int]
    rejections: dict[str, int]
    rebalance_weights: dict[str, float]
    markdown: str


def write_dataset_card(root: Path) -> DatasetCard:
    """Write `card/README.md` and its plots for the build under `root`, from its manifests; returns the card."""
    layout = OutputLayout(Path(root))
    videos = read_table("videos", layout.manifest("videos"))
    clips = read_table("clips", layout.manifest("clips"))
    samples = read_table("samples", layout.manifest("samples"))
    failures = read_table("failures", layout.manifest("failures"))

    pairs = samples.filter(pc.equal(samples["kind"], "pair"))
    pair_attributes = [a if a is not None else "unknown" for a in pairs["attribute"].to_pylist()]
    pair_stages = pairs["training_stage"].to_pylist()
    per_attribute = _ordered(Counter(pair_attributes))
    per_stage = dict(sorted(Counter(s for s in pair_stages if s is not None).items()))
    per_attribute_stage = Counter(zip(pair_attributes, pair_stages, strict=True))
    counted = pairs if pairs.num_rows else samples
    per_video = dict(sorted(Counter(counted["video_id"].to_pylist()).items(), key=lambda kv: (-kv[1], kv[0])))
    rejections = dict(sorted(Counter(failure_kind(failed_in, reason) for failed_in, reason in zip(
        failures["failed_in"].to_pylist(), failures["reason"].to_pylist(), strict=True)).items(),
        key=lambda kv: (-kv[1], kv[0])))
    weights = rebalance_weights(per_attribute)

    card_dir = layout.card
    card_dir.mkdir(parents=True, exist_ok=True)
    plots: dict[str, Path] = {}
    if per_attribute:
        plots["attributes"] = _plot_attributes(card_dir / PLOT_FILES["attributes"], per_attribute,
                                               per_attribute_stage, sorted(per_stage))
        plots["mask_area"] = _plot_mask_areas(card_dir / PLOT_FILES["mask_area"], pairs, pair_attributes,
                                              list(per_attribute))
        plots["face_size"] = _plot_face_size(card_dir / PLOT_FILES["face_size"], pairs, pair_attributes,
                                             list(per_attribute))
    crop_scale = _values(clips, "source_px_per_output_px", [None] * clips.num_rows, None)
    if crop_scale.size:
        plots["crop_scale"] = _plot_crop_scale(card_dir / PLOT_FILES["crop_scale"], crop_scale)
    if per_video:
        plots["videos"] = _plot_videos(card_dir / PLOT_FILES["videos"], per_video, videos.num_rows,
                                       "training samples" if pairs.num_rows else "samples")
    if rejections:
        plots["rejections"] = _plot_rejections(card_dir / PLOT_FILES["rejections"], rejections)
    # A plot this build has nothing for must not survive from an earlier card (other files are not ours).
    for key, name in PLOT_FILES.items():
        if key not in plots:
            (card_dir / name).unlink(missing_ok=True)

    markdown = _markdown(
        title=layout.root.resolve().name, videos=videos, clips=clips, samples=samples, pairs=pairs,
        pair_attributes=pair_attributes, per_attribute=per_attribute, per_stage=per_stage,
        per_attribute_stage=per_attribute_stage, per_video=per_video, rejections=rejections, weights=weights,
        crop_scale=crop_scale, plots={key: path.name for key, path in plots.items()})
    markdown_path = card_dir / "README.md"
    write_atomic(markdown_path, markdown)
    return DatasetCard(markdown_path=markdown_path, plots=plots, samples_per_attribute=per_attribute,
                       samples_per_stage=per_stage, samples_per_video=per_video, rejections=rejections,
                       rebalance_weights=weights, markdown=markdown)


# ---------------------------------------------------------------- numbers


def _ordered(counts: Counter[str]) -> dict[str, int]:
    """Largest first; ties in the usual attribute order."""
    rank = {name: i for i, name in enumerate(ATTRIBUTES)}
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], rank.get(kv[0], len(rank)), kv[0])))


def _values(table: pa.Table, column: str, attributes: Sequence[str], attribute: str | None) -> np.ndarray:
    """The column's non-null, finite values, of one attribute's rows (or all rows)."""
    values = table[column].to_pylist()
    chosen = [v for v, a in zip(values, attributes, strict=True) if v is not None and attribute in (None, a)]
    array = np.asarray(chosen, dtype=np.float64)
    return array[np.isfinite(array)]


def _spread(values: np.ndarray, digits: int) -> str:
    """`median (p10-p90)`, or a dash without values."""
    if values.size == 0:
        return "–"
    p10, median, p90 = np.percentile(values, [10, 50, 90])
    return f"{median:.{digits}f} ({p10:.{digits}f}–{p90:.{digits}f})"


def _expansion_rank(expansion: str) -> tuple[int, str]:
    return (_EXPANSIONS.index(expansion) if expansion in _EXPANSIONS else len(_EXPANSIONS), expansion)


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Iterable[Sequence[object]], align: str = "") -> list[str]:
    """A Markdown table; `align` holds one `l` or `r` per column (default: first left, the rest right)."""
    align = align or "l" + "r" * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---:" if a == "r" else "---" for a in align) + " |"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _split_rows(samples: pa.Table) -> list[tuple[str, object]]:
    """Samples and identities on each side of the split; an identity is the manifest's `group`, else the video."""
    sides = samples["split"].to_pylist()
    identities: dict[str, set[str]] = {TRAIN: set(), EVAL: set()}
    for side, group, video in zip(sides, samples["group"].to_pylist(), samples["video_id"].to_pylist(), strict=True):
        identities[side].add(f"group {group}" if group else f"video {video}")
    counts = Counter(sides)
    return [(f"{side} split: samples / groups (videos without a group count alone)",
             f"{counts[side]} / {len(identities[side])}") for side in (TRAIN, EVAL)]


def _markdown(*, title: str, videos: pa.Table, clips: pa.Table, samples: pa.Table, pairs: pa.Table,
              pair_attributes: list[str], per_attribute: dict[str, int], per_stage: dict[int, int],
              per_attribute_stage: Counter, per_video: dict[str, int], rejections: dict[str, int],
              weights: dict[str, float], crop_scale: np.ndarray, plots: dict[str, str]) -> str:
    status = Counter(videos["status"].to_pylist())
    kinds = Counter(samples["kind"].to_pylist())
    stamps = sorted({(c, v) for table in (videos, samples)
                     for c, v in zip(table["config_hash"].to_pylist(), table["code_version"].to_pylist(),
                                     strict=True)})
    lines = [f"# Dataset card: {title}", ""]
    lines.append("Counts and distributions of this build, read from `manifests/*.parquet`.")
    if stamps:
        lines.append("Built with " + "; ".join(f"config `{c[:12]}`, code `{v}`" for c, v in stamps) + ".")
    lines += ["", "## Totals", ""]
    totals: list[tuple[str, object]] = [
        ("videos", f"{videos.num_rows} (ok {status['ok']}, partial {status['partial']}, failed {status['failed']})"),
        ("scenes with clips", len(set(zip(clips["video_id"].to_pylist(), clips["scene_index"].to_pylist(),
                                          strict=True)))),
        ("clips", clips.num_rows),
        ("clip samples", kinds["clip"]),
        ("training samples (pairs)", kinds["pair"]),
    ]
    totals += [(f"training samples, stage {stage}", n) for stage, n in per_stage.items()]
    totals.append(("shards", len(set(samples["shard"].to_pylist()))))
    totals.append(("rejections", sum(rejections.values())))
    totals += _split_rows(samples)
    lines += _table(["", "count"], totals)

    lines += ["", "## Training samples per attribute", ""]
    if not per_attribute:
        lines.append("This build has no training samples (pairs); it holds clip samples only, so there is no "
                     "attribute balance, mask area or face size to report.")
    else:
        total = sum(per_attribute.values())
        stages = list(per_stage)
        rows = [[name, *(per_attribute_stage[(name, s)] for s in stages), n, f"{100 * n / total:.1f}%"]
                for name, n in per_attribute.items()]
        lines += _table(["attribute", *(f"stage {s}" for s in stages), "total", "share"], rows)
        lines.append("")
        largest, smallest = next(iter(per_attribute)), list(per_attribute)[-1]
        if len(per_attribute) > 1:
            ratio = per_attribute[largest] / per_attribute[smallest]
            lines.append(f"**Imbalance:** {largest} has {ratio:.1f}x the samples of {smallest} "
                         "(largest / smallest attribute).")
        else:
            lines.append(f"**Imbalance:** only one attribute ({largest}) has training samples.")
        missing = [a for a in ATTRIBUTES if a not in per_attribute]
        if missing:
            lines.append(f"No training samples at all for: {', '.join(missing)}.")
        lines += ["", f"![Training samples per attribute and stage]({plots['attributes']})"]

        lines += ["", "## Rebalancing", ""]
        lines.append("To draw every attribute equally often, sample each training sample with the weight of its "
                     "attribute (the `attribute` column of `manifests/samples.parquet`); `train-durian` does so with "
                     "`data.rebalance: true`. The weight is N / (K · n_attribute) for N samples over K "
                     "attributes, so each attribute gets 1/K of the draws and the mean weight per sample is 1. "
                     "When training one stage at a time, use that stage's column (filter on `training_stage`).")
        lines.append("")
        stage_weights = {s: rebalance_weights({a: per_attribute_stage[(a, s)] for a in per_attribute})
                         for s in stages} if len(stages) > 1 else {}
        rows = [[name, per_attribute[name], f"{weights[name]:.4g}",
                 *(f"{stage_weights[s][name]:.4g}" if name in stage_weights[s] else "–" for s in stage_weights),
                 f"{100 / len(weights):.1f}%"] for name in per_attribute]
        lines += _table(["attribute", "samples", "weight", *(f"weight, stage {s}" for s in stage_weights),
                         "share when weighted"], rows)

        lines += ["", "## Mask area and face size", ""]
        lines.append("Median (10th–90th percentile). Mask areas are fractions of the image: the attribute mask "
                     "M_attr and the expanded portrait mask M_port_train; face size is the crop-box side in "
                     "the pixels of the frames it was cut from (the source's, with perception).")
        lines.append("")
        expansions = pairs["expansion"].to_pylist()
        rows = []
        for name in [*per_attribute, None]:
            used = Counter(str(e) for e, a in zip(expansions, pair_attributes, strict=True) if name in (None, a))
            rows.append([name or "**all**", per_attribute[name] if name else sum(per_attribute.values()),
                         _spread(_values(pairs, "attribute_mask_area", pair_attributes, name), 3),
                         _spread(_values(pairs, "expanded_mask_area", pair_attributes, name), 3),
                         _spread(_values(pairs, "face_size", pair_attributes, name), 0),
                         ", ".join(f"{e} {used[e]}" for e in sorted(used, key=_expansion_rank))])
        lines += _table(["attribute", "samples", "attribute mask area", "expanded mask area", "face size (px)",
                         "expansion"], rows, align="lrrrrl")
        lines += ["", f"![Mask-area distributions]({plots['mask_area']})", "",
                  f"![Face-size distribution]({plots['face_size']})"]

    gaps = _values(pairs, "reference_gap_s", pair_attributes, None)
    if gaps.size:
        lines += ["", "## References", ""]
        lines.append("Time from each pair's nearer reference to its nearest target frame, in seconds "
                     "(`reference_gap_s` in `manifests/samples.parquet`): references come from the clip's scene or "
                     "video at least `pairs.references.min_gap_s` from the targets, or from the clip itself with "
                     "scope `clip`. Median (10th–90th percentile); the least.")
        lines.append("")
        stages = pairs["training_stage"].to_pylist()
        rows = [[f"stage {stage}" if stage else "**all**", chosen.size, _spread(chosen, 2), f"{chosen.min():.2f}"]
                for stage in [*per_stage, None]
                if (chosen := _values(pairs, "reference_gap_s", stages, stage)).size]
        lines += _table(["pairs", "samples", "gap (s)", "least (s)"], rows)

    if crop_scale.size:
        enlarged = int((crop_scale < 1).sum())
        lines += ["", "## Crop resolution", ""]
        lines.append("Source pixels per output pixel of each perceived clip's face crop (`source_px_per_output_px` "
                     "in `manifests/clips.parquet`; the crop is cut from the source picture): median (10th–90th "
                     f"percentile) {_spread(crop_scale, 2)}. {enlarged} of {crop_scale.size} clips are enlarged "
                     "from the source (below 1, down to 1 / `crop.max_upscale`); clips that would be enlarged "
                     "more are rejected (see Rejections).")
        lines += ["", f"![Crop resolution]({plots['crop_scale']})"]

    lines += ["", "## Source videos", ""]
    if per_video:
        what = "training samples" if pairs.num_rows else "samples"
        total = sum(per_video.values())
        top_id, top_n = next(iter(per_video.items()))
        top = sum(list(per_video.values())[:TOP_VIDEOS])
        lines.append(f"{len(per_video)} of the build's {videos.num_rows} videos contributed {what}; the largest, "
                     f"`{top_id}`, holds {top_n} "
                     f"({100 * top_n / total:.1f}%). The plot shows the top {min(TOP_VIDEOS, len(per_video))} "
                     f"of {len(per_video)} videos ({100 * top / total:.1f}% of the {what}).")
        lines += ["", f"![Samples per source video]({plots['videos']})"]
    else:
        lines.append("No video contributed samples.")

    lines += ["", "## Rejections", ""]
    if rejections:
        total = sum(rejections.values())
        lines += _table(["failed in: reason", "count", "share"],
                        [[kind, n, f"{100 * n / total:.1f}%"] for kind, n in rejections.items()])
        lines += ["", f"![Rejection reasons]({plots['rejections']})"]
    else:
        lines.append("No rejections.")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- plots


def _save(figure: Figure, path: Path) -> Path:
    # The partial name does not end in .png, so the format must be given.
    with publishing(path) as partial:
        figure.savefig(partial, format="png", dpi=_DPI)
    return path


def _colour(attribute: str) -> str:
    return _COLOURS.get(attribute, "tab:gray")


def _plot_attributes(path: Path, per_attribute: dict[str, int], per_attribute_stage: Counter,
                     stages: list[int]) -> Path:
    figure = Figure(figsize=(7, 4), layout="constrained")
    axes = figure.add_subplot()
    names = list(per_attribute)
    x = np.arange(len(names))
    groups = stages or [None]
    width = 0.8 / len(groups)
    for i, stage in enumerate(groups):
        counts = [per_attribute_stage[(name, stage)] for name in names]
        bars = axes.bar(x + (i - (len(groups) - 1) / 2) * width, counts, width,
                        label=f"stage {stage}" if stage is not None else "stage unknown")
        axes.bar_label(bars, fontsize=8)
    axes.set_xticks(x, names)
    axes.set_ylabel("training samples")
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_title("Training samples per attribute and stage")
    axes.legend()
    return _save(figure, path)


def _plot_videos(path: Path, per_video: dict[str, int], all_videos: int, what: str) -> Path:
    top = list(per_video.items())[:TOP_VIDEOS]
    figure = Figure(figsize=(max(6.0, 0.3 * len(top) + 2), 4.5), layout="constrained")
    axes = figure.add_subplot()
    labels = [v if len(v) <= 24 else v[:21] + "..." for v, _ in top]
    axes.bar(range(len(top)), [n for _, n in top], color="tab:blue")
    axes.set_xticks(range(len(top)), labels, rotation=60, ha="right", fontsize=7)
    axes.set_ylabel(what)
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_title(f"{what.capitalize()} per source video: top {len(top)} of {len(per_video)} "
                   f"({all_videos} videos in all)")
    return _save(figure, path)


def _plot_mask_areas(path: Path, pairs: pa.Table, pair_attributes: list[str], names: list[str]) -> Path:
    # Small multiples, one row per attribute, so a rare attribute is not flattened by a frequent one.
    columns = [("attribute_mask_area", "attribute mask area (M_attr)"),
               ("expanded_mask_area", "expanded mask area (M_port_train)")]
    figure = Figure(figsize=(9, 1.9 * len(names) + 0.8), layout="constrained")
    grid = figure.subplots(len(names), len(columns), squeeze=False, sharex="col")
    bins = np.linspace(0.0, 1.0, 41)
    for row, name in enumerate(names):
        for col, (column, label) in enumerate(columns):
            axes = grid[row, col]
            values = _values(pairs, column, pair_attributes, name)
            axes.hist(np.clip(values, 0.0, 1.0), bins=bins, color=_colour(name))
            axes.set_ylabel(f"{name}\n(n={values.size})")
            axes.yaxis.set_major_locator(MaxNLocator(integer=True))
            if row == 0:
                axes.set_title(label)
            if row == len(names) - 1:
                axes.set_xlabel("fraction of the image")
    figure.suptitle("Mask-area distributions per attribute")
    return _save(figure, path)


def _plot_face_size(path: Path, pairs: pa.Table, pair_attributes: list[str], names: list[str]) -> Path:
    figure = Figure(figsize=(7, 4), layout="constrained")
    axes = figure.add_subplot()
    series = [_values(pairs, "face_size", pair_attributes, name) for name in names]
    everything = np.concatenate(series) if series else np.empty(0)
    if everything.size:
        bins = np.histogram_bin_edges(everything, bins=30)
        axes.hist(series, bins=bins, stacked=True, color=[_colour(n) for n in names], label=names)
        axes.legend()
    axes.set_xlabel("face size (crop-box side, px)")
    axes.set_ylabel("training samples")
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_title("Face-size distribution (stacked by attribute)")
    return _save(figure, path)


def _plot_crop_scale(path: Path, values: np.ndarray) -> Path:
    figure = Figure(figsize=(7, 4), layout="constrained")
    axes = figure.add_subplot()
    axes.hist(values, bins=30, color="tab:blue")
    axes.axvline(1.0, color="tab:red", linestyle="--", label="1: no enlargement")
    axes.set_xlabel("source px per output px (crop side in source px / crop size)")
    axes.set_ylabel("clips")
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_title("Crop resolution: how much source detail each crop holds")
    axes.legend()
    return _save(figure, path)


def _plot_rejections(path: Path, rejections: dict[str, int]) -> Path:
    kinds = list(rejections)[::-1]  # largest at the top
    figure = Figure(figsize=(8, 0.35 * len(kinds) + 1.5), layout="constrained")
    axes = figure.add_subplot()
    labels = [k if len(k) <= 60 else k[:57] + "..." for k in kinds]
    bars = axes.barh(range(len(kinds)), [rejections[k] for k in kinds], color="tab:red")
    axes.bar_label(bars, fontsize=8)
    axes.set_yticks(range(len(kinds)), labels, fontsize=8)
    axes.set_xlabel("rejected items")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_title("Rejection reasons (failed in: reason)")
    return _save(figure, path)
