"""A learnable tiny world: the tiny flavour with a VAE fitted to the dataset's own frames.

The tiny flavour's random VAE decodes any latent to coloured noise, so a tiny model trained on it can never show a
face, however well its denoiser learns. Here the tiny VAE (the flavour's own `AutoencoderKL` architecture) is fitted
once to the frames of the dataset's *training* split (targets and references; the evaluation split is never seen),
its `scaling_factor` set so that the scaled latents have unit variance (as SD's 0.18215 does for SD's VAE), and saved
with a random-initialised tiny Durian as a `DurianPipeline` folder beside the dataset (`<dataset>/tiny_world/`).
A training run starts from it with `init_from=<dataset>/tiny_world/pipeline`: the VAE is frozen during training
like any pretrained VAE, and the run's pipeline decodes with it. `fit.json` records how well it reconstructs
(PSNR on training frames and on held-out ones) and the settings; a second call with the same settings reuses it.

Only the VAE is fitted: the denoiser, the reference nets, CLIP and ArcFace stay random (the two encoders are frozen
random projections, which still tell images apart).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from data_specs.model import model_flavour
from model.builders import random_components
from training.data import DatasetIndex, read_pairs
from training.metrics import reconstruction_metrics

__all__ = ["TINY_WORLD_DIR", "VaeFit", "dataset_frames", "fit_vae", "tiny_world"]

log = logging.getLogger(__name__)

TINY_WORLD_DIR = "tiny_world"
FIT_FILE = "fit.json"


@dataclass(frozen=True)
class VaeFit:
    """How a VAE was fitted and how well it reconstructs (PSNR in dB of decode(mode(encode(x))))."""

    steps: int
    batch_size: int
    learning_rate: float
    seed: int
    frames: int
    train_psnr: float
    heldout_psnr: float | None
    scaling_factor: float
    seconds: float


def dataset_frames(root: str | Path, split: str = "train", limit: int = 512) -> torch.Tensor:
    """Up to `limit` distinct images (N, 3, H, W) in [0, 1] of the dataset's stage-1 and stage-2 pairs of one split
    (`train` or `eval`): targets and both references, in manifest order."""
    index = DatasetIndex.open(root)
    images: list[np.ndarray] = []
    for stage in index.stages:
        pairs = index.training_pairs(stage) if split == "train" else index.validation_pairs(stage)
        for sample in read_pairs(index, pairs):
            images += [*sample.targets, sample.portrait_image, sample.attribute_ref]
            if len(images) >= limit:
                break
    if not images:
        raise ValueError(f"dataset {root} has no {split} pairs to fit a VAE to")
    stack = np.stack(images[:limit])
    return torch.from_numpy(stack).permute(0, 3, 1, 2).float() / 255


def reconstruction_psnr(vae: AutoencoderKL, images: torch.Tensor) -> float:
    """Mean PSNR (dB) of the VAE's reconstruction of `images` (N, 3, H, W) in [0, 1], through the posterior mode."""
    with torch.no_grad():
        latents = vae.encode(images * 2 - 1).latent_dist.mode()
        decoded = ((vae.decode(latents).sample + 1) / 2).clamp(0, 1)
    return reconstruction_metrics(decoded, images)["psnr"]


def fit_vae(vae: AutoencoderKL, images: torch.Tensor, *, steps: int = 300, batch_size: int = 8,
            learning_rate: float = 2e-3, kl_weight: float = 1e-6, seed: int = 0) -> AutoencoderKL:
    """Fit `vae` in place to `images` (N, 3, H, W) in [0, 1]: L1 + MSE of the reconstruction through a posterior
    sample, a small KL term (keeps the posterior narrow and the latents bounded, as SD's VAE was trained), Adam
    with a cosine decay; then set `scaling_factor` to 1 / std of the posterior modes. Returns `vae` in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    vae.train().requires_grad_(True)
    optimiser = torch.optim.Adam(vae.parameters(), lr=learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
    for _ in range(steps):
        batch = images[torch.randint(len(images), (batch_size,), generator=generator)] * 2 - 1
        posterior = vae.encode(batch).latent_dist
        noise = torch.randn(posterior.mean.shape, generator=generator)
        decoded = vae.decode(posterior.mean + posterior.std * noise).sample
        loss = F.l1_loss(decoded, batch) + F.mse_loss(decoded, batch) + kl_weight * posterior.kl().mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        modes = torch.cat([vae.encode(chunk * 2 - 1).latent_dist.mode() for chunk in images.split(64)])
    vae.register_to_config(scaling_factor=float(1 / modes.std()))
    return vae


def tiny_world(dataset: str | Path, *, steps: int = 300, seed: int = 0, out: str | Path | None = None) -> Path:
    """The tiny-world pipeline folder of `dataset` (`<dataset>/tiny_world/pipeline` unless `out`), fitted and saved
    on the first call, reused when its `fit.json` records the same steps and seed. Returns the pipeline folder."""
    folder = Path(out) if out is not None else Path(dataset) / TINY_WORLD_DIR
    pipeline_dir, record = folder / "pipeline", folder / FIT_FILE
    if record.is_file() and (pipeline_dir / "model_index.json").is_file():
        fit = json.loads(record.read_text())
        if fit.get("steps") == steps and fit.get("seed") == seed:
            return pipeline_dir
    start = time.perf_counter()
    torch.manual_seed(seed)
    components = random_components(model_flavour("tiny"), seed=seed)
    train = dataset_frames(dataset, "train")
    fit_vae(components.vae, train, steps=steps, seed=seed)
    try:
        heldout = reconstruction_psnr(components.vae, dataset_frames(dataset, "eval", limit=64))
    except ValueError:  # nothing held out
        heldout = None
    fit = VaeFit(steps=steps, batch_size=8, learning_rate=2e-3, seed=seed, frames=len(train),
                 train_psnr=reconstruction_psnr(components.vae, train[:64]), heldout_psnr=heldout,
                 scaling_factor=float(components.vae.config.scaling_factor), seconds=time.perf_counter() - start)
    components.pipeline().save_pretrained(str(pipeline_dir))
    record.write_text(json.dumps(asdict(fit), indent=1))
    log.info("tiny VAE fitted to %d training frames in %.0f s: PSNR %.1f dB (training), %s (held out)", fit.frames,
             fit.seconds, fit.train_psnr, "n/a" if heldout is None else f"{heldout:.1f} dB")
    return pipeline_dir
