"""What every model component shares: its config and resources, weight files, the device, batches, tensors.

facexlib downloads its weights on first use unless the file is already in `model_rootpath`
under its official name. Here a missing file is an error that names the file, its URL and
the folder to put it in; facexlib's own download runs only when the config allows it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from data_specs.perception import FaceDetectionConfig, KeypointConfig, SegmentationConfig
from data_specs.spec import Resources, RuntimeConfig, Spec

if TYPE_CHECKING:
    import torch

_RELEASES = "https://github.com/xinntao/facexlib/releases/download"
# Official facexlib weight files: model -> (file name, release URL).
FACEXLIB_WEIGHTS: dict[str, tuple[str, str]] = {
    "retinaface_resnet50": ("detection_Resnet50_Final.pth", f"{_RELEASES}/v0.1.0/detection_Resnet50_Final.pth"),
    "retinaface_mobile0.25": (
        "detection_mobilenet0.25_Final.pth",
        f"{_RELEASES}/v0.1.0/detection_mobilenet0.25_Final.pth",
    ),
    "bisenet": ("parsing_bisenet.pth", f"{_RELEASES}/v0.2.0/parsing_bisenet.pth"),
    "parsenet": ("parsing_parsenet.pth", f"{_RELEASES}/v0.2.2/parsing_parsenet.pth"),
}


class ModelComponent:
    """Base of the model components: keeps the config, checks its backend, reports the resources it wants.

    Any config with a `runtime: RuntimeConfig` fits; `backends` (when a subclass names some) are the values of
    `config.backend` it runs.
    """

    backends: tuple[str, ...] = ()

    def __init__(self, config: FaceDetectionConfig | KeypointConfig | SegmentationConfig | Spec) -> None:
        if self.backends and config.backend not in self.backends:
            raise ValueError(f"{type(self).__name__} runs {', '.join(self.backends)}, not {config.backend!r}")
        self.config = config
        self.model = None  # loaded by setup(), on the worker

    @property
    def resources(self) -> Resources:
        return self.config.runtime.resources

    def _check_setup(self) -> None:
        if self.model is None:
            raise RuntimeError(f"call {type(self).__name__}.setup() before using it")


def facexlib_weights(model: str, weights_dir: str | None, allow_download: bool) -> Path:
    """Path of `model`'s official weight file in `weights_dir`, downloading it only if allowed."""
    file_name, url = FACEXLIB_WEIGHTS[model]
    if weights_dir is not None and (Path(weights_dir) / file_name).is_file():
        return Path(weights_dir) / file_name
    if allow_download:
        from facexlib.utils import load_file_from_url

        # save_dir=None is facexlib's own cache folder inside its package.
        return Path(load_file_from_url(url, model_dir="facexlib/weights", save_dir=weights_dir))
    where = f"folder {weights_dir}" if weights_dir else "a folder named by `weights_dir`"
    raise FileNotFoundError(
        f"{model} weights not found: put {file_name} (from {url}) in {where}, or set allow_download: true"
    )


def resolve_device(runtime: RuntimeConfig) -> torch.device:
    """The device a component runs on: 'auto' takes CUDA when this worker sees a GPU."""
    import torch  # here, so that the truth backends and data workers never load torch

    if runtime.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if runtime.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' configured, but this worker sees no CUDA device")
    return torch.device(runtime.device)


def batches(count: int, batch_size: int) -> Iterator[slice]:
    """Consecutive slices of at most `batch_size` covering range(count)."""
    for start in range(0, count, batch_size):
        yield slice(start, min(start + batch_size, count))


def check_images(images: object, name: str = "frames") -> None:
    """Raise ValueError unless `images` is a (N, H, W, 3) uint8 array."""
    shape = getattr(images, "shape", None)
    if getattr(images, "dtype", None) != "uint8" or shape is None or len(shape) != 4 or shape[-1] != 3:
        raise ValueError(f"{name} must be a (N, H, W, 3) uint8 RGB array, got {shape} {getattr(images, 'dtype', '')}")
