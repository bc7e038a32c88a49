"""The evaluation's metrics: the one code path validation during training and the evaluation both use.

Reconstruction of generated frames against the real ones (self-transfer): images are float tensors (N, 3, H, W)
in [0, 1] (frames of a clip flattened into N by the caller). PSNR and SSIM are torchmetrics' (data_range 1.0, SSIM
with its default 11-pixel Gaussian window, sigma 1.5, borders reflect-padded); L1 is the mean absolute error; LPIPS
is torchmetrics' network with its backbone from a local file (`training.extractors.LpipsNet`). A batch's value is
the mean of the per-image values, so batches of any size combine by averaging `reconstruction_metrics_per_sample`
lists. PSNR of identical images is `inf` (torchmetrics' value).

Distributions and similarities (cross-transfer, FID): `frechet_distance` of two feature sets (torchmetrics' FID
computation), `fid` and `fvd` with the extractors of `training.extractors`, and `cosine_similarity_per_pair` of
paired embeddings (CLIP-I, DINO, ArcFace ID similarity).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure
from torchmetrics.functional.image.lpips import _lpips_update
from torchmetrics.image.fid import FrechetInceptionDistance

if TYPE_CHECKING:
    from training.extractors import InceptionFeatures, LpipsNet, VideoFeatures

__all__ = ["METRICS", "cosine_similarity_per_pair", "fid", "frechet_distance", "fvd", "lpips_per_sample",
           "reconstruction_metrics", "reconstruction_metrics_per_sample", "region_metrics_per_sample"]

METRICS = ("l1", "psnr", "ssim")


def _check(generated: torch.Tensor, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if generated.shape != real.shape:
        raise ValueError(f"generated {tuple(generated.shape)} and real {tuple(real.shape)} differ in shape")
    if generated.ndim != 4 or generated.shape[1] != 3:
        raise ValueError(f"expected images (N, 3, H, W), got {tuple(generated.shape)}")
    if generated.shape[0] == 0:
        raise ValueError("no images")
    return generated.detach().float(), real.detach().float().to(generated.device)


@torch.no_grad()
def reconstruction_metrics_per_sample(generated: torch.Tensor, real: torch.Tensor, lpips: LpipsNet | None = None
                                      ) -> dict[str, list[float]]:
    """`l1`, `psnr` (dB) and `ssim` of each image pair, in order, and `lpips` when an LPIPS network is given."""
    generated, real = _check(generated, real)
    l1 = (generated - real).abs().mean(dim=(1, 2, 3))
    psnr = peak_signal_noise_ratio(generated, real, data_range=1.0, reduction="none", dim=(1, 2, 3))
    ssim = structural_similarity_index_measure(generated, real, data_range=1.0, reduction="none")
    metrics = {name: values.double().cpu().tolist() for name, values in zip(METRICS, (l1, psnr, ssim))}
    if lpips is not None:
        metrics["lpips"] = lpips_per_sample(generated, real, lpips)
    return metrics


@torch.no_grad()
def region_metrics_per_sample(generated: torch.Tensor, real: torch.Tensor, region: torch.Tensor
                              ) -> dict[str, list[float]]:
    """`region_l1` and `region_psnr` (dB) of each image pair over the pixels where `region` ((H, W) or (N, H, W))
    is non-zero, every channel: the mean absolute error and 10 log10(1 / MSE) there (`inf` where they are equal).
    Raises ValueError for an empty region."""
    generated, real = _check(generated, real)
    inside = (region.to(generated.device) != 0).expand(generated.shape[0], *generated.shape[2:])
    pixels = inside.sum(dim=(1, 2))
    if (pixels == 0).any():
        raise ValueError("the region is empty")
    error = (generated - real).permute(1, 0, 2, 3)[:, inside]  # (3, pixels of every image)
    image = torch.repeat_interleave(torch.arange(len(pixels), device=generated.device), pixels)
    count = 3 * pixels.to(generated.dtype)
    l1 = torch.zeros(len(pixels), device=generated.device).index_add_(0, image, error.abs().sum(dim=0)) / count
    mse = torch.zeros(len(pixels), device=generated.device).index_add_(0, image, error.square().sum(dim=0)) / count
    psnr = 10 * torch.log10(1 / mse)  # inf for mse 0
    return {"region_l1": l1.double().cpu().tolist(), "region_psnr": psnr.double().cpu().tolist()}


def reconstruction_metrics(generated: torch.Tensor, real: torch.Tensor, lpips: LpipsNet | None = None
                           ) -> dict[str, float]:
    """Mean `l1`, `psnr` (dB) and `ssim` over the image pairs, and `lpips` when an LPIPS network is given."""
    per_sample = reconstruction_metrics_per_sample(generated, real, lpips)
    return {name: sum(values) / len(values) for name, values in per_sample.items()}


@torch.no_grad()
def lpips_per_sample(generated: torch.Tensor, real: torch.Tensor, net: LpipsNet) -> list[float]:
    """LPIPS of each image pair (lower is closer; 0 for identical images), by torchmetrics' LPIPS update on
    images in [0, 1] (`normalize=True`; values outside [0, 1] are refused by torchmetrics)."""
    generated, real = _check(generated, real)
    parameter = next(net.parameters())
    scores = _lpips_update(generated.to(parameter.device, parameter.dtype), real.to(parameter.device, parameter.dtype),
                           net, normalize=True)
    return scores.reshape(-1).double().cpu().tolist()


class _GivenFeatures(nn.Module):
    """FrechetInceptionDistance's feature network for features computed elsewhere: passes them through."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features  # read by FrechetInceptionDistance to size its statistics

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """The Fréchet distance of the Gaussians fitted to two feature sets (N, D) and (M, D):
    ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)), by torchmetrics' FrechetInceptionDistance (in float64).

    FID with `InceptionFeatures` of frames, FVD-style with `VideoFeatures` of clips. Each set needs two rows at
    least; with fewer rows than dimensions the covariances are singular and the value is biased upwards.

    With fewer rows than dimensions (a small evaluation: tens of frames, 2048-d features) the same value is
    computed exactly from the centred sets A, B instead: the non-zero eigenvalues of S_a S_b are the squared
    singular values of A B^T / sqrt((N-1)(M-1)), so the trace term needs an (N, M) SVD, not a (D, D)
    eigendecomposition (seconds instead of minutes on a CPU).
    """
    if features_a.ndim != 2 or features_b.ndim != 2 or features_a.shape[1] != features_b.shape[1]:
        raise ValueError(f"expected feature sets (N, D) and (M, D), got {tuple(features_a.shape)} and "
                         f"{tuple(features_b.shape)}")
    if min(len(features_a), len(features_b)) < 2:
        raise ValueError(f"a Fréchet distance needs two features per set at least, got {len(features_a)} and "
                         f"{len(features_b)}")
    n, m, dims = len(features_a), len(features_b), features_a.shape[1]
    if max(n, m) < dims:
        a, b = features_a.detach().double().cpu(), features_b.detach().double().cpu()
        mean_a, mean_b = a.mean(dim=0), b.mean(dim=0)
        a, b = a - mean_a, b - mean_b
        trace_sqrt = torch.linalg.svdvals(a @ b.T).sum() / math.sqrt((n - 1) * (m - 1))
        traces = a.square().sum() / (n - 1) + b.square().sum() / (m - 1)
        return float((mean_a - mean_b).square().sum() + traces - 2 * trace_sqrt)
    metric = FrechetInceptionDistance(feature=_GivenFeatures(dims))
    metric.update(features_a.detach().double().cpu(), real=True)
    metric.update(features_b.detach().double().cpu(), real=False)
    return float(metric.compute())


def fid(generated: torch.Tensor, real: torch.Tensor, inception: InceptionFeatures, batch_size: int = 32) -> float:
    """FID between generated and real frames (N, 3, H, W) in [0, 1], in torchvision Inception-v3's feature space
    (see `InceptionFeatures` on comparing with published FIDs)."""
    return frechet_distance(inception.features(generated, batch_size), inception.features(real, batch_size))


def fvd(generated: torch.Tensor, real: torch.Tensor, video: VideoFeatures, batch_size: int = 8) -> float:
    """FVD-style distance between generated and real clips (N, 3, F, H, W) in [0, 1]: the Fréchet distance of
    the clips' R3D-18 (or R(2+1)D-18) features instead of I3D's (see `VideoFeatures`)."""
    return frechet_distance(video.features(generated, batch_size), video.features(real, batch_size))


def cosine_similarity_per_pair(embeddings_a: torch.Tensor, embeddings_b: torch.Tensor) -> list[float]:
    """Cosine similarity of each pair of embeddings (N, D) and (N, D), or of each row against one (1, D)
    (e.g. every generated frame against the reference), in float64; 1 for identical directions."""
    if (embeddings_a.ndim != 2 or embeddings_b.ndim != 2 or embeddings_a.shape[1] != embeddings_b.shape[1]
            or len(embeddings_b) not in (1, len(embeddings_a))):
        raise ValueError(f"expected embeddings (N, D) and (N, D) or (1, D), got {tuple(embeddings_a.shape)} and "
                         f"{tuple(embeddings_b.shape)}")
    similarity = F.cosine_similarity(embeddings_a.detach().double(), embeddings_b.detach().double().to(
        embeddings_a.device), dim=1)
    return similarity.cpu().tolist()
