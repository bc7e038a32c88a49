"""The one reader of PyTorch pickle checkpoints: framework metadata tolerated, foreign code refused."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from weight_files.pickles import CheckpointError, load_torch_checkpoint, unwrap_state_dict


def save_with_foreign_class(path: Path, module_name: str, class_name: str, make_payload) -> None:
    """Save a checkpoint holding an instance of `module_name.class_name`, a module that exists only while saving."""
    parts = module_name.split(".")
    names = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]  # the package chain pickle imports
    modules = {name: types.ModuleType(name) for name in names}
    foreign = type(class_name, (), {"__module__": module_name})
    setattr(modules[module_name], class_name, foreign)
    sys.modules.update(modules)
    try:
        torch.save(make_payload(foreign), path)
    finally:
        for name in names:
            del sys.modules[name]


def test_lightning_metadata_with_numpy_counters_loads_as_inert_data(tmp_path: Path):
    def payload(callback_type):
        callback = callback_type()
        callback.best_score = np.float64(0.25)
        callback.history = np.arange(3)
        return {"state_dict": {"w": torch.ones(2)}, "callbacks": {"ckpt": callback}, "global_step": 7}

    path = tmp_path / "v1-5-like.ckpt"
    save_with_foreign_class(path, "pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint", payload)
    checkpoint = load_torch_checkpoint(path)
    assert torch.equal(unwrap_state_dict(checkpoint)["w"], torch.ones(2))
    callback = checkpoint["callbacks"]["ckpt"]  # an inert container: its pickled state, no code
    assert callback.history.tolist() == [0, 1, 2] and callback.best_score == 0.25


def test_a_global_outside_the_allow_list_is_refused_with_a_way_out(tmp_path: Path):
    path = tmp_path / "evil.pth"
    save_with_foreign_class(path, "evilpkg.payload", "Exploit", lambda cls: {"state_dict": {}, "x": cls()})
    with pytest.raises(CheckpointError, match=r"refusing to unpickle evilpkg\.payload\.Exploit.*safetensors"):
        load_torch_checkpoint(path)


def test_not_a_checkpoint_is_a_clear_error(tmp_path: Path):
    path = tmp_path / "random.pth"
    path.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="random.pth"):
        load_torch_checkpoint(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_torch_checkpoint(tmp_path / "missing.pth")
