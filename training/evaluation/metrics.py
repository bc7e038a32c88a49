"""The evaluation's metrics beyond the pixel ones of `training.metrics`: those measured with a network of
`training.evaluation.extractors`, and the distances between feature sets.

- `lpips_per_sample`: torchmetrics' LPIPS with its backbone from a local file (`LpipsNet`).
- `region_metrics_per_sample`: L1 and PSNR inside a region (the triplet truth's attribute region).
- `frechet_distance` of two feature sets (torchmetrics' FID computation): FID with `InceptionFeatures` of frames,
  the FVD-style distance with `VideoFeatures` of clips (`training.evaluation.report` pools each clip's features).
- `cosine_similarity_per_pair` of paired embeddings (CLIP-I, DINO, ArcFace ID similarity).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F
from torchmetrics.functional.image.lpips import _lpips_update
from torchmetrics.image.fid import FrechetInceptionDistance

from training.metrics import check_image_pairs

if TYPE_CHECKING:
    from training.evaluation.extractors import LpipsNet

__all__ = ["cosine_similarity_per_pair", "frechet_distance", "lpips_per_sample", "region_metrics_per_sample"]


@torch.no_grad()
def region_metrics_per_sample(generated: torch.Tensor, real: torch.Tensor, region: torch.Tensor
                              ) -> dict[str, list[float]]:
    """`region_l1` and `region_psnr` (dB) of each image pair over the pixels where `region` ((H, W) or (N, H, W))
    is non-zero, every channel: the mean absolute error and 10 log10(1 / MSE) there (`inf` where they are equal).
    Raises ValueError for an empty region."""
    generated, real = check_image_pairs(generated, real)
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



@torch.no_grad()
def lpips_per_sample(generated: torch.Tensor, real: torch.Tensor, net: LpipsNet) -> list[float]:
    """LPIPS of each image pair (lower is closer; 0 for identical images), by torchmetrics' LPIPS update on
    images in [0, 1] (`normalize=True`; values outside [0, 1] are refused by torchmetrics)."""
    generated, real = check_image_pairs(generated, real)
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
