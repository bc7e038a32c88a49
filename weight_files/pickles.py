"""Reading PyTorch pickle checkpoints (`.pth`, `.ckpt`, `.bin`) without trusting them.

Released checkpoints are pickles. Besides tensors they often carry objects of
the training framework that wrote them: mmengine's `ConfigDict`/`HistoryBuffer`
in Sapiens' `.pth` files, PyTorch Lightning callbacks in the original SD 1.5
`.ckpt` (diffusers issue #8874). `torch.load(weights_only=True)` refuses those,
and `weights_only=False` would run any code the file names.

`load_torch_checkpoint` keeps PyTorch's restricted unpickler and adds one rule:
a global whose module is in `TOLERATED_MODULES` (frameworks whose objects are
only ever metadata) is rebuilt as inert data (an `OrderedDict` holding its items, with
its pickled attributes), so the file loads without those frameworks installed and
without running their code. NumPy arrays and scalars in such metadata are rebuilt too.
Any other global outside PyTorch's allow-list is refused with a message naming it.
"""

from __future__ import annotations

import collections
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

# Frameworks whose pickled objects hold metadata (configs, callbacks, loggers), never weights.
TOLERATED_MODULES = ("mmengine", "mmcv", "mmpretrain", "mmpose", "mmseg", "addict", "pytorch_lightning",
                     "lightning", "lightning_fabric", "omegaconf")

# NumPy arrays and scalars in training metadata (mmengine's HistoryBuffer, Lightning's counters) are
# rebuilt by these, which construct data and never call into the file's code.
_NUMPY_GLOBALS = {
    "numpy.core.multiarray._reconstruct": np.core.multiarray._reconstruct,
    "numpy._core.multiarray._reconstruct": np.core.multiarray._reconstruct,
    "numpy.core.multiarray.scalar": np.core.multiarray.scalar,
    "numpy._core.multiarray.scalar": np.core.multiarray.scalar,
    "numpy.ndarray": np.ndarray,
    "numpy.dtype": np.dtype,
}

_CONVERT_HINT = ("If you trust the file, convert it once: `torch.save(torch.load(path, weights_only=False)"
                 "['state_dict'], 'clean.pth')` or save it as .safetensors.")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read safely (or not at all)."""


def _stand_in(qualified_name: str) -> type:
    """A class torch's allow-list can map `qualified_name` to (one class per name).

    Dict subclasses such as mmengine's `ConfigDict` pickle their items with SETITEMS, which the
    weights-only unpickler applies only to exact dict types: instances are plain OrderedDicts.
    """

    def new(cls: type, *args: Any, **kwargs: Any) -> collections.OrderedDict:
        return collections.OrderedDict()

    return type(qualified_name.rsplit(".", 1)[-1], (), {"__module__": __name__, "__new__": new})


def _numpy_global(qualified_name: str) -> Any:
    if qualified_name in _NUMPY_GLOBALS:
        return _NUMPY_GLOBALS[qualified_name]
    module, _, name = qualified_name.rpartition(".")
    if module in ("numpy.dtypes", "numpy._core.dtypes"):  # dtype classes, e.g. Float64DType
        return getattr(np.dtypes, name, None)
    return None


def load_torch_checkpoint(path: str | Path, tolerated_modules: tuple[str, ...] = TOLERATED_MODULES) -> Any:
    """Load a pickle checkpoint on the CPU with PyTorch's weights-only unpickler.

    Globals from `tolerated_modules` become inert data; any other unknown
    global raises `CheckpointError` naming it and saying how to convert the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if zipfile.is_zipfile(path):
        try:
            unknown = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception as error:  # a zip archive, but not one torch.save wrote
            raise CheckpointError(f"{path}: not a PyTorch checkpoint ({type(error).__name__}: {error})") from error
    else:
        # The legacy (pre-1.6) format cannot be scanned ahead: PyTorch's allow-list alone applies,
        # and a refused global surfaces as the load error below, with its name.
        unknown = []
    tolerated = tuple(module + "." for module in tolerated_modules)
    numpy_globals = {name: found for name in unknown if (found := _numpy_global(name)) is not None}
    refused = [name for name in unknown if name not in numpy_globals and not name.startswith(tolerated)]
    if refused:
        raise CheckpointError(
            f"{path}: refusing to unpickle {', '.join(sorted(refused))} (not on the allow-list of tensor and "
            f"metadata types). Loading it would run code named by the file. {_CONVERT_HINT}")
    allowed = [(numpy_globals.get(name) or _stand_in(name), name) for name in unknown]
    if numpy_globals:
        # A pickled array's dtype is rebuilt from its class, which the scan above does not list.
        allowed += [getattr(np.dtypes, name) for name in dir(np.dtypes) if name.endswith("DType")]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(
            f"{path}: cannot be read as a weights-only checkpoint: {error}. {_CONVERT_HINT}") from error


def unwrap_state_dict(checkpoint: Any, keys: tuple[str, ...] = ("state_dict", "model", "module")) -> dict:
    """The tensor dict inside a checkpoint: the first of `keys` that holds a dict, or the checkpoint itself."""
    if isinstance(checkpoint, dict):
        for key in keys:
            if isinstance(checkpoint.get(key), dict):
                return unwrap_state_dict(checkpoint[key], keys)
        return {k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}
    raise CheckpointError(f"checkpoint holds a {type(checkpoint).__name__}, not a state dict")
