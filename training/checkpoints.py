"""The training state on disk: one folder per saved step, published atomically.

    root/step-00000100/
        model.safetensors   the model's full state dict
        optimizer.pt        optimizer.state_dict()
        scheduler.pt        the LR scheduler's state_dict()
        ema.safetensors     the EMA's shadow parameters (when an EMA is kept), its settings in the metadata
        state.json          `extra`: stage, step, batches consumed, seed, ...

A checkpoint is written under the hidden name `.step-00000100.partial` and renamed into place once complete
(`data_specs.files.publishing_folder`), so a killed save never leaves a visible half checkpoint; `latest_checkpoint`
sees only complete ones. The EMA is diffusers' `EMAModel` over a list of parameters (`make_ema`).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from diffusers.training_utils import EMAModel
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from data_specs.files import publishing_folder, write_atomic

__all__ = [
    "CHECKPOINT_PATTERN",
    "EMAModel",
    "checkpoint_dir",
    "export_pipeline",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "make_ema",
    "save_checkpoint",
]

CHECKPOINT_PATTERN = re.compile(r"^step-(\d+)$")
MODEL_FILE, OPTIMIZER_FILE, SCHEDULER_FILE, EMA_FILE, STATE_FILE = (
    "model.safetensors", "optimizer.pt", "scheduler.pt", "ema.safetensors", "state.json")
_EMA_SETTINGS = ("decay", "min_decay", "optimization_step", "update_after_step", "use_ema_warmup", "inv_gamma",
                 "power")


# ---------------------------------------------------------------- EMA


def make_ema(parameters: Iterable[torch.nn.Parameter], decay: float) -> EMAModel:
    """diffusers' EMA over `parameters` (`ema.step(parameters)` after each optimiser step, `ema.copy_to(...)`).

    Note diffusers' warm-up: step k uses min(decay, (1 + k) / (10 + k)), so early averages follow the weights.
    """
    return EMAModel(list(parameters), decay=decay, foreach=True)


def _save_ema(ema: EMAModel, path: Path) -> None:
    state = ema.state_dict()
    tensors = {str(i): p.detach().contiguous().cpu() for i, p in enumerate(state["shadow_params"])}
    save_file(tensors, str(path), metadata={"settings": json.dumps({k: state[k] for k in _EMA_SETTINGS})})


def _load_ema(ema: EMAModel, path: Path) -> None:
    with safe_open(str(path), framework="pt") as handle:
        settings = json.loads(handle.metadata()["settings"])
    tensors = load_file(str(path))
    current = ema.shadow_params
    if len(tensors) != len(current):
        raise RuntimeError(f"EMA in {path} has {len(tensors)} tensors, this EMA {len(current)}")
    shadow = []
    for i, old in enumerate(current):
        new = tensors[str(i)]
        if new.shape != old.shape:
            raise RuntimeError(f"EMA tensor {i} in {path} has shape {tuple(new.shape)}, expected {tuple(old.shape)}")
        shadow.append(new.to(device=old.device, dtype=old.dtype))
    # EMAModel.load_state_dict deep-copies its argument: hand it the settings only, then set the tensors.
    ema.load_state_dict(settings)
    ema.shadow_params = shadow


# ---------------------------------------------------------------- model weights


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def _full_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every key of the state dict, as CPU tensors safetensors accepts: a tensor sharing storage with an earlier
    one (tied weights) is stored as a copy, so loading fills both and strict key matching holds."""
    seen: set[tuple[torch.device, int]] = set()
    tensors = {}
    for name, tensor in _unwrap(model).state_dict().items():
        tensor = tensor.detach()
        storage = (tensor.device, tensor.untyped_storage().data_ptr())
        shared = storage in seen and tensor.numel() > 0
        seen.add(storage)
        tensor = tensor.cpu()
        tensors[name] = tensor.clone() if shared or not tensor.is_contiguous() else tensor.contiguous()
    return tensors


# ---------------------------------------------------------------- folders


def checkpoint_dir(root: Path, step: int) -> Path:
    return Path(root) / f"step-{step:08d}"


def _step(path: Path) -> int | None:
    match = CHECKPOINT_PATTERN.match(path.name)
    return int(match.group(1)) if match else None


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under `root` (visible `step-N` folders with a state.json), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _step(p) is not None and (p / STATE_FILE).is_file()]
    return sorted(found, key=_step)


def latest_checkpoint(root: Path) -> Path | None:
    """The complete checkpoint of the highest step under `root`, or None."""
    found = list_checkpoints(root)
    return found[-1] if found else None


def _clean_stale(root: Path) -> None:
    """Delete what a killed save left: hidden `.step-N.partial` and `.step-N.old` folders."""
    for path in root.iterdir():
        name = path.name
        if path.is_dir() and name.startswith(".step-") and name.endswith((".partial", ".old")):
            shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------- save / load


def save_checkpoint(root: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                    scheduler: Any | None, *, ema: EMAModel | None = None, extra: dict[str, Any] | None = None,
                    keep: int | None = 2, model_overrides: dict[str, torch.Tensor] | None = None) -> Path:
    """Write `root/step-{step:08d}/` atomically and return it; then delete all but the newest `keep` checkpoints
    (the one just written always stays; None keeps all).

    `extra` goes to state.json (JSON-safe values: stage, batches consumed, seed, ...); `step` is
    added to it, so `extra` may not hold a `step` of its own. Call on one rank only. A checkpoint of the same
    step is replaced.
    """
    if extra and "step" in extra:  # it would be overwritten by `step` without a word
        raise ValueError("save_checkpoint: `extra` may not contain 'step' (state.json's 'step' is the `step` argument)")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    _clean_stale(root)
    final = checkpoint_dir(root, step)
    state = {**(extra or {}), "step": step}
    text = json.dumps(state, indent=1)  # before writing anything: a value JSON cannot hold fails here
    with publishing_folder(final) as partial:
        tensors = _full_state(model)
        for name, tensor in (model_overrides or {}).items():
            if name not in tensors:
                raise KeyError(f"save_checkpoint: the model has no tensor {name!r} to override")
            tensors[name] = tensor.detach().cpu().contiguous()
        save_file(tensors, str(partial / MODEL_FILE))
        if optimizer is not None:
            torch.save(optimizer.state_dict(), partial / OPTIMIZER_FILE)
        if scheduler is not None:
            torch.save(scheduler.state_dict(), partial / SCHEDULER_FILE)
        if ema is not None:
            _save_ema(ema, partial / EMA_FILE)
        write_atomic(partial / STATE_FILE, text)  # last: a folder with state.json is complete
    if keep is not None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        others = [p for p in list_checkpoints(root) if p != final]
        for path in others[: max(0, len(others) - (keep - 1))]:
            shutil.rmtree(path, ignore_errors=True)
    return final


def _torch_load(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True)


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    scheduler: Any | None = None, ema: EMAModel | None = None,
                    model_overrides: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """Restore a `save_checkpoint` folder into the given objects in place (strict key match) and return its
    state.json (`extra` plus `step`). Each object given must have been saved. The tensors of
    `model_overrides` are filled from the model file too (by name, in their own dtype: the fp32 masters)."""
    path = Path(path)
    extra = json.loads((path / STATE_FILE).read_text())
    tensors = load_file(str(path / MODEL_FILE))
    _unwrap(model).load_state_dict(tensors, strict=True)
    with torch.no_grad():
        for name, tensor in (model_overrides or {}).items():
            tensor.copy_(tensors[name])
    del tensors
    for target, name in ((optimizer, OPTIMIZER_FILE), (scheduler, SCHEDULER_FILE), (ema, EMA_FILE)):
        if target is not None and not (path / name).is_file():
            raise FileNotFoundError(f"checkpoint {path} has no {name}")
    if optimizer is not None:
        optimizer.load_state_dict(_torch_load(path / OPTIMIZER_FILE))
    if scheduler is not None:
        scheduler.load_state_dict(_torch_load(path / SCHEDULER_FILE))
    if ema is not None:
        _load_ema(ema, path / EMA_FILE)
    return extra


# ---------------------------------------------------------------- the trained pipeline


def export_pipeline(components_or_pipeline: Any, folder: Path) -> Path:
    """Save a `DurianPipeline` (or the pipeline of `DurianComponents`) with `save_pretrained` as `folder`,
    atomically: written under `.NAME.partial`, then renamed in place of any previous export."""
    pipeline = components_or_pipeline
    if not hasattr(pipeline, "save_pretrained"):
        pipeline = components_or_pipeline.pipeline()
    folder = Path(folder)
    with publishing_folder(folder) as partial:
        pipeline.save_pretrained(str(partial), safe_serialization=True)
    return folder
