"""The training-sample processor with its models: ControlNet mask expansion segmented by a tiny Sapiens, inpainting
fill, VAE latents. Tiny random pipelines of the real diffusers classes; every model runs in this process."""

from __future__ import annotations

import numpy as np
import pytest

from data_specs.openpose_face import openpose_face_points, render_openpose_face
from data_specs.perception import GOLIATH_FACE, KeypointConfig, PerceptionConfig, SegmentationConfig
from data_specs.sample import PairSample, decode_sample, encode_sample
from data_specs.training_samples import DEFAULT_PROMPTS, TrainingSamplesConfig
from tasks.perception import build_segmenter
from tasks.samples import augment
from tasks.samples.diffusion import Inpainter, LatentEncoder, MaskGenerator
from tasks.samples.expansion import dilate_erode
from tests.perception.perception_testing import TINY_INPUT, save_official_pth
from tests.samples.goliath_testing import with_goliath_face
from tests.samples.samples_testing import perceived_clip, sample_processor

CPU = {"device": "cpu", "batch_size": 4}
PAIRS = {"pairs_per_clip": 1, "frames": 2, "min_ref_distance": 3, "stages": [1, 2], "references": {"scope": "clip"}}


@pytest.fixture(scope="module")
def sapiens_perception(tmp_path_factory: pytest.TempPathFactory) -> PerceptionConfig:
    """Perception whose segmenter is a tiny Sapiens face segmenter with random weights in the official .pth."""
    path = tmp_path_factory.mktemp("sapiens") / "sapiens_tiny_seg_face.pth"
    with pytest.MonkeyPatch.context() as monkeypatch:
        save_official_pth(path, "segmentation", 19, monkeypatch)
    return PerceptionConfig(keypoints=KeypointConfig(backend="truth"), segmentation=SegmentationConfig(
        backend="sapiens_face", attributes=("hair", "hat"), checkpoint=str(path), arch="tiny",
        image_size=TINY_INPUT, presence_min_area=0.0, runtime=CPU))


def test_generated_expansion_unites_the_segmented_controlnet_image_with_the_mask(sapiens_perception):
    config = TrainingSamplesConfig(pairs=PAIRS, expansion={"mode": "generate", "generate": {
        "flavour": "tiny", "steps": 2, "runtime": CPU}})
    clip = with_goliath_face(perceived_clip(frames=8, size=48))
    samples = sample_processor(config, sapiens_perception)(clip)
    again = sample_processor(config, sapiens_perception)(clip)
    segmenter = build_segmenter(sapiens_perception.segmentation)
    segmenter.setup()
    generator = MaskGenerator(config.expansion.generate)
    generator.setup()
    assert len(samples) == 2
    for sample, same in zip(samples, again):
        meta = sample.meta.expansion
        assert meta.mode == "generate" and meta.prompt in DEFAULT_PROMPTS[sample.meta.attribute]
        assert meta.generated_image == "generated.jpg" and "tiny random controlnet" in meta.generator
        assert sample.generated.shape == (48, 48, 3) and np.array_equal(sample.generated, same.generated)
        assert meta.condition == "openpose_face"
    # The ControlNet saw the OpenPose render of each portrait reference's points: white dots on black at the 68
    # points derived from its Goliath points, nothing else lit. Replayed in one batch, as the processor ran it.
    positions = [sample.meta.portrait_ref.position for sample in samples]
    prompts, seeds = [s.meta.expansion.prompt for s in samples], [s.meta.expansion.seed for s in samples]
    conditions = render_openpose_face(openpose_face_points(clip.keypoints[positions], GOLIATH_FACE, 0.3), 48, 0.3)
    lit = conditions.any(axis=-1)
    assert (conditions[lit] == 255).all() and (lit.sum(axis=(1, 2)) >= 52).all()
    np.testing.assert_array_equal(generator.generate(conditions, prompts, seeds), [s.generated for s in samples])
    for sample in samples:
        # M_port_train = M_attr U (the segmenter's mask of the generated image), under the portrait's warp.
        generated_mask = segmenter(sample.generated[None])[sample.meta.attribute][0]
        attribute_mask = clip.masks[sample.meta.attribute][sample.meta.portrait_ref.position]
        params = sample.meta.portrait_ref.augmentation
        expected = augment.apply(clip.frames[0], attribute_mask | generated_mask, params, augment.PORTRAIT).mask
        np.testing.assert_array_equal(sample.portrait_mask, expected)
        assert not sample.portrait_ref[sample.portrait_mask].any()
        decoded = decode_sample(encode_sample(sample, 95))
        assert isinstance(decoded, PairSample) and decoded.generated.shape == (48, 48, 3)


def test_inpainting_fill_is_replayed_from_the_recorded_seed():
    # One image per call, in the processor as in the replay: batches of other sizes sum in other orders on the CPU,
    # which moves a pixel by a level now and then.
    inpaint = {"flavour": "tiny", "steps": 2, "runtime": {**CPU, "batch_size": 1}}
    config = TrainingSamplesConfig(pairs=PAIRS, augment={"fill": "inpaint", "inpaint": inpaint,
                                                         "translate": 0.2, "rotate_deg": 30})
    clip = perceived_clip(frames=8, size=48)
    samples = sample_processor(config)(clip)
    inpainter = Inpainter(config.augment.inpaint)
    inpainter.setup()

    def paint(image: np.ndarray, exposed: np.ndarray, seed: int) -> np.ndarray:
        return inpainter.inpaint(image[None], exposed[None], [seed])[0]

    for sample in samples:
        ref = sample.meta.portrait_ref
        assert ref.augmentation.fill == "inpaint" and ref.augmentation.exposed_area > 0
        mask = clip.masks[sample.meta.attribute][ref.position]
        grown = mask | dilate_erode(mask, sample.meta.expansion.dilate_px, sample.meta.expansion.erode_px)
        replayed = augment.apply(clip.frames[ref.position], grown, ref.augmentation, augment.PORTRAIT, inpaint=paint)
        np.testing.assert_array_equal(replayed.image, sample.portrait_ref)
        np.testing.assert_array_equal(replayed.unmasked, sample.portrait_image)
        # The exposed area is painted (not the constant fill's black) and the mask stays empty.
        exposed = augment.warp_reference(clip.frames[ref.position], grown, ref.augmentation, augment.PORTRAIT).exposed
        assert sample.portrait_ref[exposed].any() and not sample.portrait_ref[sample.portrait_mask].any()


def test_latents_are_the_vae_encoding_of_targets_and_masked_references():
    config = TrainingSamplesConfig(pairs=PAIRS, latents={"flavour": "tiny", "runtime": CPU})
    sample = sample_processor(config)(perceived_clip(frames=8, size=32))[-1]
    encoder = LatentEncoder(config.latents)
    encoder.setup()
    assert sample.meta.training_stage == 2 and sample.meta.latents_vae
    assert sample.latents["target"].shape[:2] == (2, 4) and sample.latents["target"].dtype == np.float16
    np.testing.assert_allclose(sample.latents["target"], encoder.encode(sample.targets), atol=1e-3)
    np.testing.assert_allclose(sample.latents["port_ref"], encoder.encode(sample.portrait_ref[None])[0], atol=1e-3)
    decoded = decode_sample(encode_sample(sample, 95))
    assert sorted(decoded.latents) == ["attr_ref", "port_ref", "target"]
