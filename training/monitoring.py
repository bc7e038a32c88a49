"""What a training run shows while it runs: TensorBoard scalars, an append-only `metrics.jsonl` (which the
Prefect flow reads to draw a loss table and plot), a loss plot and side-by-side sample videos.

    run_dir/tensorboard/   tensorboardX event files
    run_dir/metrics.jsonl  one JSON object per logged step: kind, step, stage, loss, lr, grad_norm,
                           samples_per_s, gpu_mem_gb (CUDA only), time

After a restart from a checkpoint the steps after it are logged again; `read_metrics` keeps the last record of
each (kind, stage, step), and `TrainingLog(purge_step=...)` hides the superseded TensorBoard points.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Self

import cv2
import numpy as np
import torch

from data_specs.files import publishing

__all__ = ["TrainingLog", "gpu_memory_gb", "loss_plot", "read_metrics", "side_by_side_frames", "side_by_side_video",
           "write_mp4"]

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def gpu_memory_gb() -> float | None:
    """Peak GPU memory allocated by torch on the current device, in GiB; None without CUDA."""
    if not torch.cuda.is_available():
        return None
    return torch.cuda.max_memory_allocated() / 2**30


def _json_value(value: Any) -> Any:
    """Plain JSON: tensors and NumPy scalars as numbers, non-finite floats as null."""
    if isinstance(value, torch.Tensor | np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class TrainingLog:
    """TensorBoard scalars and `metrics.jsonl` of one run; a no-op when not `enabled` (ranks other than 0).

    Args:
        run_dir: the run's folder.
        enabled: write anything at all.
        purge_step: when resuming, TensorBoard drops points logged at or after this step by the earlier attempt.
    """

    def __init__(self, run_dir: Path, enabled: bool, purge_step: int | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self._writer = None
        self._jsonl = None
        if enabled:
            from tensorboardX import SummaryWriter

            self.run_dir.mkdir(parents=True, exist_ok=True)
            # The suffix keeps a restart within the same second from overwriting the earlier event file.
            self._writer = SummaryWriter(str(self.run_dir / TENSORBOARD_DIR), purge_step=purge_step,
                                         filename_suffix=f".{time.time_ns()}")
            self._jsonl = open(self.run_dir / METRICS_FILE, "a", encoding="utf-8")  # noqa: SIM115 (until close)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """TensorBoard scalars named by their keys (e.g. `train/loss`, `val/psnr`); None and non-finite skipped."""
        if self._writer is None:
            return
        for name, value in values.items():
            value = _json_value(value)
            if isinstance(value, int | float) and not isinstance(value, bool):
                self._writer.add_scalar(name, value, global_step=step)
        self._writer.flush()

    def log_step(self, step: int, stage: int, kind: str = "train", **values: Any) -> dict[str, Any] | None:
        """Append one record to metrics.jsonl (adding `gpu_mem_gb` under CUDA and `time`) and its numbers to
        TensorBoard as `{kind}/{name}`; returns the record (None when disabled).

        values: loss, lr, grad_norm, samples_per_s for training; validation metrics with kind="validation".
        """
        if self._jsonl is None:
            return None
        record: dict[str, Any] = {"kind": kind, "step": step, "stage": stage}
        record.update({name: _json_value(value) for name, value in values.items()})
        if kind == "train" and "gpu_mem_gb" not in record and (memory := gpu_memory_gb()) is not None:
            record["gpu_mem_gb"] = memory
        record["time"] = time.time()
        self._jsonl.write(json.dumps(record, allow_nan=False) + "\n")
        self._jsonl.flush()
        self.scalars(step, {f"{kind}/{name}": value for name, value in record.items()
                            if name not in ("kind", "step", "stage", "time")})
        return record

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The records of `run_dir/metrics.jsonl` in logging order, the last of each (kind, stage, step) only (a
    resumed run logs the steps after its checkpoint again); a torn last line is skipped. [] when absent."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    latest: dict[tuple, dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(record, dict):
            continue
        key = (record.get("kind", "train"), record.get("stage"), record.get("step"))
        latest.pop(key, None)  # re-inserted last: order of the last occurrence
        latest[key] = record
    return list(latest.values())


def loss_plot(records: list[dict[str, Any]], path: Path, title: str = "training loss") -> Path:
    """A PNG of loss against step, one line per stage, from `read_metrics` records (training records with a
    loss), published atomically."""
    from matplotlib.figure import Figure

    by_stage: dict[Any, list[tuple[int, float]]] = {}
    for record in records:
        if record.get("kind", "train") == "train" and isinstance(record.get("loss"), int | float):
            by_stage.setdefault(record.get("stage"), []).append((record["step"], record["loss"]))
    figure = Figure(figsize=(6, 3.5), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    for stage, points in sorted(by_stage.items(), key=lambda item: str(item[0])):
        points.sort()
        axes.plot([p[0] for p in points], [p[1] for p in points], label=f"stage {stage}", linewidth=1)
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    if by_stage:
        axes.legend()
    path = Path(path)
    with publishing(path) as partial:
        figure.savefig(partial, format="png")
    return path


# ---------------------------------------------------------------- sample videos


def _as_frames(column: np.ndarray, name: str) -> np.ndarray:
    column = np.asarray(column)
    if column.dtype != np.uint8:
        raise ValueError(f"{name}: frames must be uint8, got {column.dtype}")
    if column.ndim == 3:
        column = column[None]
    if column.ndim != 4 or column.shape[-1] != 3:
        raise ValueError(f"{name}: expected (F, H, W, 3) or (H, W, 3), got {column.shape}")
    return column


def _label_band(text: str, width: int, height: int) -> np.ndarray:
    band = np.zeros((height, width, 3), np.uint8)
    font, thickness = cv2.FONT_HERSHEY_SIMPLEX, 1
    scale = height / 30
    (text_w, text_h), baseline = cv2.getTextSize(text, font, scale, thickness)
    if text_w > width - 2:
        scale *= (width - 2) / text_w
        (text_w, text_h), baseline = cv2.getTextSize(text, font, scale, thickness)
    origin = ((width - text_w) // 2, (height + text_h - baseline) // 2)
    cv2.putText(band, text, origin, font, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return band


def side_by_side_frames(columns: list[np.ndarray], labels: list[str], height: int | None = None) -> np.ndarray:
    """Tile columns (e.g. portrait ref | attribute ref | guidance | result | target) left to right under small
    labels: (F, H', W', 3) uint8.

    Each column is (F, H, W, 3) uint8 or one (H, W, 3) image shown on every frame; columns with several frames
    must agree on F. Columns are resized to `height` (default: the tallest one's), keeping their aspect.
    """
    if not columns or len(columns) != len(labels):
        raise ValueError(f"need one label per column, got {len(columns)} columns and {len(labels)} labels")
    frames = [_as_frames(column, label) for column, label in zip(columns, labels)]
    counts = {f.shape[0] for f in frames if f.shape[0] > 1}
    if len(counts) > 1:
        raise ValueError(f"columns disagree on their number of frames: {sorted(counts)}")
    count = counts.pop() if counts else 1
    height = height or max(f.shape[1] for f in frames)
    band_height = max(12, height // 10)
    tiles = []
    for column, label in zip(frames, labels):
        if column.shape[1] != height:
            width = max(1, round(column.shape[2] * height / column.shape[1]))
            column = np.stack([cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA) for frame in column])
        band = _label_band(label, column.shape[2], band_height)
        tile = np.concatenate([np.broadcast_to(band, (column.shape[0], *band.shape)), column], axis=1)
        tiles.append(np.broadcast_to(tile, (count, *tile.shape[1:])))
    return np.concatenate(tiles, axis=2)


def write_mp4(video: np.ndarray, path: Path, fps: float) -> Path:
    """(F, H, W, 3) uint8 as an H.264 mp4 (padded to even sizes for yuv420p), published atomically."""
    from tasks.media import write_video

    pad_h, pad_w = video.shape[1] % 2, video.shape[2] % 2
    if pad_h or pad_w:
        video = np.pad(video, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.stem}.partial{path.suffix}")  # the suffix tells ffmpeg the container
    try:
        write_video(np.ascontiguousarray(video), partial, fps)
        partial.replace(path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return path


def side_by_side_video(columns: list[np.ndarray], labels: list[str], path: Path, fps: float) -> Path:
    """`side_by_side_frames` written as an mp4 (`write_mp4`)."""
    return write_mp4(side_by_side_frames(columns, labels), path, fps)
