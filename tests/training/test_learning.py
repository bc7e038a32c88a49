"""The recipe learns: on the smallest setting (one clip, 32 px, the tiny flavour with its VAE fitted to the clip's
frames) a short overfit makes the pipeline's reconstruction of the clip's target beat copying the portrait
reference, which an untrained denoiser is far from (about 8 dB against the copy's 20 dB)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data_specs.model import model_flavour
from model.builders import random_components
from tests.training.training_testing import make_pairs
from training.data import collate
from training.metrics import reconstruction_metrics
from training.reconstruction import images, reconstruct
from training.step import Encoders, StepOptions, diffusion_loss, model_inputs, step_generator, training_noise_scheduler
from training.tiny_world import fit_vae, reconstruction_psnr


@pytest.fixture
def one_thread() -> None:
    """Tiny convolutions on a shared CPU: one thread is several times faster than two contending with other work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
def test_overfitting_one_clip_beats_copying_the_portrait() -> None:
    sample = make_pairs(clips=1, size=32, pairs_per_clip=1, stages=(1,))[0]
    components = random_components(model_flavour("tiny"), seed=0)
    frames = np.stack([*sample.targets, sample.portrait_image, sample.attribute_ref])
    fit_vae(components.vae, images(frames), steps=100, batch_size=4, seed=0)
    assert reconstruction_psnr(components.vae, images(frames)) > 20  # the decoder can show the clip

    encoders = Encoders(components.vae, components.image_encoder, components.identity_encoder)
    scheduler = training_noise_scheduler(components.scheduler)
    inputs = model_inputs(encoders, collate([sample]), torch.device("cpu"), stored_latents=False)
    model = components.model.train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
    # Plain MSE on every timestep, no reference dropout or noise offset: the quickest overfit of one sample.
    options = StepOptions(noise_offset=0.0, min_snr_gamma=None, reference_dropout=0.0)
    for step in range(60):
        loss = diffusion_loss(model, scheduler, inputs, options, step_generator(0, 0, step, torch.device("cpu")))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    model.eval()

    generated = reconstruct(components.pipeline(), sample, steps=10, guidance_scale=1.0).mean()
    copy = reconstruction_metrics(images(np.repeat(sample.portrait_image[None], len(sample.targets), axis=0)),
                                  images(sample.targets))
    assert generated["psnr"] > copy["psnr"] > 15
    assert generated["l1"] < copy["l1"]


@pytest.mark.usefixtures("one_thread")
def test_tiny_world_is_fitted_once_on_training_frames_and_loads_as_a_pipeline(tmp_path) -> None:
    from model.pipeline import DurianPipeline
    from tests.training.training_testing import write_pair_dataset
    from training.tiny_world import FIT_FILE, dataset_frames, tiny_world

    dataset = write_pair_dataset(tmp_path / "dataset", clips=3, size=32, stages=(1,), eval_clips=(2,))
    train, held_out = dataset_frames(dataset, "train"), dataset_frames(dataset, "eval")
    assert train.shape[1:] == (3, 32, 32) and len(train) == 2 * 2 * 3  # 2 clips x 2 pairs x (target + 2 refs)
    assert not any(torch.equal(a, b) for a in held_out for b in train)  # the held-out video is never fitted to
    folder = tiny_world(dataset, steps=2)
    fit = (folder.parent / FIT_FILE).read_text()
    pipeline = DurianPipeline.from_pretrained(str(folder))
    assert pipeline.vae.config.scaling_factor != 0.18215  # set from the fitted latents
    assert tiny_world(dataset, steps=2) == folder and (folder.parent / FIT_FILE).read_text() == fit  # reused
