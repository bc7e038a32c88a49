"""Evaluation of a tiny random pipeline on a written dataset: the plan, its refusals, the rows, the report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from data_specs.evaluation import EVAL_CLIPS, EvalConfig, ExtractorPaths
from data_specs.layout import OutputLayout
from data_specs.model import model_flavour
from model.builders import random_components
from tests.training.training_testing import write_pair_dataset
from training.evaluation import EvaluationError, Evaluator, plan_evaluation, summarise, write_report


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

    rows = pq.read_table(paths["table"]).to_pylist()
    assert pq.read_schema(paths["table"]).equals(EVAL_CLIPS) and len(rows) == len(plan.items)
    failed = [r for r in rows if r["status"] == "failed"]
    assert failed and all(r["sample_key"] == broken.key or r["attribute_sample_key"] == broken.key for r in failed)
    assert all("could not be read" in r["reason"] for r in failed)
    for row in rows:
        if row["status"] != "ok":
            continue
        assert row["frames"] == 2 and row["generate_s"] > 0
        if row["transfer"] == "self":
            assert 0 < row["l1"] < 1 and 0 < row["psnr"] < 60 and -1 <= row["ssim"] <= 1 and row["lpips"] > 0
        else:
            assert all(-1 <= row[m] <= 1 for m in ("clip_i", "dino", "id_similarity"))
    table = {(e["attribute"], e["transfer"]): e for e in report.per_attribute}
    assert math.isfinite(table[("all", "self")]["fid"]) and table[("all", "self")]["fid"] >= 0
    assert table[("hair", "self")]["clips"] + table[("hat", "self")]["clips"] == table[("all", "self")]["clips"]
    summary = paths["summary"].read_text()
    assert "| *paper, Table 1 (hair)* | – | *0.0744* | *18.83* | *0.6527* | *0.1565* | *38.0* |" in summary
    assert "failed" in summary and "not measured" not in summary
    assert paths["grid"].stat().st_size > 0


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
