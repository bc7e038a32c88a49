"""The build config: YAML loading, validation messages that name the field, the output hash."""

import re
from pathlib import Path

import pytest

from data_specs.config import BuildConfig, ConfigError, parse_config

MINIMAL = {"inputs": {"source": "videos"}, "output_dir": "out"}


def test_defaults_fill_every_section():
    config = parse_config(MINIMAL)
    assert config.clips.length == 16 and config.decode.size == 512 and config.execution.ray_address is None
    assert config.execution.on_error == "record" and config.processors == ()


def test_yaml_round_trip(tmp_path: Path):
    path = tmp_path / "build.yaml"
    path.write_text("inputs: {source: /data/videos}\noutput_dir: /data/out\ndecode: {fps: 8, size: 256}\n"
                    "clips: {length: 4, stride: 2}\nexecution: {ray_address: auto, videos_per_unit: 3}\n")
    config = BuildConfig.from_yaml(path)
    assert (config.decode.fps, config.decode.size, config.clips.stride) == (8, 256, 2)
    assert config.execution.ray_address == "auto"


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"clips": {"length": 0}}, "clips.length: Input should be greater than or equal to 1"),
        ({"decode": {"fps": -2}}, "decode.fps: Input should be greater than 0"),
        ({"decode": {"crop": "zoom"}}, "decode.crop: Input should be 'center' or 'pad'"),
        ({"shards": {"samples_per_shard": 10, "colour": "red"}}, "shards.colour: unknown field"),
        ({"execution": {"on_error": "ignore"}}, "execution.on_error: Input should be 'record' or 'raise'"),
        ({"processors": [{"target": "not an import path"}]}, "processors.0.target: String should match pattern"),
        ({"output_dir": "s3://bucket/out"}, "output_dir: must be a local folder"),
    ],
)
def test_bad_values_are_reported_by_field(patch: dict, message: str):
    with pytest.raises(ConfigError) as caught:
        parse_config({**MINIMAL, **patch})
    assert message in str(caught.value)


def test_missing_required_field_is_named():
    with pytest.raises(ConfigError, match="output_dir: Field required"):
        parse_config({"inputs": {"source": "x"}})


def test_unreadable_yaml_is_a_config_error(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("inputs: [unclosed\n")
    with pytest.raises(ConfigError, match="cannot read config"):
        BuildConfig.from_yaml(path)


def test_output_hash_ignores_execution_but_not_decoding():
    base = parse_config(MINIMAL)
    more_workers = parse_config({**MINIMAL, "execution": {"videos_per_unit": 99, "retries": 0}})
    other_fps = parse_config({**MINIMAL, "decode": {"fps": 5}})
    assert base.output_hash() == more_workers.output_hash()
    assert base.output_hash() != other_fps.output_hash()


def test_config_is_a_valid_prefect_parameter_schema():
    """Prefect builds the deployment's parameter form from the flow signature."""
    from prefect.utilities.callables import parameter_schema

    from flows.build_dataset import build_dataset

    schema = parameter_schema(build_dataset.fn)
    assert "config" in schema.properties
    assert "BuildConfig" in schema.definitions


TRUTH_PERCEPTION = {"keypoints": {"backend": "truth"},
                    "segmentation": {"backend": "truth", "attributes": ["hair", "hat"]}}


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"training_samples": {}}, "training_samples needs `perception`"),
        ({"perception": TRUTH_PERCEPTION, "clips": {"length": 4}, "training_samples": {}},
         "clips.length 4 is shorter than the 8 frames a pair needs"),
        ({"perception": {**TRUTH_PERCEPTION, "segmentation": {"backend": "bisenet", "attributes": ["hair", "hat"]}},
          "training_samples": {"expansion": {"mode": "generate", "generate": {"prompts": {"hair": ["long hair"]}}}}},
         "expansion.generate.prompts has no template for hat"),
        ({"perception": TRUTH_PERCEPTION, "training_samples": {"expansion": {"mode": "generate"}}},
         "the 'truth' segmenter knows only the test videos"),
        ({"perception": TRUTH_PERCEPTION, "training_samples": {"augment": {"fill": "blur"}}},
         "training_samples.augment.fill: Input should be 'constant', 'reflect' or 'inpaint'"),
        ({"perception": TRUTH_PERCEPTION, "training_samples": {"pairs": {"stages": [2, 2]}}},
         "training_samples.pairs.stages: stages must not repeat"),
    ],
)
def test_training_sample_configs_that_cannot_work_are_refused_before_any_work(patch: dict, message: str):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config({**MINIMAL, **patch})
