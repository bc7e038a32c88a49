"""Attribute masks (hair, eyeglasses, beard, hat) from face-parsing networks, batched over crops.

Each backend is a network plus a `LabelMap` (data_specs.perception) that says which output
classes make up each attribute; the config has already checked that the backend has every
requested attribute. Logits are resized to the crop before the per-pixel argmax, so masks
have the crop's size.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from data_specs.images import images_to_tensor
from data_specs.perception import LABEL_MAPS, LabelMap, SegmentationConfig
from tasks.perception.runtime import (
    ModelComponent,
    batches,
    check_images,
    facexlib_weights,
    resolve_device,
)
from weight_files.pickles import load_torch_checkpoint, unwrap_state_dict

FACEXLIB_INPUT = 512  # BiSeNet and ParseNet were trained on 512 x 512 faces
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def attribute_masks(labels: np.ndarray, label_map: LabelMap, attributes: tuple[str, ...]) -> dict[str, np.ndarray]:
    """(N, H, W) class labels -> {attribute: (N, H, W) bool}."""
    return {attribute: np.isin(labels, label_map.attributes[attribute]) for attribute in attributes}


class _Segmenter(ModelComponent, ABC):
    """Shared batching: subclasses build `self.model` in `setup()` and turn a batch of crops into logits."""

    config: SegmentationConfig

    def __init__(self, config: SegmentationConfig) -> None:
        super().__init__(config)
        self.label_map: LabelMap = LABEL_MAPS[config.backend]

    @property
    def provenance(self) -> str:
        return f"{self.label_map.name} segmentation"

    def __call__(self, crops: np.ndarray, refs: object = None) -> dict[str, np.ndarray]:
        """{attribute: (N, H, W) bool} for (N, H, W, 3) uint8 RGB crops (`refs`: common signature, ignored)."""
        self._check_setup()
        check_images(crops, "crops")
        labels = np.empty(crops.shape[:3], np.uint8)
        for part in batches(len(crops), self.config.runtime.batch_size):
            logits = self._logits(crops[part])
            logits = F.interpolate(logits, size=crops.shape[1:3], mode="bilinear", align_corners=False)
            labels[part] = logits.argmax(dim=1).cpu().numpy()
        return attribute_masks(labels, self.label_map, self.config.attributes)

    @abstractmethod
    def setup(self) -> None:
        """Load the network; once per worker."""

    @abstractmethod
    def _logits(self, crops: np.ndarray) -> torch.Tensor:
        """(n, C, h, w) float32 class logits for (n, H, W, 3) uint8 crops."""


class FacexlibSegmenter(_Segmenter):
    """facexlib's BiSeNet (ImageNet normalisation) or ParseNet (input in [-1, 1]) at 512 x 512."""

    backends = ("bisenet", "parsenet")
    input_size = FACEXLIB_INPUT  # both networks are fully convolutional; they were trained at this size

    def setup(self) -> None:
        """Build the network and load its weights; once per worker."""
        from facexlib.parsing.bisenet import BiSeNet
        from facexlib.parsing.parsenet import ParseNet

        cfg = self.config
        path = facexlib_weights(cfg.backend, cfg.weights_dir, cfg.allow_download)
        classes = len(self.label_map.classes)
        if cfg.backend == "bisenet":
            model = BiSeNet(num_class=classes)
        else:
            model = ParseNet(in_size=FACEXLIB_INPUT, out_size=FACEXLIB_INPUT, parsing_ch=classes)
        model.load_state_dict(unwrap_state_dict(load_torch_checkpoint(path)), strict=True)
        self.device = resolve_device(cfg.runtime)
        self.model = model.eval().to(self.device)

    def _logits(self, crops: np.ndarray) -> torch.Tensor:
        side = self.input_size
        resized = np.stack([cv2.resize(c, (side, side), interpolation=cv2.INTER_LINEAR) for c in crops])
        images = images_to_tensor(resized)
        if self.label_map.normalisation == "imagenet":
            images = (images - torch.tensor(_IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(_IMAGENET_STD).view(3, 1, 1)
        else:  # ParseNet: [-1, 1]
            images = images * 2 - 1
        with torch.inference_mode():
            return self.model(images.to(self.device))[0].float()  # both return (logits, auxiliary outputs)


class SapiensSegmenter(_Segmenter):
    """Sapiens segmentation (Goliath 28 classes, or the 19-class face layout) from any released format."""

    backends = ("sapiens_goliath", "sapiens_face")

    def setup(self) -> None:
        """Load the checkpoint; once per worker."""
        from tasks.perception.sapiens import load_sapiens

        cfg = self.config
        self.model = load_sapiens(cfg.checkpoint, "segmentation", cfg.arch, cfg.image_size,
                                  len(self.label_map.classes), resolve_device(cfg.runtime), trust_code=cfg.trust_code)

    def _logits(self, crops: np.ndarray) -> torch.Tensor:
        from tasks.perception.sapiens import normalise

        # Sapiens' test pipeline resizes to the network size without keeping the aspect ratio.
        height, width = self.config.image_size
        resized = np.stack([cv2.resize(c, (width, height), interpolation=cv2.INTER_LINEAR) for c in crops])
        logits = self.model(normalise(resized))
        if logits.shape[1] != len(self.label_map.classes):
            raise ValueError(f"the segmentation network returned {logits.shape[1]} classes; the "
                             f"{self.label_map.name} label map has {len(self.label_map.classes)}")
        return logits

