"""Filling networks built on the meta device from weight files, one tensor at a time.

Loading SD 1.5-sized networks the usual way holds the weights twice: the whole file is read (or memory-mapped,
which counts as resident while it is open) and then copied into a randomly initialised model. Here a network is
built with empty (meta) parameters, and each tensor is read on its own, cast, moved to its device and assigned,
so a load needs the final model's memory plus one tensor:

- `.safetensors` files are read with plain reads into a fresh buffer per tensor, never mapped;
- PyTorch pickles (`.ckpt`, `.pth`, `.bin`) go through the allow-listed unpickler of `weight_files.pickles`
  (a pickle can only be read whole); each tensor is released as soon as it is assigned.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from weight_files.pickles import CheckpointError, load_torch_checkpoint, unwrap_state_dict

_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64, "I32": torch.int32,
    "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}


class TensorFile(Protocol):
    """A weight file whose tensors are handed out one at a time."""

    path: Path

    def keys(self) -> list[str]:
        """Every tensor name in the file."""

    def take(self, key: str) -> torch.Tensor:
        """The tensor `key` on the CPU; the file keeps no reference to it."""


class SafetensorsFile:
    """A `.safetensors` file read tensor by tensor (the header names each tensor's byte range)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        file_size = path.stat().st_size
        with path.open("rb") as file:
            try:
                (header_size,) = struct.unpack("<Q", file.read(8))
                # Sizes in the file are claims: checked against the file before anything is allocated from them.
                if 8 + header_size > file_size:
                    raise ValueError(f"the header claims {header_size} bytes, the file holds {file_size}")
                header = json.loads(file.read(header_size))
            except (struct.error, ValueError) as error:
                raise CheckpointError(f"{path}: not a safetensors file ({error})") from error
        header.pop("__metadata__", None)
        self._header = header
        self._data_start = 8 + header_size
        data_size = file_size - self._data_start
        for key, info in header.items():
            begin, end = info["data_offsets"]
            if not 0 <= begin <= end <= data_size:
                raise CheckpointError(f"{path}: tensor {key} claims bytes {begin}..{end}; the file holds {data_size}")

    def keys(self) -> list[str]:
        return list(self._header)

    def take(self, key: str) -> torch.Tensor:
        info = self._header[key]
        begin, end = info["data_offsets"]
        buffer = torch.empty(end - begin, dtype=torch.uint8)
        view = memoryview(buffer.numpy())
        with self.path.open("rb") as file:
            file.seek(self._data_start + begin)
            while view:
                count = file.readinto(view)
                if not count:
                    raise CheckpointError(f"{self.path}: truncated inside tensor {key}")
                view = view[count:]
        return buffer.view(_SAFETENSORS_DTYPES[info["dtype"]]).reshape(info["shape"])


class PickledTensors:
    """A PyTorch pickle checkpoint, read once through the allow-listed unpickler."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._tensors = unwrap_state_dict(load_torch_checkpoint(path))

    def keys(self) -> list[str]:
        return list(self._tensors)

    def take(self, key: str) -> torch.Tensor:
        return self._tensors.pop(key)


def open_weights(path: str | Path) -> TensorFile:
    """A weight file by its suffix: `.safetensors`, else a PyTorch pickle."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    return SafetensorsFile(path) if path.suffix == ".safetensors" else PickledTensors(path)


def load_weights(module: nn.Module, weights: TensorFile, *, prefix: str = "",
                 rename: Callable[[str], str | None] = lambda key: key,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> None:
    """Fill `module`, built under `accelerate.init_empty_weights`, from the keys of `weights` under `prefix`.

    rename: the module key of a file key (prefix removed); None skips a key the module has no use for.
    Floating-point tensors are cast to `dtype`; all go to `device`. Every parameter must be in the file, and
    every file key under `prefix` must name a parameter or buffer (both fail with the keys named). Buffers
    the file lacks keep the values the module's constructor computed (cast and moved like the rest).
    """
    expected = module.state_dict(keep_vars=True)
    non_persistent = {name for name, _ in module.named_buffers()} - set(expected)
    names = {}
    for key in weights.keys():
        if key.startswith(prefix):
            name = rename(key[len(prefix):])
            if name is not None and name not in non_persistent:
                names[key] = name
    loaded = set(names.values())
    unexpected = sorted(key for key, name in names.items() if name not in expected)
    missing = sorted(name for name, tensor in expected.items() if tensor.is_meta and name not in loaded)
    if unexpected or missing:
        raise CheckpointError(
            f"{weights.path} does not match {type(module).__name__}: "
            f"{len(missing)} missing ({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}), "
            f"{len(unexpected)} unexpected ({', '.join(unexpected[:5])}{', ...' if len(unexpected) > 5 else ''})")
    for key, name in names.items():
        tensor = _fit_shape(weights.take(key), expected[name].shape, f"{weights.path}: {key}")
        _assign(module, name, tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else tensor.dtype))
    # Buffers the constructor computed (on the CPU, in float32) follow the loaded tensors.
    for name, buffer in module.named_buffers():
        if name not in loaded:
            _assign(module, name, buffer.to(device=device, dtype=dtype if buffer.is_floating_point() else None))


def _assign(module: nn.Module, name: str, tensor: torch.Tensor) -> None:
    """Make `tensor` the parameter or buffer `name` of `module` (no copy)."""
    owner_name, _, attribute = name.rpartition(".")
    owner = module.get_submodule(owner_name)
    current = getattr(owner, attribute)
    if isinstance(current, nn.Parameter):
        setattr(owner, attribute, nn.Parameter(tensor, requires_grad=current.requires_grad))
    else:
        setattr(owner, attribute, tensor)


def _fit_shape(tensor: torch.Tensor, shape: torch.Size, where: str) -> torch.Tensor:
    """`tensor` in `shape`; a 1x1 convolution kernel fits a linear layer of the same numbers."""
    if tensor.shape == shape:
        return tensor
    if tensor.shape[:len(shape)] == shape and all(size == 1 for size in tensor.shape[len(shape):]):
        return tensor.reshape(shape)
    raise CheckpointError(f"{where} has shape {tuple(tensor.shape)}, the model needs {tuple(shape)}")


def weights_fingerprint(module: nn.Module) -> str:
    """sha256 of a network's weights (names, shapes and values), the same whether it is held in fp32 or fp16.

    Floating-point tensors are hashed as fp16 (fp32 -> fp16 and fp32 -> fp16 -> fp16 round alike), so a VAE
    loaded in fp16 for encoding and the same VAE loaded in fp32 for training agree. Take it before casting a
    network to bf16 (bf16 -> fp16 is not fp32 -> fp16).
    """
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach()
        if tensor.is_floating_point():
            tensor = tensor.to(torch.float16)
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
