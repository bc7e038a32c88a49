"""Untrusted files and parameters: code-bearing checkpoints, processor plugins, safetensors headers, manifest URLs."""

from __future__ import annotations

import io
import json
import struct
import zipfile
from pathlib import Path

import pytest
import torch

from data_specs.config import parse_config
from tasks.build_processors import PROCESSOR_ALLOWLIST_VAR, ProcessorNotAllowedError, build_processors
from tasks.perception.sapiens import checkpoint_format, load_sapiens
from tasks.sources import InputError, list_videos
from tasks.trust import UntrustedCodeError
from weight_files.pickles import CheckpointError
from weight_files.tensors import open_weights


class _Linear(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class _CreatesFile:
    """Unpickled, this opens (creates) `path`: the smallest payload that shows whether a pickle ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return open, (str(self.path), "w")


def crafted_export(path: Path, marker: Path) -> Path:
    """A real `torch.export` archive, named like an official `.pth`, whose first weight is a pickle that creates
    `marker` (torch.export.load reads pickled weights with weights_only=False)."""
    archive = io.BytesIO()
    torch.export.save(torch.export.export(_Linear(), (torch.randn(1, 2),)), archive)
    payload = io.BytesIO()
    torch.save(_CreatesFile(marker), payload)
    with zipfile.ZipFile(archive) as source, zipfile.ZipFile(path, "w") as target:
        for info in source.infolist():
            data = source.read(info.filename)
            if info.filename.endswith("weights/model_weights_config.json"):
                config = json.loads(data)
                config["config"]["layer.weight"]["use_pickle"] = True
                data = json.dumps(config).encode()
            elif info.filename.endswith("weights/weight_0"):
                data = payload.getvalue()
            target.writestr(info, data)
    return path


def test_a_crafted_export_is_refused_unless_trusted_and_then_its_payload_would_run(tmp_path: Path):
    marker = tmp_path / "payload-ran"
    path = crafted_export(tmp_path / "sapiens_0.3b_goliath_best_goliath_AP_573.pth", marker)
    assert checkpoint_format(path) == "export"
    with pytest.raises(UntrustedCodeError, match=r"set `perception\.keypoints\.trust_code: true`"):
        load_sapiens(path, "pose", "0.3b", (1024, 768), 308, torch.device("cpu"))
    with pytest.raises(UntrustedCodeError, match=r"perception\.segmentation\.trust_code"):
        load_sapiens(path, "segmentation", "1b", (1024, 768), 28, torch.device("cpu"))
    assert not marker.exists(), "the refused file ran code"
    # What the refusal prevents: trusted, the same file runs its pickle on load.
    with pytest.raises(Exception):  # noqa: B017 (the archive is not a valid program once its payload ran)
        load_sapiens(path, "pose", "0.3b", (1024, 768), 308, torch.device("cpu"), trust_code=True)
    assert marker.exists()


@pytest.mark.filterwarnings("ignore::FutureWarning")  # TorchScript is deprecated
def test_a_torchscript_file_is_refused_unless_trusted(tmp_path: Path):
    path = tmp_path / "pose.pth"
    torch.jit.script(_Linear()).save(str(path))
    assert checkpoint_format(path) == "torchscript"
    with pytest.raises(UntrustedCodeError, match="torchscript file, which can run code") as refused:
        load_sapiens(path, "pose", "0.3b", (1024, 768), 308, torch.device("cpu"))
    assert "perception.keypoints.trust_code: true" in str(refused.value)
    network = load_sapiens(path, "pose", "0.3b", (1024, 768), 308, torch.device("cpu"), trust_code=True)
    assert network(torch.ones(3, 2)).shape == (3, 2)


def test_trust_code_is_off_by_default_in_the_config():
    from data_specs.perception import KeypointConfig, SegmentationConfig

    assert KeypointConfig(checkpoint="pose.pth").trust_code is False
    assert SegmentationConfig.model_fields["trust_code"].default is False


def _processor_config(tmp_path: Path, target: str, params: dict | None = None):
    return parse_config({"inputs": {"source": str(tmp_path)}, "output_dir": str(tmp_path / "out"),
                         "processors": [{"target": target, "params": params or {}}]})


def test_a_processor_that_is_neither_declared_nor_allow_listed_is_refused(tmp_path: Path, monkeypatch):
    monkeypatch.delenv(PROCESSOR_ALLOWLIST_VAR, raising=False)
    marker = tmp_path / "ran"
    config = _processor_config(tmp_path, "subprocess:run", {"args": ["touch", str(marker)]})
    with pytest.raises(ProcessorNotAllowedError, match="'subprocess:run' is not an allowed processor") as refused:
        build_processors(config)
    assert "durian.clip_processors" in str(refused.value) and "build parameters cannot add one" in str(refused.value)
    # Even allow-listed by mistake, a callable that is not a ClipProcessor class is never called.
    allow_list = tmp_path / "allowed.txt"
    allow_list.write_text("subprocess:run  # a mistake\n")
    monkeypatch.setenv(PROCESSOR_ALLOWLIST_VAR, str(allow_list))
    with pytest.raises(TypeError, match="not a ClipProcessor class"):
        build_processors(config)
    assert not marker.exists()
    # The test processors are refused until the allow-list names them.
    with pytest.raises(ProcessorNotAllowedError):
        build_processors(_processor_config(tmp_path, "tests.processors:Slow", {"seconds": 0}))


def test_a_processor_declared_by_an_installed_package_loads_by_name_or_path(tmp_path: Path, monkeypatch):
    monkeypatch.delenv(PROCESSOR_ALLOWLIST_VAR, raising=False)
    # An installed distribution as pip leaves it: a .dist-info folder with entry_points.txt on sys.path.
    dist_info = tmp_path / "site" / "durian_test_plugin-1.0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: durian-test-plugin\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text("[durian.clip_processors]\nslow = tests.processors:Slow\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    for target in ("slow", "tests.processors:Slow"):
        (processor,) = build_processors(_processor_config(tmp_path, target, {"seconds": 0.5}))
        assert processor.name == "slow" and processor.seconds == 0.5


def _safetensors(path: Path, header: dict, data: bytes, claimed_header_size: int | None = None) -> Path:
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", claimed_header_size or len(encoded)) + encoded + data)
    return path


def test_a_safetensors_header_claiming_more_than_the_file_holds_is_refused(tmp_path: Path):
    good = {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
    assert open_weights(_safetensors(tmp_path / "ok.safetensors", good, bytes(8))).take("w").shape == (2,)
    with pytest.raises(CheckpointError, match=r"the header claims 1099511627776 bytes, the file holds"):
        open_weights(_safetensors(tmp_path / "header.safetensors", good, bytes(8), claimed_header_size=1 << 40))
    huge = {"w": {"dtype": "F32", "shape": [1 << 38], "data_offsets": [0, 1 << 40]}}
    with pytest.raises(CheckpointError, match=r"tensor w claims bytes 0\.\.1099511627776; the file holds 8"):
        open_weights(_safetensors(tmp_path / "tensor.safetensors", huge, bytes(8)))


def test_manifest_rows_may_only_name_the_protocols_the_config_lists(tmp_path: Path):
    import fsspec

    local = tmp_path / "a.mp4"
    local.write_bytes(b"x")
    memory = fsspec.filesystem("memory")
    memory.pipe("/bucket/b.mp4", b"y")
    try:
        manifest = tmp_path / "list.csv"
        manifest.write_text(f"path\n{local}\nmemory://bucket/b.mp4\n")
        config = parse_config({"inputs": {"source": str(manifest)}, "output_dir": str(tmp_path / "out")})
        with pytest.raises(InputError, match=r"row 2 \(path 'memory://bucket/b.mp4'\): memory URLs are not allowed"):
            list_videos(config.inputs)
        allowed = parse_config({"inputs": {"source": str(manifest), "protocols": ["file", "memory"]},
                                "output_dir": str(tmp_path / "out")})
        assert [ref.uri for ref in list_videos(allowed.inputs)] == [str(local), "memory:///bucket/b.mp4"]
        manifest.write_text("path\nsimplecache::memory://bucket/b.mp4\n")
        with pytest.raises(InputError, match="memory, simplecache URLs are not allowed"):
            list_videos(config.inputs)
    finally:
        memory.rm("/bucket", recursive=True)

