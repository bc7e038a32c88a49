"""The builder of a build's processors: their order, models shared by name, and in-process model proxies."""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data_specs.config import parse_config
from tasks.base import ModelSpec, Resources
from tasks.build_processors import PROCESSOR_ALLOWLIST_VAR, LocalModel, build_processors, processors_for
from tests.processors import CountingModel

TRUTH = {"backend": "truth", "runtime": {"device": "cpu"}}
PERCEPTION = {"detection": TRUTH, "keypoints": TRUTH, "crop": {"size": 48},
              "segmentation": {**TRUTH, "attributes": ["hair", "hat"]}}
SAMPLES = {"pairs": {"pairs_per_clip": 1, "frames": 2, "min_ref_distance": 1, "references": {"scope": "clip"}},
           "expansion": {"mode": "none"}, "augment": {"enabled": False}}


@pytest.fixture
def allow_test_processors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    allow_list = tmp_path / "allowed.txt"
    allow_list.write_text("tests.processors:MasksHair\n")
    monkeypatch.setenv(PROCESSOR_ALLOWLIST_VAR, str(allow_list))


def _config(tmp_path: Path, **sections: dict):
    return parse_config({"inputs": {"source": str(tmp_path)}, "output_dir": str(tmp_path / "out"),
                         "clips": {"length": 4, "stride": 4},
                         "processors": [{"target": "tests.processors:MasksHair"}], **sections})


def test_a_processor_requiring_a_model_no_processor_defines_is_refused(tmp_path: Path, allow_test_processors: None):
    with pytest.raises(ValueError, match="'masks-hair' calls the model\\(s\\) 'segmenter', which no configured "
                                         "processor defines \\(defined: none\\)"):
        build_processors(_config(tmp_path))


def test_processors_come_in_order_and_share_a_model_by_name(tmp_path: Path, allow_test_processors: None):
    config = _config(tmp_path, perception=PERCEPTION, training_samples=SAMPLES)
    perception, plugin, samples = processors_for(config, build_id="order")
    assert [processor.name for processor in (perception, plugin, samples)] == ["perception", "masks-hair",
                                                                              "training-samples"]
    # The plugin calls the very proxy perception defined (one set of actors per build), not a copy of its own.
    assert isinstance(plugin.segmenter, LocalModel) and plugin.segmenter is perception.segmenter
    assert plugin.requires == ("segmenter",) and not plugin.models
    # Without a generated expansion the training samples call no segmenter.
    assert samples.requires == () and samples.segmenter is None


def test_a_local_model_forwards_calls_and_attributes_and_is_set_up_once(tmp_path: Path):
    model = LocalModel(ModelSpec("counter", functools.partial(CountingModel, str(tmp_path / "marks")), Resources()))
    frames = np.full((3, 4, 4, 3), 6, np.uint8)
    assert model.mean(frames) == 6.0 and model.mean(frames[:1]) == 6.0
    assert model.provenance == "counting test model"
    assert sorted(path.name.split("-")[0] for path in (tmp_path / "marks").iterdir()) == ["batch", "batch", "setup"]
    with pytest.raises(AttributeError):
        model._private  # noqa: B018 - private names are never forwarded (pickling probes them)


def test_the_interfaces_import_no_concrete_processor():
    loaded = subprocess.run([sys.executable, "-c", "import sys, tasks.base; print(' '.join(sorted(m for m in "
                             "sys.modules if m.startswith('tasks.'))))"], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).parents[1]).stdout
    assert loaded.split() == ["tasks.base"]
