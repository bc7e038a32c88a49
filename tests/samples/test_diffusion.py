"""The diffusion components of the sample processor: tiny random pipelines and the same weights loaded from folders."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from data_specs.model import model_flavour
from data_specs.training_samples import GenerateConfig, InpaintConfig, LatentConfig
from model.builders import random_components
from tasks.samples.diffusion import Inpainter, LatentEncoder, MaskGenerator
from tests.samples.diffusion_testing import (
    CPU,
    keypoint_images,
    save_controlnet_weights,
    save_inpaint_weights,
    save_tiny_vae,
    textured_images,
)

PROMPTS = ["a portrait photo of a person with very long hair", "a man wearing a tall top hat",
           "a portrait photo of a person with very long hair"]


@pytest.fixture(scope="module")
def generator() -> MaskGenerator:
    component = MaskGenerator(GenerateConfig(flavour="tiny", steps=2, runtime=CPU))
    component.setup()
    return component


@pytest.fixture(scope="module")
def inpainter() -> Inpainter:
    component = Inpainter(InpaintConfig(flavour="tiny", steps=2, runtime=CPU))
    component.setup()
    return component


def test_generate_is_deterministic_per_image_and_follows_prompt_seed_and_condition(generator):
    conditions = keypoint_images(1, 36, 44).repeat(3, axis=0)  # not a multiple of 8: resized there and back
    images = generator.generate(conditions, PROMPTS, [1, 1, 2])
    assert images.shape == conditions.shape and images.dtype == np.uint8
    assert np.array_equal(images, generator.generate(conditions, PROMPTS, [1, 1, 2]))
    # An image depends on its own prompt, seed and condition only, not on the rest of its batch.
    assert np.array_equal(images[:1], generator.generate(conditions[:1], PROMPTS[:1], [1]))
    assert not np.array_equal(images[0], images[1])  # prompt
    assert not np.array_equal(images[0], images[2])  # seed
    other = generator.generate(keypoint_images(1, 36, 44, seed=1), PROMPTS[:1], [1])
    assert not np.array_equal(images[0], other[0])  # condition


def test_components_pickle_before_setup_and_refuse_calls_before_it():
    for component in (MaskGenerator(GenerateConfig(flavour="tiny")), Inpainter(InpaintConfig(flavour="tiny")),
                      LatentEncoder(LatentConfig(flavour="tiny"))):
        copy = pickle.loads(pickle.dumps(component))
        assert copy.config == component.config and copy.resources == component.config.runtime.resources
    with pytest.raises(RuntimeError, match="setup"):
        MaskGenerator(GenerateConfig(flavour="tiny")).generate(keypoint_images(1, 32, 32), ["x"], [0])
    with pytest.raises(RuntimeError, match="setup"):
        LatentEncoder(LatentConfig(flavour="tiny")).encode(textured_images(1, 32, 32))


def test_generate_rejects_bad_inputs(generator):
    conditions = keypoint_images(2, 32, 32)
    with pytest.raises(ValueError, match="prompts"):
        generator.generate(conditions, ["x"], [0, 1])
    with pytest.raises(ValueError, match="seeds"):
        generator.generate(conditions, ["x", "y"], [0])
    with pytest.raises(ValueError, match="uint8"):
        generator.generate(conditions.astype(np.float32), ["x", "y"], [0, 1])
    with pytest.raises(ValueError, match="no images"):
        generator.generate(conditions[:0], [], [])


def test_generate_loads_sd15_folders_with_the_same_weights(generator, tmp_path):
    base, controlnet = save_controlnet_weights(tmp_path)
    assert {p.name for p in base.iterdir()} >= {"model_index.json", "unet", "vae", "text_encoder", "tokenizer",
                                                "scheduler"}
    assert (controlnet / "config.json").is_file()
    assert (controlnet / "diffusion_pytorch_model.safetensors").is_file()
    loaded = MaskGenerator(GenerateConfig(flavour="sd15", base_model=str(base), controlnet=str(controlnet),
                                          steps=2, runtime=CPU))
    loaded.setup()
    assert loaded.provenance == f"controlnet {controlnet} on {base}"
    conditions = keypoint_images(2, 32, 32)
    assert np.array_equal(loaded.generate(conditions, PROMPTS[:2], [3, 4]),
                          generator.generate(conditions, PROMPTS[:2], [3, 4]))


@pytest.mark.parametrize("component", ["generate", "inpaint", "latents"])
def test_missing_weights_name_what_is_missing(component, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_id = "no-such-namespace/no-such-model"
    uncached = f"{hub_id} is not a local folder and not in the local Hugging Face cache.*allow_download: true"
    if component == "generate":
        base, controlnet = save_controlnet_weights(tmp_path)
        cases = [(MaskGenerator(GenerateConfig(flavour="sd15", base_model=str(tmp_path / "absent"),
                                               controlnet=str(controlnet))), "absent is neither a folder"),
                 (MaskGenerator(GenerateConfig(flavour="sd15", base_model=str(base), controlnet=hub_id)),
                  f"ControlNet {uncached}")]
    elif component == "inpaint":
        (tmp_path / "empty").mkdir()  # a folder without model_index.json
        cases = [(Inpainter(InpaintConfig(flavour="sd15", model=str(tmp_path / "empty"))),
                  f"inpainting pipeline from folder {tmp_path / 'empty'}.*model_index.json"),
                 (Inpainter(InpaintConfig(flavour="sdxl", model=hub_id)), f"inpainting pipeline {uncached}")]
    else:
        cases = [(LatentEncoder(LatentConfig(flavour="sd15", vae=hub_id)), f"VAE {uncached}"),
                 (LatentEncoder(LatentConfig(flavour="sd15", vae=str(tmp_path))), f"VAE from folder {tmp_path}")]
    for instance, message in cases:
        with pytest.raises(FileNotFoundError, match=message):
            instance.setup()


def test_inpaint_keeps_unmasked_pixels_and_is_deterministic(inpainter, tmp_path):
    images = textured_images(3, 36, 44)
    masks = np.zeros(images.shape[:3], bool)
    masks[:, :, :10] = True  # the strip a shift to the right exposed
    masks[2, 20:, :] = True
    painted = inpainter.inpaint(images, masks, [5, 6, 5])
    assert painted.shape == images.shape and painted.dtype == np.uint8
    assert np.array_equal(painted[~masks], images[~masks])
    assert not np.array_equal(painted[masks], images[masks])
    assert np.array_equal(painted, inpainter.inpaint(images, masks, [5, 6, 5]))
    assert not np.array_equal(painted[0], inpainter.inpaint(images[:1], masks[:1], [7])[0])
    with pytest.raises(ValueError, match="masks"):
        inpainter.inpaint(images, masks[:, :, :-1], [5, 6, 5])

    loaded = Inpainter(InpaintConfig(flavour="sd15", model=str(save_inpaint_weights(tmp_path)), steps=2,
                                     runtime=CPU))
    loaded.setup()
    assert np.array_equal(loaded.inpaint(images, masks, [5, 6, 5]), painted)


def test_latents_are_the_tiny_flavour_vae_mean_and_load_from_a_vae_folder(tmp_path):
    images = textured_images(3, 32, 32)
    encoder = LatentEncoder(LatentConfig(flavour="tiny", runtime=CPU))
    encoder.setup()
    latents = encoder.encode(images)
    scale = model_flavour("tiny").vae.vae_scale_factor
    assert latents.shape == (3, 4, 32 // scale, 32 // scale) and latents.dtype == np.float16

    vae = random_components(model_flavour("tiny"), seed=0).vae
    with torch.inference_mode():
        pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 * 2 - 1
        direct = vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor
    np.testing.assert_allclose(latents, direct.numpy(), atol=2e-3, rtol=2e-3)  # float16 rounding

    loaded = LatentEncoder(LatentConfig(flavour="tiny", vae=str(save_tiny_vae(tmp_path)), runtime=CPU))
    loaded.setup()
    assert loaded.provenance == f"VAE of {tmp_path}"
    assert np.array_equal(loaded.encode(images), latents)
    wrong = LatentEncoder(LatentConfig(flavour="sd15", vae=str(tmp_path), runtime=CPU))
    with pytest.raises(ValueError, match="sd15 latents"):
        wrong.setup()


def test_default_weights_are_named_in_provenance():
    assert MaskGenerator(GenerateConfig()).provenance == (
        "controlnet lllyasviel/control_v11p_sd15_openpose on stable-diffusion-v1-5/stable-diffusion-v1-5")
    assert Inpainter(InpaintConfig(flavour="sdxl")).provenance == (
        "inpainting diffusers/stable-diffusion-xl-1.0-inpainting-0.1")
    assert LatentEncoder(LatentConfig()).provenance == "VAE of stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert LatentEncoder(LatentConfig(flavour="tiny")).provenance == "tiny random VAE (Durian tiny flavour, seed 0)"
