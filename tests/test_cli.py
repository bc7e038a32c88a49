"""The `durian` command line: help texts, clear errors before work, inspect's verify pass."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

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
