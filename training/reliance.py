"""Reference reliance: how much the denoiser's prediction on held-out pairs depends on each reference.

The denoising loss of the same held-out samples, at the same fixed timesteps and the same fixed noise, under four
conditions:

- `both`: the sample's own references (what training optimises);
- `attribute_swapped`: the attribute reference (its latent and CLIP embedding) taken from another clip's sample;
- `portrait_swapped`: the portrait reference (its latent and ArcFace embedding) taken from another clip's sample;
- `dropped`: both references dropped, as the unconditional branch of classifier-free guidance.

Each loss is split by region: `inside` the target's attribute region (the sample's `portrait_mask`, M_port_train:
the attribute region of a frame of the same clip, dilated, i.e. the region the model regenerates) and `outside`
it, at latent resolution. A gap is `loss(condition) - loss(both)`: positive = the model uses what that condition
took away. A healthy run shows a positive `attribute_swapped` gap inside the region, a positive `portrait_swapped`
gap outside it, and a positive `dropped` gap in both; a gap near 0 means the model ignores that reference (a
wiring bug, or a model that has not learnt to use it yet). Swapping needs a sample of another clip in the batch;
with a single clip the swapped conditions are left out.

The loss is the plain MSE against what the schedule predicts (v or the noise), with no min-SNR weight, averaged
over the fixed timesteps; the noise comes from a generator seeded by `seed`, so two passes over the same weights
give the same figures and passes of one run differ only by the weights.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import zip_longest

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from data_specs.sample import PairSample
from model.durian import ReferenceInputs
from training.data import PairEntry, collate
from training.step import Encoders, ModelInputs, model_inputs

__all__ = ["CONDITIONS", "GAPS", "REGIONS", "RelianceReport", "across_videos", "reference_reliance"]

BOTH, ATTRIBUTE_SWAPPED, PORTRAIT_SWAPPED, DROPPED = "both", "attribute_swapped", "portrait_swapped", "dropped"
CONDITIONS = (BOTH, ATTRIBUTE_SWAPPED, PORTRAIT_SWAPPED, DROPPED)
GAPS = CONDITIONS[1:]
REGIONS = ("inside", "outside")
ALL = "all"  # the row of every attribute together
DEFAULT_TIMESTEP_FRACTIONS = (0.25, 0.5, 0.75)  # of the schedule's train timesteps: mid-noise, where guidance shows

Denoiser = torch.nn.Module  # with DurianModel's forward: (noisy, timesteps, pose, references, drop_references)


@dataclass
class RelianceReport:
    """Mean losses per (attribute or `all`, condition, region), and the gaps to `both`."""

    losses: dict[str, dict[str, dict[str, float]]]
    samples: dict[str, int]

    def gap(self, attribute: str, condition: str, region: str) -> float:
        return self.losses[attribute][condition][region] - self.losses[attribute][BOTH][region]

    def scalars(self, gaps_only: bool = False) -> dict[str, float]:
        """Flat names for the training log: `reliance/<attribute>/<condition>_<region>` (loss; with `gaps_only`
        only the `both` loss) and `reliance/<attribute>/gap_<condition>_<region>`."""
        flat = {}
        for attribute, conditions in self.losses.items():
            for condition, regions in conditions.items():
                for region, value in regions.items():
                    if condition == BOTH or not gaps_only:
                        flat[f"reliance/{attribute}/{condition}_{region}"] = value
                    if condition != BOTH:
                        flat[f"reliance/{attribute}/gap_{condition}_{region}"] = self.gap(attribute, condition,
                                                                                           region)
        return flat

    def table(self) -> list[dict[str, object]]:
        """One row per attribute (and `all`): its samples and every gap, for a Markdown or Prefect table."""
        rows = []
        for attribute, conditions in self.losses.items():
            row: dict[str, object] = {"attribute": attribute, "samples": self.samples[attribute],
                                      "loss_both_inside": conditions[BOTH]["inside"],
                                      "loss_both_outside": conditions[BOTH]["outside"]}
            for condition in GAPS:
                if condition in conditions:
                    for region in REGIONS:
                        row[f"gap_{condition}_{region}"] = self.gap(attribute, condition, region)
            rows.append(row)
        return rows


def across_videos(pairs: Sequence[PairEntry], count: int) -> list[PairEntry]:
    """Up to `count` of `pairs` taken from their videos in turn (the first of each video, then the second, ...), so
    that the swapped conditions have another video's sample to swap in."""
    by_video: dict[str, list[PairEntry]] = defaultdict(list)
    for pair in pairs:
        by_video[pair.video_id].append(pair)
    rounds = zip_longest(*by_video.values())
    return [pair for row in rounds for pair in row if pair is not None][:count]


def _other_clip(video_ids: Sequence[str]) -> list[int] | None:
    """For each sample, the index of the next sample (cyclically) from another video; None if there is none."""
    order = []
    for i, video in enumerate(video_ids):
        others = [j for j in [*range(i + 1, len(video_ids)), *range(i)] if video_ids[j] != video]
        if not others:
            return None
        order.append(others[0])
    return order


def _swapped(references: ReferenceInputs, donors: list[int], attribute: bool) -> ReferenceInputs:
    """The references with the attribute (latent and CLIP embedding) or the portrait (latent and ArcFace
    embedding) of sample donors[i] in place of sample i's."""
    index = torch.tensor(donors, device=references.portrait.device)
    if attribute:
        return replace(references, attributes=references.attributes[index],
                       attribute_embeds=references.attribute_embeds[index])
    return replace(references, portrait=references.portrait[index], identity_embeds=references.identity_embeds[index])


@torch.no_grad()
def _losses(model: Denoiser, scheduler: DDPMScheduler, inputs: ModelInputs, references: ReferenceInputs,
            drop: torch.Tensor, timesteps: Sequence[int], noises: Sequence[torch.Tensor],
            inside: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sample MSE (B,) inside and outside the region, averaged over the timesteps."""
    latents = inputs.latents
    b = latents.shape[0]
    sums = {region: torch.zeros(b, device=latents.device) for region in REGIONS}
    outside = 1 - inside
    held_in = next(model.parameters()).dtype  # bf16 working copies under mixed precision: autocast as in training
    for timestep, noise in zip(timesteps, noises):
        t = torch.full((b,), timestep, device=latents.device, dtype=torch.long)
        noisy = scheduler.add_noise(latents, noise, t)
        with torch.autocast(latents.device.type, dtype=torch.bfloat16, enabled=held_in == torch.bfloat16):
            prediction = model(noisy, t, inputs.pose_frames, references, drop_references=drop).float()
        target = noise if scheduler.config.prediction_type == "epsilon" else scheduler.get_velocity(latents, noise, t)
        error = F.mse_loss(prediction, target, reduction="none").mean(dim=1)  # (B, F, h, w)
        for region, weight in (("inside", inside), ("outside", outside)):
            total = weight.sum(dim=(1, 2, 3)).clamp(min=1e-6)
            sums[region] += (error * weight).sum(dim=(1, 2, 3)) / total
    return {region: value / len(timesteps) for region, value in sums.items()}


@torch.no_grad()
def reference_reliance(model: Denoiser, scheduler: DDPMScheduler, encoders: Encoders, samples: Sequence[PairSample],
                       *, frames: int | None = None, timesteps: Sequence[int] | None = None, seed: int = 0,
                       device: torch.device | str = "cpu") -> RelianceReport:
    """The four conditions' losses on `samples` (held-out pairs), per attribute and in all.

    model: the `DurianModel` (or anything with its forward); scheduler: its training scheduler
    (`training.step.training_noise_scheduler`). timesteps: default `DEFAULT_TIMESTEP_FRACTIONS` of the schedule.
    The targets are encoded with `encoders.vae` (stored latents may be another VAE's).
    """
    device = torch.device(device)
    batch = collate(list(samples), frames)
    inputs = model_inputs(encoders, batch, device, stored_latents=False)
    latents = inputs.latents  # (B, c, F, h, w)
    b, _, f, h, w = latents.shape
    region = F.interpolate(batch.portrait_mask.to(device), size=(h, w), mode="area")  # (B, 1, h, w)
    inside = (region > 0.5).float().expand(b, f, h, w)
    count = scheduler.config.num_train_timesteps
    timesteps = list(timesteps) if timesteps is not None else [round(x * (count - 1))
                                                               for x in DEFAULT_TIMESTEP_FRACTIONS]
    generator = torch.Generator(device=device).manual_seed(seed)
    noises = [torch.randn(latents.shape, generator=generator, device=device) for _ in timesteps]
    keep = torch.zeros(b, dtype=torch.bool, device=device)
    conditions = {BOTH: (inputs.references, keep), DROPPED: (inputs.references, torch.ones_like(keep))}
    donors = _other_clip(batch.video_ids)
    if donors is not None:
        conditions[ATTRIBUTE_SWAPPED] = (_swapped(inputs.references, donors, attribute=True), keep)
        conditions[PORTRAIT_SWAPPED] = (_swapped(inputs.references, donors, attribute=False), keep)
    per_sample = {name: _losses(model, scheduler, inputs, references, drop, timesteps, noises, inside)
                  for name, (references, drop) in conditions.items()}
    groups: dict[str, list[int]] = defaultdict(list)
    for i, attribute in enumerate(batch.attributes):
        groups[attribute].append(i)
    groups[ALL] = list(range(b))
    losses = {attribute: {name: {r: float(values[r][members].mean()) for r in REGIONS}
                          for name, values in per_sample.items() if name in CONDITIONS}
              for attribute, members in sorted(groups.items())}
    return RelianceReport(losses=losses, samples={attribute: len(members) for attribute, members in groups.items()})
