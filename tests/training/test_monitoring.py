"""Run monitoring: metrics.jsonl, TensorBoard events, the loss plot and side-by-side sample videos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tasks.media import probe_video
from training.monitoring import TrainingLog, gpu_memory_gb, loss_plot, read_metrics, side_by_side_video

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _log_steps(log: TrainingLog, steps: range, stage: int, loss: float) -> None:
    for step in steps:
        log.log_step(step, stage, loss=loss / step, lr=1e-5, grad_norm=0.5, samples_per_s=3.0)


def test_metrics_jsonl_and_tensorboard(tmp_path: Path) -> None:
    with TrainingLog(tmp_path, enabled=True) as log:
        _log_steps(log, range(1, 4), stage=1, loss=1.0)
        log.log_step(3, 1, kind="validation", psnr=float("inf"), ssim=0.5)
        log.scalars(3, {"val/l1": 0.1})
    with TrainingLog(tmp_path, enabled=True, purge_step=3) as log:  # resumed from step 2
        _log_steps(log, range(3, 5), stage=1, loss=2.0)
        _log_steps(log, range(1, 3), stage=2, loss=1.0)
    with open(tmp_path / "metrics.jsonl", "a") as handle:
        handle.write('{"kind": "train", "step": 9')  # torn by a kill

    records = read_metrics(tmp_path)
    assert [(r["kind"], r["stage"], r["step"]) for r in records] == [
        ("train", 1, 1), ("train", 1, 2), ("validation", 1, 3), ("train", 1, 3), ("train", 1, 4),
        ("train", 2, 1), ("train", 2, 2)]
    assert records[3]["loss"] == pytest.approx(2.0 / 3)  # the resumed run's value
    assert records[2]["psnr"] is None  # inf is not JSON
    assert {"lr", "grad_norm", "samples_per_s", "time"} <= records[0].keys()
    assert ("gpu_mem_gb" in records[0]) == (gpu_memory_gb() is not None)
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 2 and all(e.stat().st_size > 0 for e in events)
    assert read_metrics(tmp_path / "missing") == []


def test_disabled_log_writes_nothing(tmp_path: Path) -> None:
    run = tmp_path / "run"
    log = TrainingLog(run, enabled=False)
    assert log.log_step(1, 1, loss=0.5) is None
    log.scalars(1, {"train/loss": 0.5})
    log.close()
    assert not run.exists()


def test_loss_plot_is_a_png(tmp_path: Path) -> None:
    records = [{"kind": "train", "stage": s, "step": i, "loss": 1 / i} for s in (1, 2) for i in range(1, 6)]
    path = loss_plot(records + [{"kind": "validation", "stage": 1, "step": 5, "psnr": 20.0}], tmp_path / "loss.png")
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    assert [p.name for p in tmp_path.iterdir()] == ["loss.png"]


def test_side_by_side_video(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frames = 4
    portrait = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)  # one image, shown on every frame
    attribute = rng.integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    guidance, result, target = (rng.integers(0, 256, (frames, 32, 32, 3), dtype=np.uint8) for _ in range(3))
    labels = ["portrait", "attribute", "guidance", "result", "target"]
    path = side_by_side_video([portrait, attribute, guidance, result, target], labels, tmp_path / "sample.mp4",
                              fps=8)
    probe = probe_video(str(path))
    assert probe.num_frames == frames
    assert probe.width == 5 * 32 and probe.height == 32 + 12  # the label band: max(12, H // 10)
    assert [p.name for p in tmp_path.iterdir()] == ["sample.mp4"]
    with pytest.raises(ValueError, match="disagree"):
        side_by_side_video([guidance, guidance[:2]], ["a", "b"], tmp_path / "bad.mp4", fps=8)
    with pytest.raises(ValueError, match="one label per column"):
        side_by_side_video([guidance], ["a", "b"], tmp_path / "bad.mp4", fps=8)


def test_the_runs_log_gets_a_progress_line_every_n_steps_and_each_validation(tmp_path: Path):
    from data_specs.training import load_train_config
    from flows.train import progress_lines

    config = load_train_config({"output_dir": str(tmp_path), "data": {"dataset": str(tmp_path)},
                                "progress_log_every": 2, "stages": [{"stage": 1, "steps": 3},
                                                                    {"stage": 2, "steps": 4, "frames": 2}]})
    records = [{"kind": "train", "stage": 1 if step <= 3 else 2, "step": step, "loss": 0.5, "lr": 1e-5,
                "samples_per_s": 2.0, "time": 100.0 + 10 * step} for step in range(1, 6)]
    records.append({"kind": "validation", "stage": 1, "step": 3, "l1": 0.08, "psnr": 18.2, "ssim": 0.61,
                    "video": "v.mp4", "time": 131.0})
    logged: set = set()
    lines = progress_lines(records, config, logged)
    assert lines == [
        "stage 1, step 2/7: loss 0.5, lr 1.00e-05, 2.00 samples/s, 0 min 50 s left",  # 10 s a step, 5 to go
        "stage 1, step 3/7: loss 0.5, lr 1.00e-05, 2.00 samples/s, 0 min 40 s left",  # a stage's last step
        "stage 2, step 4/7: loss 0.5, lr 1.00e-05, 2.00 samples/s, 0 min 30 s left",
        "validation at step 3 (stage 1): l1 0.08, psnr 18.2, ssim 0.61; video v.mp4"]
    assert progress_lines(records, config, logged) == []  # each line once
    records.append({**records[4], "step": 6, "time": 160.0})
    assert progress_lines(records, config, logged) == [
        "stage 2, step 6/7: loss 0.5, lr 1.00e-05, 2.00 samples/s, 0 min 10 s left"]
