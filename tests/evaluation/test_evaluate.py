"""Evaluation of a tiny random pipeline on a written dataset: the plan, its refusals, the rows, the report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from data_specs.evaluation import EVAL_CLIPS, EvalClipRow, EvalConfig, ExtractorPaths
from data_specs.layout import OutputLayout
from data_specs.model import model_flavour
from data_specs.training_samples import AugmentConfig, ExpansionConfig, PairConfig, TrainingSamplesConfig
from model.builders import random_components
from tasks.synthetic import write_triplets
from tests.samples.samples_testing import perceived_clip, sample_processor
from tests.training.training_testing import write_pair_dataset, write_samples
from training.data import read_pairs
from training.evaluation.evaluator import Evaluator
from training.evaluation.metrics import frechet_distance, region_metrics_per_sample
from training.evaluation.plan import EvaluationError, plan_evaluation
from training.evaluation.report import summarise, summary_markdown, write_report
from training.metrics import reconstruction_metrics_per_sample
from training.reconstruction import images


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pipeline")
    random_components(model_flavour("tiny"), seed=0).pipeline().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 videos, 3 of them in the evaluation split; vid01 and vid02 also show a hat; one sample per shard."""
    return write_pair_dataset(tmp_path_factory.mktemp("data") / "ds", clips=4, size=32, frames=2, pairs_per_clip=1,
                              hat_clips=(1, 2), eval_clips=(1, 2, 3), samples_per_shard=1)


def config(pipeline_dir: Path, dataset: Path, output: Path, **overrides) -> EvalConfig:
    return EvalConfig(model=str(pipeline_dir), dataset=str(dataset), output_dir=str(output), steps=2, **overrides)


def test_the_plan_takes_one_pair_per_evaluation_clip_and_lends_attributes_across_videos(pipeline_dir, dataset,
                                                                                         tmp_path):
    plan = plan_evaluation(config(pipeline_dir, dataset, tmp_path))
    assert plan.attributes == ["hair", "hat"]
    assert {i.target.video_id for i in plan.items} == {"vid01", "vid02", "vid03"}  # never vid00 (training)
    selfs = [i for i in plan.items if i.transfer == "self"]
    crosses = [i for i in plan.items if i.transfer == "cross"]
    assert all(i.target == i.attribute_from for i in selfs)
    assert crosses and all(i.target.video_id != i.attribute_from.video_id for i in crosses)
    assert all(i.target.attribute == i.attribute_from.attribute for i in crosses)
    assert all(i.target.stage == 2 for i in plan.items)


def test_what_cannot_be_evaluated_is_refused_before_any_work(pipeline_dir, dataset, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvaluationError, match="is not a saved DurianPipeline: it has no model_index.json"):
        plan_evaluation(config(tmp_path / "empty", dataset, tmp_path))
    other = tmp_path / "other"
    other.mkdir()
    (other / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(EvaluationError, match="is a saved StableDiffusionPipeline, not a DurianPipeline"):
        plan_evaluation(config(other, dataset, tmp_path))
    no_split = write_pair_dataset(tmp_path / "no_split", clips=2, size=32, frames=2, pairs_per_clip=1)
    with pytest.raises(EvaluationError, match="has no evaluation split"):
        plan_evaluation(config(pipeline_dir, no_split, tmp_path))
    with pytest.raises(EvaluationError, match=r"no evaluation clips for attribute beard .* \(it has hair: 2, hat: 1\)"):
        plan_evaluation(config(pipeline_dir, dataset, tmp_path, attributes=("hair", "beard")))
    missing = ExtractorPaths(inception=tmp_path / "inception_v3_google-0cc3c7bd.pth")
    with pytest.raises(EvaluationError, match="extractors.inception: .*inception_v3_google-0cc3c7bd.pth is not a file"):
        plan_evaluation(config(pipeline_dir, dataset, tmp_path, extractors=missing))


def test_every_metric_is_measured_and_a_clip_that_fails_is_a_row(pipeline_dir, dataset, extractor_paths, tmp_path):
    cfg = config(pipeline_dir, dataset, tmp_path / "eval", extractors=extractor_paths, grid_clips=1)
    plan = plan_evaluation(cfg)
    broken = next(i.target for i in plan.items if i.target.video_id == "vid03")
    shard = OutputLayout(dataset).shard(broken.shard)
    original = shard.read_bytes()
    shard.write_bytes(original[: len(original) // 2])  # truncated after planning: that clip cannot be read
    try:
        results = Evaluator(cfg, plan.index).evaluate(plan.items)
    finally:
        shard.write_bytes(original)
    report = summarise(cfg, plan, results)
    paths = write_report(cfg, report)

    rows = [EvalClipRow(**row) for row in pq.read_table(paths["table"]).to_pylist()]
    assert pq.read_schema(paths["table"]).equals(EVAL_CLIPS) and rows == report.rows and len(rows) == len(plan.items)
    failed = [r for r in rows if r.status == "failed"]
    assert failed and all(r.sample_key == broken.key or r.attribute_sample_key == broken.key for r in failed)
    assert all("could not be read" in r.reason for r in failed)
    for row in rows:
        if row.status != "ok":
            continue
        assert row.frames == 2 and row.generate_s > 0
        if row.transfer == "self":
            assert 0 < row.l1 < 1 and 0 < row.psnr < 60 and -1 <= row.ssim <= 1 and row.lpips > 0
        else:
            assert all(-1 <= getattr(row, m) <= 1 for m in ("clip_i", "dino", "id_similarity"))
    table = {(e["attribute"], e["transfer"]): e for e in report.per_attribute}
    assert math.isfinite(table[("all", "self")]["fid"]) and table[("all", "self")]["fid"] >= 0
    # FID pools the Inception features of every frame of the self-transfer clips, generated against real.
    reconstructed = [r for r in results if r.row.transfer == "self" and r.row.status == "ok"]
    pooled = [torch.from_numpy(np.concatenate([getattr(r, f"inception_{side}") for r in reconstructed])).double()
              for side in ("generated", "real")]
    assert len(pooled[0]) == 2 * len(reconstructed)  # 2 frames per clip
    assert table[("all", "self")]["fid"] == pytest.approx(frechet_distance(*pooled))
    assert table[("hair", "self")]["clips"] + table[("hat", "self")]["clips"] == table[("all", "self")]["clips"]
    summary = paths["summary"].read_text()
    assert "| *paper, Table 1 (hair)* | – | *0.0744* | *18.83* | *0.6527* | *0.1565* | *38.0* |" in summary
    assert "failed" in summary and "not measured" not in summary
    assert paths["grid"].stat().st_size > 0


def triplet_dataset(root: Path) -> tuple[Path, Path]:
    """One triplet's A, B and truth videos (32 px, 2 frames) and a dataset of pair samples whose clips name those
    videos as their sources (plus vid03, a video of no triplet), every video in the evaluation split."""
    folder = root / "triplets"
    (spec,) = write_triplets(folder, 1, seed=7, num_frames=2, width=32, height=32)
    assert spec.attribute == "hair"
    config = TrainingSamplesConfig(
        pairs=PairConfig(pairs_per_clip=1, stages=(2,), frames=2, min_ref_distance=2, references={"scope": "clip"}),
        expansion=ExpansionConfig(mode="none"), augment=AugmentConfig(enabled=False))
    processor, samples = sample_processor(config), []
    sources = {"vid00": spec.path(folder, "a"), "vid01": spec.path(folder, "b"), "vid02": spec.path(folder, "truth"),
               "vid03": folder / "other.mp4"}
    for i, (video_id, source) in enumerate(sources.items()):
        clip = perceived_clip(frames=5, size=32, seed=i, key=f"{video_id}_c00000")
        clip.meta = clip.meta.model_copy(update={"source_path": str(source)})
        samples += processor(clip)
    return write_samples(root / "ds", samples, 1, set(sources)), folder


def test_triplet_backed_cross_items_are_scored_against_the_truth_frames(pipeline_dir, tmp_path):
    dataset, folder = triplet_dataset(tmp_path)
    with pytest.raises(EvaluationError, match="has no triplets.json"):
        plan_evaluation(config(pipeline_dir, dataset, tmp_path / "eval", triplets=str(tmp_path)))
    cfg = config(pipeline_dir, dataset, tmp_path / "eval", triplets=str(folder), max_clips_per_attribute=4)
    plan = plan_evaluation(cfg)
    (backed,) = [i for i in plan.items if i.truth is not None]
    assert (backed.target.video_id, backed.attribute_from.video_id, backed.truth.video_id) == (
        "vid00", "vid01", "vid02")  # A's portrait, B's attribute, the truth's motion and frames
    assert any("1 cross clips are triplet-backed" in note for note in plan.notes)
    assert not any("back no clip" in note for note in plan.notes)

    plain = [i for i in plan.items if i.transfer == "cross" and i.truth is None]
    assert {i.target.video_id for i in plain} == {"vid01", "vid02", "vid03"}  # only A's clip has a truth

    results = Evaluator(cfg, plan.index).evaluate([backed])  # one clip keeps the test quick
    report = summarise(cfg, plan, results)
    (row,) = report.rows
    assert row.status == "ok" and row.truth_sample_key == backed.truth.key

    # The same figures computed independently from the stored generated frames and the samples read afresh.
    a, truth = read_pairs(plan.index, [backed.target, backed.truth])
    with np.load(Path(cfg.output_dir) / "generated" / f"{backed.target.key}.cross.npz") as stored:
        generated = images(stored["generated"])
    real = images(truth.targets)
    copy = images(np.repeat(a.portrait_image[None], len(truth.targets), axis=0))
    region = torch.from_numpy(truth.portrait_mask)
    assert region.any() and not region.all()
    for who, frames in (("truth", generated), ("copy", copy)):
        expected = reconstruction_metrics_per_sample(frames, real) | region_metrics_per_sample(frames, real, region)
        for name, values in expected.items():
            assert getattr(row, f"{who}_{name}") == pytest.approx(float(np.mean(values)), rel=1e-6), (who, name)
    assert row.copy_l1 != row.truth_l1

    # Against itself the truth scores perfectly: the metric compares the frames it is given, pixel for pixel.
    assert region_metrics_per_sample(real, real, region)["region_l1"] == [0.0, 0.0]

    entry = next(e for e in report.per_attribute if (e["attribute"], e["transfer"]) == ("all", "cross"))
    assert entry["triplet_clips"] == 1 and entry["truth_l1"] == pytest.approx(row.truth_l1)
    summary = summary_markdown(cfg, report)
    assert "## Cross transfer against the triplet truth" in summary
    assert f"| all | 1 | {row.truth_l1:.4g} / {row.copy_l1:.4g} |" in summary
    (written,) = [EvalClipRow(**r) for r in pq.read_table(write_report(cfg, report)["table"]).to_pylist()]
    assert written.copy_psnr == pytest.approx(row.copy_psnr) and written.truth_video_id == "vid02"


def test_the_evaluate_durian_deployment_names_the_flow_with_valid_parameters():
    import yaml
    from prefect.flows import load_flow_from_entrypoint

    repo = Path(__file__).resolve().parents[2]
    spec = yaml.safe_load((repo / "prefect.yaml").read_text())
    deployment = next(d for d in spec["deployments"] if d["name"] == "evaluate-durian")
    flow = load_flow_from_entrypoint(str(repo / deployment["entrypoint"]))
    assert flow.name == "evaluate-durian"
    flow.validate_parameters(deployment["parameters"])  # as the Prefect API does
    assert EvalConfig.model_validate(deployment["parameters"]["config"]).execution.gpus_per_worker == 1
