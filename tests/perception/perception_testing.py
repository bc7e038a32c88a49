"""Helpers shared by the perception tests: generated videos decoded as the pipeline decodes them."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from data_specs.network_sizes import SAPIENS_ARCHS
from data_specs.video import DecodeConfig
from tasks.media import iter_frames, probe_video
from tasks.synthetic import load_truth

SIZE = 128  # display size of the generated videos, and the decode size (so frame = display pixels)


@dataclass(frozen=True)
class Clip:
    """A decoded generated video and its ground truth."""

    path: Path
    frames: np.ndarray  # (F, SIZE, SIZE, 3) uint8
    times: list[float]
    truth: dict

    def detections(self) -> list[np.ndarray]:
        """The ground truth as a detector returns it: one (1, 15) box/score/landmarks row per frame."""
        boxes = self.truth["boxes"]
        rows = np.concatenate([boxes, np.ones((len(boxes), 1)), self.truth["keypoints"].reshape(len(boxes), 10)], 1)
        return [row[None].astype(np.float32) for row in rows]


def decode(path: Path, size: int = SIZE, crop: str = "center") -> Clip:
    """Decode a generated video as the pipeline does (size x size, centre-cropped or padded)."""
    frames = list(iter_frames(str(path), probe_video(str(path)), DecodeConfig(size=size, crop=crop)))
    return Clip(path, np.stack([f.image for f in frames]), [f.time_s for f in frames], load_truth(path))


TINY_INPUT = (64, 48)  # (H, W) of tiny Sapiens: a 4 x 3 token grid, 16 x 12 heatmaps


def official_layout(task: str, num_outputs: int) -> list[tuple[str, str, tuple[int, ...]]]:
    """(official key, key in our module, shape) of every tensor of a tiny Sapiens checkpoint.

    Written out from the released mmpretrain/mmpose/mmseg module names, independently of the loader.
    """
    arch = SAPIENS_ARCHS["tiny"]
    e, c, tokens = arch.embed_dim, arch.head_channels, (TINY_INPUT[0] // 16) * (TINY_INPUT[1] // 16)
    rows = [
        ("backbone.pos_embed", "backbone.pos_embed", (1, tokens, e)),
        ("backbone.patch_embed.projection.weight", "backbone.patch_embed.proj.weight", (e, 3, 16, 16)),
        ("backbone.patch_embed.projection.bias", "backbone.patch_embed.proj.bias", (e,)),
        ("backbone.ln1.weight", "backbone.norm.weight", (e,)),
        ("backbone.ln1.bias", "backbone.norm.bias", (e,)),
    ]
    for i in range(arch.depth):
        ours, theirs = f"backbone.blocks.{i}", f"backbone.layers.{i}"
        for official, name, shape in [
            ("ln1", "norm1", (e,)), ("ln2", "norm2", (e,)), ("attn.qkv", "attn.qkv", (3 * e, e)),
            ("attn.proj", "attn.proj", (e, e)), ("ffn.layers.0.0", "mlp.fc1", (4 * e, e)),
            ("ffn.layers.1", "mlp.fc2", (e, 4 * e)),
        ]:
            rows += [(f"{theirs}.{official}.weight", f"{ours}.{name}.weight", shape),
                     (f"{theirs}.{official}.bias", f"{ours}.{name}.bias", shape[:1])]
    head, final, depth = ("head", "final_layer", 2) if task == "pose" else ("decode_head", "conv_seg", 3)
    for layer in range(depth):
        index = 3 * layer  # each layer is (conv, InstanceNorm, SiLU) in one Sequential
        rows.append((f"{head}.deconv_layers.{index}.weight",) * 2 + ((e if layer == 0 else c, c, 4, 4),))
        rows.append((f"{head}.conv_layers.{index}.weight",) * 2 + ((c, c, 1, 1),))
        rows.append((f"{head}.conv_layers.{index}.bias",) * 2 + ((c,),))
    rows.append((f"{head}.{final}.weight",) * 2 + ((num_outputs, c, 1, 1),))
    rows.append((f"{head}.{final}.bias",) * 2 + ((num_outputs,),))
    return rows


@contextmanager
def fake_mmengine(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[type, type]]:
    """Importable stand-ins for mmengine's `ConfigDict` (a dict subclass, as addict's `Dict` pickles it) and
    `HistoryBuffer` (a plain object), present in `sys.modules` only inside the block (while saving)."""
    config = types.ModuleType("mmengine.config.config")
    history = types.ModuleType("mmengine.logging.history_buffer")

    class ConfigDict(dict):
        def __getstate__(self) -> dict:
            return self

        def __setstate__(self, state: dict) -> None:
            self.update(state)

    class HistoryBuffer:
        def __init__(self) -> None:
            self._log_history = [0.5, 0.25]
            self.max_length = 1000000

    for cls, module in ((ConfigDict, config), (HistoryBuffer, history)):
        cls.__module__, cls.__qualname__ = module.__name__, cls.__name__
        setattr(module, cls.__name__, cls)
    with monkeypatch.context() as patch:
        for name in ("mmengine", "mmengine.config", "mmengine.logging"):
            patch.setitem(sys.modules, name, types.ModuleType(name))
        for module in (config, history):
            patch.setitem(sys.modules, module.__name__, module)
        yield ConfigDict, HistoryBuffer
    assert not any(name.startswith("mmengine") for name in sys.modules)


def save_official_pth(path: Path, task: str, num_outputs: int, monkeypatch: pytest.MonkeyPatch,
                      config_dict: bool = False) -> dict:
    """Write a random mmengine-style .pth (a `HistoryBuffer` in its message hub, and with `config_dict` a
    `ConfigDict` in its meta); return {our key: tensor} as the loader should place them."""
    generator = torch.Generator().manual_seed(0)
    layout = official_layout(task, num_outputs)
    state = {official: torch.randn(shape, generator=generator) * 0.05 for official, _, shape in layout}
    with fake_mmengine(monkeypatch) as (ConfigDict, HistoryBuffer):
        meta = {"epoch": 210}
        if config_dict:
            meta["dataset_meta"] = ConfigDict(dataset_name=ConfigDict(name="goliath"))
        hub = {"log_scalars": {"train/loss": HistoryBuffer()}}
        torch.save({"meta": meta, "state_dict": state, "message_hub": hub}, path)
    return {ours: state[official] for official, ours, _ in layout}
