"""What the flows show in the Prefect UI, rendered in one place: pure functions returning the Markdown and the table
rows of each flow's artifacts; the flows only pass them to `create_*_artifact`.

The Prefect UI cannot read the run's disk, so images are embedded in the Markdown (`inline_images`), and table
cells are strings (`table_rows`).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from data_specs.layout import BuildSummary
from data_specs.training import TrainConfig

__all__ = ["build_counts_table", "build_rejections_table", "build_summary_markdown", "image_markdown",
           "inline_images", "table_rows", "training_summary_markdown"]


def inline_images(markdown: str, folder: Path) -> str:
    """Markdown with its local PNG links embedded as data URIs: the Prefect UI cannot read the run's disk."""
    def embed(match: re.Match) -> str:
        path = folder / match[2]
        if not path.is_file():
            return match[0]
        return f"![{match[1]}](data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()})"

    return re.sub(r"!\[([^\]]*)\]\(([^)]+\.png)\)", embed, markdown)


def image_markdown(title: str, image: Path) -> str:
    """A heading and the PNG `image`, embedded."""
    return inline_images(f"# {title}\n\n![{title.lower()}]({image.name})\n", image.parent)


def table_rows(records: Sequence[Mapping[str, object]]) -> list[dict[str, str]]:
    """Records as table-artifact rows: floats to 4 significant digits, None as an empty cell."""
    return [{key: "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)
             for key, value in record.items()} for record in records]


# ---------------------------------------------------------------------------------------------- train-durian


def training_summary_markdown(config: TrainConfig, final_loss: float, pipeline: Path, videos: Sequence[Path]) -> str:
    """Where a training run's outputs are: steps per stage, the final loss, the pipeline, checkpoints, logs."""
    total = sum(run.steps for run in config.stages)
    stages = ", ".join(f"stage {run.stage}: {run.steps}" for run in config.stages)
    return (f"# Training run `{config.name}`\n\n- steps: {total} ({stages})\n- final loss: {final_loss:.4f}\n"
            f"- pipeline: `{pipeline}`\n- checkpoints: `{config.run_dir / 'checkpoints'}`\n"
            f"- TensorBoard: `{config.run_dir / 'tensorboard'}`\n"
            + "".join(f"- sample video: `{video}`\n" for video in videos))


# ---------------------------------------------------------------------------------------------- build-dataset


def build_counts_table(summary: BuildSummary) -> list[dict[str, str]]:
    """Units, videos, clips, samples, frames and shards of a build, then its failures by reason."""
    return [
        {"what": "units (skipped / failed)",
         "count": f"{summary.units} ({summary.units_skipped} / {summary.units_failed})"},
        {"what": "videos (failed / partial)",
         "count": f"{summary.videos} ({summary.videos_failed} / {summary.videos_partial})"},
        {"what": "clips", "count": str(summary.clips)},
        {"what": "samples", "count": str(summary.samples)},
        {"what": "frames decoded", "count": str(summary.frames)},
        {"what": "shards", "count": f"{summary.shards} ({summary.shard_bytes / 1e6:.1f} MB)"},
    ] + [{"what": f"failed - {reason}", "count": str(count)} for reason, count in summary.failures_by_reason.items()]


def build_rejections_table(summary: BuildSummary) -> list[dict[str, str]]:
    """Per place a video or clip failed in (`failures_by_reason` kinds read "failed_in: reason"): how many, and
    why; a last row for what was written."""
    rejected: dict[str, int] = {}
    for kind, count in summary.failures_by_reason.items():
        failed_in = kind.split(":", 1)[0]
        rejected[failed_in] = rejected.get(failed_in, 0) + count
    return [{"failed_in": failed_in, "rejected": str(count),
             "reasons": "; ".join(f"{kind.split(': ', 1)[1]} ({n})" for kind, n in summary.failures_by_reason.items()
                                  if kind.startswith(f"{failed_in}:"))} for failed_in, count in rejected.items()] + [
        {"failed_in": "none (written)", "rejected": "", "reasons": f"{summary.samples} samples of {summary.clips} clips"}]


def build_summary_markdown(summary: BuildSummary) -> str:
    """Where the dataset is, what it holds, and its failures by reason."""
    failures = "\n".join(f"| {reason} | {count} |" for reason, count in summary.failures_by_reason.items())
    return (
        f"# Dataset build\n\n"
        f"- output: `{summary.output_dir}`\n"
        f"- {summary.samples} samples from {summary.videos - summary.videos_failed} of {summary.videos} videos "
        f"({summary.videos_partial} only partly decodable), in {summary.shards} shards "
        f"({summary.shard_bytes / 1e6:.1f} MB)\n"
        f"- units: {summary.units} ({summary.units_skipped} unchanged and skipped, {summary.units_failed} failed)\n"
        f"- config hash `{summary.config_hash}`, code version `{summary.code_version}`\n\n"
        + (f"## Failures by reason\n\n| reason | count |\n|---|---|\n{failures}\n" if failures else "No failures.\n")
    )
