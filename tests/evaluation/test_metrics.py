"""The evaluation's metrics against values known independently of torchmetrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import linalg
from scipy.ndimage import gaussian_filter

from training.evaluation.metrics import cosine_similarity_per_pair, frechet_distance, region_metrics_per_sample
from training.metrics import reconstruction_metrics_per_sample


def _images(n: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- PSNR and SSIM


@pytest.mark.parametrize("offset", [0.05, 0.2])
def test_psnr_of_a_constant_offset(offset: float) -> None:
    real = _images() * 0.75
    psnr = reconstruction_metrics_per_sample(real + offset, real)["psnr"]
    assert psnr == pytest.approx([-20 * math.log10(offset)] * 3, abs=1e-4)  # MSE = offset^2


def test_region_metrics_count_only_the_region() -> None:
    real = _images(2) * 0.75
    generated = real.clone()
    generated[0, :, :8] += 0.1  # inside the region (its top 8 rows) of the first image only
    generated[:, :, 16:] = 1.0  # outside it, in both
    region = torch.zeros(32, 32)
    region[:8] = 1
    scores = region_metrics_per_sample(generated, real, region)
    assert scores["region_l1"] == pytest.approx([0.1, 0.0], abs=1e-6)
    assert scores["region_psnr"][0] == pytest.approx(20.0, abs=1e-4) and scores["region_psnr"][1] == math.inf
    with pytest.raises(ValueError, match="the region is empty"):
        region_metrics_per_sample(generated, real, torch.zeros(32, 32))


def test_psnr_of_gaussian_noise() -> None:
    real = _images(size=64).double()
    noise = 0.05 * torch.randn(real.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    psnr = reconstruction_metrics_per_sample(real + noise, real)["psnr"]
    realised = [10 * math.log10(1 / mse) for mse in noise.square().mean(dim=(1, 2, 3)).tolist()]
    assert psnr == pytest.approx(realised, abs=1e-3)
    assert psnr == pytest.approx([-20 * math.log10(0.05)] * 3, abs=0.1)  # sigma^2 = MSE in expectation


def _ssim_reference(x: np.ndarray, y: np.ndarray) -> float:
    """Wang et al.'s SSIM with an 11-tap Gaussian window (sigma 1.5; scipy's radius int(3.5 sigma + 0.5) = 5),
    K1 0.01, K2 0.03, data range 1, averaged over channels and every pixel, the borders mirror-padded
    (torchmetrics' convention; scikit-image instead drops the border pixels)."""
    def blur(image: np.ndarray) -> np.ndarray:
        return gaussian_filter(image, sigma=(0, 1.5, 1.5), truncate=3.5, mode="mirror")

    mu_x, mu_y = blur(x), blur(y)
    var_x, var_y = blur(x * x) - mu_x**2, blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    ssim = (2 * mu_x * mu_y + c1) * (2 * cov + c2) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return float(ssim.mean())


def test_ssim_matches_a_reference_implementation() -> None:
    real = _images(size=40, seed=2)
    generated = (0.6 * real + 0.4 * _images(size=40, seed=3)).clamp(0, 1)
    ssim = reconstruction_metrics_per_sample(generated, real)["ssim"]
    expected = [_ssim_reference(g.double().numpy(), r.double().numpy()) for g, r in zip(generated, real)]
    assert ssim == pytest.approx(expected, abs=1e-5)
    assert all(0 < value < 1 for value in ssim)


# ---------------------------------------------------------------- Fréchet distance


def _gaussian(n: int, mean: np.ndarray, mixing: np.ndarray, seed: int) -> torch.Tensor:
    """n samples of N(mean, mixing @ mixing.T)."""
    noise = np.random.default_rng(seed).standard_normal((n, len(mean)))
    return torch.from_numpy(mean + noise @ mixing.T)


def _closed_form(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) of the sample moments (scipy's matrix square root)."""
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(cov_a @ cov_b).real
    return float(np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(cov_a + cov_b - 2 * root))


def test_frechet_distance_of_gaussian_sets_matches_the_closed_form() -> None:
    rng = np.random.default_rng(0)
    a = _gaussian(3000, rng.normal(size=6), rng.normal(size=(6, 6)), seed=1)
    b = _gaussian(2000, rng.normal(size=6), rng.normal(size=(6, 6)), seed=2)
    assert frechet_distance(a, b) == pytest.approx(_closed_form(a.numpy(), b.numpy()), rel=1e-6)
    assert frechet_distance(a.float(), b.float()) == pytest.approx(_closed_form(a.numpy(), b.numpy()), rel=1e-5)


def test_frechet_distance_with_fewer_samples_than_dimensions_matches_the_closed_form() -> None:
    """The low-rank path (N, M < D): the same value as scipy's matrix square root and as torchmetrics' FID."""
    from torchmetrics.image.fid import _compute_fid

    rng = np.random.default_rng(7)
    a = _gaussian(12, rng.normal(size=40), rng.normal(size=(40, 40)), seed=8)
    b = _gaussian(9, rng.normal(size=40), rng.normal(size=(40, 40)), seed=9)
    assert frechet_distance(a, b) == pytest.approx(_closed_form(a.numpy(), b.numpy()), rel=1e-6)
    library = _compute_fid(a.mean(0), torch.cov(a.T), b.mean(0), torch.cov(b.T))
    assert frechet_distance(a, b) == pytest.approx(float(library), rel=1e-6)
    assert frechet_distance(a, a.clone()) == pytest.approx(0.0, abs=1e-8 * a.var(0).sum().item())


def test_frechet_distance_approaches_the_population_value() -> None:
    # Diagonal covariances commute: Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) = sum (sqrt(var_a) - sqrt(var_b))^2.
    mean_a, mean_b = np.array([0.0, 1.0, -1.0, 2.0]), np.array([0.5, 1.0, 0.0, 2.0])
    std_a, std_b = np.array([1.0, 2.0, 0.5, 1.0]), np.array([2.0, 1.0, 0.5, 3.0])
    a = _gaussian(40000, mean_a, np.diag(std_a), seed=3)
    b = _gaussian(40000, mean_b, np.diag(std_b), seed=4)
    expected = np.sum((mean_a - mean_b) ** 2) + np.sum((std_a - std_b) ** 2)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=0.03)


def test_frechet_distance_of_identical_and_shifted_sets() -> None:
    rng = np.random.default_rng(5)
    a = _gaussian(500, rng.normal(size=16), rng.normal(size=(16, 16)), seed=6)
    assert frechet_distance(a, a.clone()) == pytest.approx(0.0, abs=1e-8 * a.var(0).sum().item())
    shift = torch.from_numpy(rng.normal(size=16))
    assert frechet_distance(a, a + shift) == pytest.approx(shift.square().sum().item(), rel=1e-6)  # same covariance


def test_frechet_distance_rejects_bad_sets() -> None:
    with pytest.raises(ValueError, match="differ|expected"):
        frechet_distance(torch.rand(5, 3), torch.rand(5, 4))
    with pytest.raises(ValueError, match="two features"):
        frechet_distance(torch.rand(1, 3), torch.rand(5, 3))


# ---------------------------------------------------------------- cosine similarity


def test_cosine_similarity_per_pair() -> None:
    a = torch.randn(4, 8, generator=torch.Generator().manual_seed(7))
    assert cosine_similarity_per_pair(a, a.clone()) == pytest.approx([1.0] * 4, abs=1e-12)
    assert cosine_similarity_per_pair(a, 3 * a) == pytest.approx([1.0] * 4, abs=1e-12)
    assert cosine_similarity_per_pair(a, -a) == pytest.approx([-1.0] * 4, abs=1e-12)
    basis = torch.eye(3)
    assert cosine_similarity_per_pair(basis, basis.roll(1, dims=0)) == pytest.approx([0.0] * 3, abs=1e-12)
    against_one = cosine_similarity_per_pair(torch.cat([a[:1], -a[:1], 2 * a[:1]]), a[:1])
    assert against_one == pytest.approx([1.0, -1.0, 1.0], abs=1e-12)


def test_cosine_similarity_rejects_unpaired_embeddings() -> None:
    with pytest.raises(ValueError, match="embeddings"):
        cosine_similarity_per_pair(torch.rand(4, 8), torch.rand(3, 8))
    with pytest.raises(ValueError, match="embeddings"):
        cosine_similarity_per_pair(torch.rand(4, 8), torch.rand(4, 6))
