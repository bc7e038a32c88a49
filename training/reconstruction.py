"""Self-attribute transfer: a pipeline reconstructs a pair sample's target frames from the sample's own references.

The one code path of the validation pass during training and of the evaluation's self-transfer metrics. The
references are exactly those training saw (attribute I·M_attr, portrait I·(1 − M_port_train), the same masks,
the portrait's and attribute's ArcFace points), and the guidance is the sample's own rendered pose frames, so
the result is comparable pixel by pixel with the real targets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from data_specs.sample import PairSample
from model.pipeline import DurianPipeline
from training.metrics import reconstruction_metrics_per_sample

__all__ = ["Reconstruction", "comparison_columns", "generate", "images", "reconstruct"]

COMPARISON_LABELS = ["portrait", "attribute", "guidance", "result", "real"]


@dataclass
class Reconstruction:
    """One sample reconstructed: the generated and the real frames (F, H, W, 3) uint8, and per-frame metrics."""

    sample: PairSample
    generated: np.ndarray
    real: np.ndarray
    metrics: dict[str, list[float]]  # training.metrics.METRICS -> one value per frame

    def mean(self) -> dict[str, float]:
        return {name: float(np.mean(values)) for name, values in self.metrics.items()}


def images(frames: np.ndarray) -> torch.Tensor:
    """(F, H, W, 3) uint8 -> (F, 3, H, W) float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255


@torch.no_grad()
def generate(pipeline: DurianPipeline, sample: PairSample, attribute_from: PairSample | None = None, *,
             frames: int | None = None, steps: int = 25, guidance_scale: float = 3.5,
             seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The sample's portrait, following its own guidance, wearing the attribute of `attribute_from` (default: its
    own, i.e. self transfer) -> (generated frames (F, H, W, 3) uint8, regenerated region (H, W) float)."""
    donor = attribute_from or sample
    count = frames or len(sample.targets)
    height, width = sample.targets.shape[1:3]
    multiple = pipeline.size_multiple
    if height % multiple or width % multiple:
        raise ValueError(f"sample {sample.key}: {height} x {width} frames are not multiples of the pipeline's "
                         f"{multiple}")
    output = pipeline(
        sample.portrait_image, sample.portrait_mask, sample.portrait_keypoints,
        [donor.attribute_ref], [donor.attribute_mask], [donor.attribute_keypoints],
        pose_frames=images(sample.pose_frames[:count]), num_frames=count, height=height, width=width,
        num_inference_steps=steps, guidance_scale=guidance_scale, window=count,
        generator=torch.Generator(device="cpu").manual_seed(seed), output_type="pt")
    generated = output.frames.float().clamp(0, 1).cpu()  # (F, 3, H, W)
    return (generated.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8), output.portrait_mask


def reconstruct(pipeline: DurianPipeline, sample: PairSample, *, frames: int | None = None, steps: int = 25,
                guidance_scale: float = 3.5, seed: int = 0) -> Reconstruction:
    """Generate the sample's first `frames` targets (all by default) from its own references and guidance, and
    score them against the real ones."""
    generated, _ = generate(pipeline, sample, frames=frames, steps=steps, guidance_scale=guidance_scale, seed=seed)
    real = sample.targets[:len(generated)]
    return Reconstruction(sample=sample, generated=generated, real=real,
                          metrics=reconstruction_metrics_per_sample(images(generated), images(real)))


def comparison_columns(sample: PairSample, generated: np.ndarray,
                       attribute_from: PairSample | None = None) -> tuple[list[np.ndarray], list[str]]:
    """The columns of a side-by-side video (portrait, attribute, guidance, result, real) and their labels."""
    count = len(generated)
    attribute = (attribute_from or sample).attribute_ref
    return ([sample.portrait_ref, attribute, sample.pose_frames[:count], generated, sample.targets[:count]],
            list(COMPARISON_LABELS))
