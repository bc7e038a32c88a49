"""Pixel metrics of generated frames against the real ones: the one code path of the validation pass during
training (`training.validation`) and of the evaluation's self-transfer scores (`training.evaluation`).

Images are float tensors (N, 3, H, W) in [0, 1] (frames of a clip flattened into N by the caller). PSNR and SSIM
are torchmetrics' (data_range 1.0, SSIM with its default 11-pixel Gaussian window, sigma 1.5, borders
reflect-padded); L1 is the mean absolute error. A batch's value is the mean of the per-image values, so batches of
any size combine by averaging `reconstruction_metrics_per_sample` lists. PSNR of identical images is `inf`
(torchmetrics' value). The metrics that need a network (LPIPS, FID, CLIP-I, ...) are the evaluation's
(`training.evaluation.metrics`): validation measures without loading any.
"""

from __future__ import annotations

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

__all__ = ["METRICS", "check_image_pairs", "reconstruction_metrics", "reconstruction_metrics_per_sample"]

METRICS = ("l1", "psnr", "ssim")


def check_image_pairs(generated: torch.Tensor, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both as float, detached, on `generated`'s device; ValueError unless they are images (N, 3, H, W) of one
    shape, N > 0."""
    if generated.shape != real.shape:
        raise ValueError(f"generated {tuple(generated.shape)} and real {tuple(real.shape)} differ in shape")
    if generated.ndim != 4 or generated.shape[1] != 3:
        raise ValueError(f"expected images (N, 3, H, W), got {tuple(generated.shape)}")
    if generated.shape[0] == 0:
        raise ValueError("no images")
    return generated.detach().float(), real.detach().float().to(generated.device)


@torch.no_grad()
def reconstruction_metrics_per_sample(generated: torch.Tensor, real: torch.Tensor) -> dict[str, list[float]]:
    """`l1`, `psnr` (dB) and `ssim` of each image pair, in order."""
    generated, real = check_image_pairs(generated, real)
    l1 = (generated - real).abs().mean(dim=(1, 2, 3))
    psnr = peak_signal_noise_ratio(generated, real, data_range=1.0, reduction="none", dim=(1, 2, 3))
    ssim = structural_similarity_index_measure(generated, real, data_range=1.0, reduction="none")
    return {name: values.double().cpu().tolist() for name, values in zip(METRICS, (l1, psnr, ssim))}


def reconstruction_metrics(generated: torch.Tensor, real: torch.Tensor) -> dict[str, float]:
    """Mean `l1`, `psnr` (dB) and `ssim` over the image pairs."""
    per_sample = reconstruction_metrics_per_sample(generated, real)
    return {name: sum(values) / len(values) for name, values in per_sample.items()}
