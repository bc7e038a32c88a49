"""Reference-reliance diagnostics on a tiny model whose answer is known: a model cut off from its attribute
reference shows exactly no gap when that reference is swapped; the intact model shows one."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from data_specs.model import model_flavour
from model.builders import random_components
from model.durian import DurianModel, ReferenceInputs
from tests.training.training_testing import make_pairs
from training.data import PairEntry
from training.reliance import ALL, GAPS, REGIONS, across_videos, reference_reliance
from training.step import Encoders, training_noise_scheduler


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> None:
    """Tiny convolutions on a shared CPU: one thread is ~10x faster than two contending with other work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def setting(one_thread: None) -> tuple:
    components = random_components(model_flavour("tiny"), seed=0)
    encoders = Encoders(components.vae, components.image_encoder, components.identity_encoder)
    samples = make_pairs(clips=3, size=32, pairs_per_clip=1, hat_clips=(1,), stages=(1,))
    return components.model.eval(), training_noise_scheduler(components.scheduler), encoders, samples


class AttributeBlind(torch.nn.Module):
    """The model with its attribute reference disconnected: the attribute latents and CLIP embeddings it receives
    are zeros, whatever the sample's attribute reference is."""

    def __init__(self, model: DurianModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, pose: torch.Tensor, references: ReferenceInputs,
                drop_references: torch.Tensor | None = None) -> torch.Tensor:
        cut = replace(references, attributes=torch.zeros_like(references.attributes),
                      attribute_embeds=torch.zeros_like(references.attribute_embeds))
        return self.model(noisy, timesteps, pose, cut, drop_references=drop_references)


def test_a_model_blind_to_the_attribute_shows_no_attribute_gap(setting: tuple) -> None:
    model, scheduler, encoders, samples = setting
    blind = reference_reliance(AttributeBlind(model), scheduler, encoders, samples, timesteps=[500], seed=3)
    intact = reference_reliance(model, scheduler, encoders, samples, timesteps=[500], seed=3)
    for region in REGIONS:
        assert blind.gap(ALL, "attribute_swapped", region) == 0.0
        assert abs(intact.gap(ALL, "attribute_swapped", region)) > 1e-6
        assert abs(blind.gap(ALL, "portrait_swapped", region)) > 1e-6  # the portrait is still wired


def test_report_names_every_attribute_condition_and_region(setting: tuple) -> None:
    model, scheduler, encoders, samples = setting
    report = reference_reliance(model, scheduler, encoders, samples[:2], timesteps=[999])
    attributes = {s.meta.attribute for s in samples[:2]}
    assert set(report.losses) == attributes | {ALL}
    assert report.samples[ALL] == 2
    scalars = report.scalars()
    assert all(f"reliance/{ALL}/gap_{c}_{r}" in scalars for c in GAPS for r in REGIONS)
    assert all(value == value for value in scalars.values())  # no NaN
    row = next(r for r in report.table() if r["attribute"] == ALL)
    assert row["gap_dropped_inside"] == pytest.approx(report.gap(ALL, "dropped", "inside"))


def test_one_clip_cannot_swap_so_only_dropping_is_measured(setting: tuple) -> None:
    model, scheduler, encoders, samples = setting
    one_clip = [s for s in samples if s.meta.video_id == samples[0].meta.video_id]
    report = reference_reliance(model, scheduler, encoders, one_clip, timesteps=[500])
    assert set(report.losses[ALL]) == {"both", "dropped"}


def test_reliance_samples_take_the_videos_in_turn() -> None:
    pairs = [PairEntry(key=f"{video}-{i}", shard="s", video_id=video, clip_id=f"{video}_c0", stage=1,
                       attribute="hair", targets=1)
             for video in ("a", "b", "c") for i in range(3)]
    assert [p.key for p in across_videos(pairs, 4)] == ["a-0", "b-0", "c-0", "a-1"]
