"""The `durian` command line: help texts, clear errors before work, inspect's verify pass."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from data_specs.config import BuildConfig
from flows.cli import app
from tasks.manifests import publish_manifests
from tasks.sources import list_videos, plan_units
from tasks.unit import run_unit
from tests.conftest import small_config

runner = CliRunner()


@pytest.mark.parametrize("command", ["make-videos", "build-dataset", "inspect", "demo", "sample"])
def test_every_command_explains_itself(command: str):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output and len(result.output) > 300


def test_missing_input_folder_is_reported_before_any_work(tmp_path: Path):
    result = runner.invoke(app, ["build-dataset", "-i", str(tmp_path / "nope"), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2 and "does not exist" in result.output
    assert not (tmp_path / "out").exists()


def test_bad_override_names_the_field(tmp_path: Path):
    result = runner.invoke(app, ["build-dataset", "-i", str(tmp_path), "-o", str(tmp_path / "o"),
                                 "--set", "clips.length=0", "--set", "decode.colour=1"])
    assert result.exit_code == 2
    assert "clips.length: Input should be greater than or equal to 1" in result.output
    assert "decode.colour: unknown field" in result.output


def test_make_videos_writes_videos_and_ground_truth(tmp_path: Path):
    result = runner.invoke(app, ["make-videos", str(tmp_path), "--count", "2", "--frames", "4", "--size", "64"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["portrait_0000.mp4", "portrait_0000.truth.npz",
                                                          "portrait_0001.mp4", "portrait_0001.truth.npz"]


def test_inspect_counts_verifies_previews_and_catches_a_tampered_shard(videos: Path, tmp_path: Path):
    config = small_config(videos / "good", tmp_path / "out")
    reports = [run_unit(unit, config) for unit in plan_units(list_videos(config.inputs), config)]
    publish_manifests(config, reports, [])

    result = runner.invoke(app, ["inspect", str(tmp_path / "out"), "--preview", "4", "--preview-to", str(tmp_path / "sheet.png")])
    assert result.exit_code == 0, result.output
    assert "samples         15 rows" in result.output and "verified" in result.output
    assert (tmp_path / "sheet.png").stat().st_size > 1000

    shard = next((tmp_path / "out" / "shards").glob("*.tar"))
    data = bytearray(shard.read_bytes())
    data[600] ^= 0xFF
    shard.write_bytes(bytes(data))
    result = runner.invoke(app, ["inspect", str(tmp_path / "out")])
    assert result.exit_code == 1 and f"BAD {shard.name}: sha256 differs" in result.output


def test_inspect_without_a_build(tmp_path: Path):
    result = runner.invoke(app, ["inspect", str(tmp_path)])
    assert result.exit_code == 2 and "no completed build" in result.output


def test_show_config_prints_the_full_validated_config(videos: Path, tmp_path: Path):
    import yaml

    result = runner.invoke(app, ["build-dataset", "-i", str(videos / "good"), "-o", str(tmp_path / "o"),
                                 "--set", "decode.fps=8", "--show-config"])
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.output)
    assert shown["decode"]["fps"] == 8 and shown["clips"]["length"] == 16 and "execution" in shown
    assert "# 5 videos found" in result.output and not (tmp_path / "o").exists()


def test_one_video_file_is_an_input(tmp_path: Path):
    clip = tmp_path / "clip [take 1].mp4"
    clip.write_bytes(b"not decoded by --show-config")
    result = runner.invoke(app, ["build-dataset", "-i", str(clip), "-o", str(tmp_path / "o"), "--show-config"])
    assert result.exit_code == 0, result.output
    assert "# 1 videos found" in result.output
    assert [Path(ref.uri).name for ref in list_videos(small_config(clip, tmp_path / "o").inputs)] == [clip.name]


@pytest.mark.parametrize("command", ["build-dataset", "train", "evaluate"])
def test_every_command_loads_its_config_one_way(command: str, tmp_path: Path):
    """YAML, then the command's options, then --set; an unreadable file, a bad --set and a bad field are each one
    readable line (exit 2, no traceback)."""
    config = tmp_path / "config.yaml"
    config.write_text("output_dir: from_yaml\nexecution: {ray_address: auto}\n")
    (tmp_path / "v.mp4").write_bytes(b"listed, not decoded")
    shown = runner.invoke(app, ["build-dataset", "-c", str(config), "-i", str(tmp_path), "--ray-address",
                                "10.0.0.1:6379", "--show-config"])
    assert "ray_address: 10.0.0.1:6379" in shown.output and "output_dir: from_yaml" in shown.output
    for args, message in (
        (["-c", str(tmp_path / "missing.yaml")], f"cannot read config {tmp_path / 'missing.yaml'}"),
        (["--set", "noequals"], "--set expects KEY=VALUE, got 'noequals'"),
        (["-c", str(config), "--set", "execution.ray_connect_timeout_s=-1"],
         "execution.ray_connect_timeout_s: Input should be greater than 0"),
    ):
        result = runner.invoke(app, [command, *args])
        assert result.exit_code == 2 and message in result.output, result.output
        assert "Traceback" not in result.output


def test_sd15_without_pretrained_paths_is_refused(tmp_path: Path):
    result = runner.invoke(app, ["train", "-d", str(tmp_path), "-o", str(tmp_path / "runs"), "--set", "flavour=sd15",
                                 "--set", "stages=[{stage: 1, steps: 1}]"])
    assert result.exit_code == 2 and "flavour 'sd15' needs `pretrained`" in result.output
    missing_arcface = ["--set", "pretrained={sd15: /m/sd15, image_encoder: /m/enc}"]
    result = runner.invoke(app, ["train", "-d", str(tmp_path), "-o", str(tmp_path / "runs"), "--set", "flavour=sd15",
                                 "--set", "stages=[{stage: 1, steps: 1}]", *missing_arcface])
    assert result.exit_code == 2 and "pretrained.arcface: Field required" in result.output


def test_the_capacity_refusal_is_a_config_error(videos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """`ModelLoadError` (the models and one unit need more than the cluster has) is printed like every other config
    error: one message, exit 2, no traceback. The refusal itself is tested on a real Ray in tests/perception."""
    import contextlib

    import flows.build_dataset
    import flows.embedded
    from flows.ray_units import ModelLoadError

    refusal = "the models (keypoints: 1 x 0.25 CPU + 1 GPU) and one unit need 1.25 CPUs and 1 GPUs"

    def refuse(config):
        raise ModelLoadError(refusal)

    monkeypatch.setattr(flows.embedded, "embedded_services", lambda execution: contextlib.nullcontext())
    monkeypatch.setattr(flows.build_dataset, "build_dataset", refuse)
    result = runner.invoke(app, ["build-dataset", "-i", str(videos / "good"), "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and refusal in result.output and "Traceback" not in result.output


def test_the_demo_settings_are_config_files_users_can_pass(tmp_path: Path):
    """The demo reads flows/configs/demo_*.yaml through the loader every command uses (`load_spec`)."""
    from data_specs.evaluation import EvalConfig
    from data_specs.perception import ATTRIBUTES
    from data_specs.spec import load_spec
    from data_specs.training import TrainConfig
    from flows.cli.demo import DEMO_CONFIGS

    build = load_spec(BuildConfig, DEMO_CONFIGS / "demo_build.yaml",
                      options={"inputs.source": tmp_path, "output_dir": tmp_path / "dataset"})
    assert build.perception.segmentation.attributes == ATTRIBUTES and build.training_samples.pairs.frames == 4
    train = load_spec(TrainConfig, DEMO_CONFIGS / "demo_train.yaml",
                      options={"data.dataset": tmp_path / "dataset", "output_dir": tmp_path / "runs"})
    assert [run.stage for run in train.stages] == [1, 2] and train.optim.learning_rate == 1e-3
    assert train.stages[1].frames == build.training_samples.pairs.frames
    evaluation = load_spec(EvalConfig, DEMO_CONFIGS / "demo_evaluate.yaml",
                           options={"model": tmp_path, "dataset": tmp_path, "output_dir": tmp_path})
    assert evaluation.steps == 4
    (tmp_path / "v.mp4").write_bytes(b"listed, not decoded")
    shown = runner.invoke(app, ["build-dataset", "-c", str(DEMO_CONFIGS / "demo_build.yaml"), "-i", str(tmp_path),
                                "-o", str(tmp_path / "dataset"), "--show-config"])
    assert "backend: truth" in shown.output  # `durian build-dataset -c` takes the file as the demo does
