"""Reconstruction metrics: torchmetrics' PSNR and SSIM plus L1, per image and averaged."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.image import StructuralSimilarityIndexMeasure

from training.metrics import reconstruction_metrics, reconstruction_metrics_per_sample


def _images(n: int = 3, size: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_identical_images() -> None:
    images = _images()
    metrics = reconstruction_metrics(images, images.clone())
    assert metrics["l1"] == 0.0
    assert metrics["ssim"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["psnr"] == math.inf  # torchmetrics: 10 log10(1 / 0)


def test_psnr_and_l1_of_a_uniform_offset() -> None:
    real = _images() * 0.8
    metrics = reconstruction_metrics_per_sample(real + 0.1, real)
    assert metrics["psnr"] == pytest.approx([20.0] * 3, abs=1e-4)  # MSE 0.01
    assert metrics["l1"] == pytest.approx([0.1] * 3, abs=1e-6)
    assert reconstruction_metrics(real + 0.1, real)["psnr"] == pytest.approx(20.0, abs=1e-4)


def test_ssim_matches_the_torchmetrics_module() -> None:
    real = _images(seed=1)
    generated = (real * 0.7 + 0.3 * _images(seed=2)).clamp(0, 1)
    per_sample = reconstruction_metrics_per_sample(generated, real)
    module = StructuralSimilarityIndexMeasure(data_range=1.0)
    for i in range(len(real)):
        assert per_sample["ssim"][i] == pytest.approx(module(generated[i:i + 1], real[i:i + 1]).item(), abs=1e-6)
    assert reconstruction_metrics(generated, real)["ssim"] == pytest.approx(
        StructuralSimilarityIndexMeasure(data_range=1.0)(generated, real).item(), abs=1e-6)
    assert 0 < per_sample["ssim"][0] < 1


def test_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="differ"):
        reconstruction_metrics(_images(2), _images(3))
    with pytest.raises(ValueError, match="N, 3, H, W"):
        reconstruction_metrics(torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16))
