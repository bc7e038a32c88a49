"""DurianPipeline end to end on the tiny flavour, its geometry, and `durian sample`."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
import typer
import yaml
from durian_testing import FACE, face_image
from typer.testing import CliRunner

from data_specs.model import NoiseScheduleSpec
from data_specs.perception import GOLIATH_FACE, TRUTH_5, PoseRenderSpec
from data_specs.pose_frames import render_pose_frames
from flows.cli.sample import driving_keypoints_from_video, sample
from model.builders import DurianComponents, inference_scheduler
from model.geometry import fit_similarity, retarget_keypoints
from model.pipeline import DurianPipeline, render_driving_pose, window_starts
from tasks.media import find_ffmpeg
from tasks.synthetic import write_portrait_video
from training.step import training_noise_scheduler


@pytest.fixture
def pipe(components: DurianComponents) -> DurianPipeline:
    return components.pipeline()


def run(pipe: DurianPipeline, frames: int, attributes: int | list[np.ndarray] = 1, **kwargs) -> object:
    """Sample `frames` frames wearing `attributes` (a count of random images, or the images), all with the
    same mask and keypoints, so the regenerated region is the same whatever the attributes."""
    images = [face_image(1 + i) for i in range(attributes)] if isinstance(attributes, int) else attributes
    mask = np.zeros((64, 64), bool)
    mask[:18] = True
    driving = FACE[None] + np.random.default_rng(0).normal(0, 1.5, (frames, 5, 2))
    return pipe(face_image(0), mask, FACE, images, [mask] * len(images), [FACE] * len(images), driving,
                num_inference_steps=2, window=4, overlap=2, generator=torch.Generator().manual_seed(0), **kwargs)


def count_calls(module: torch.nn.Module) -> list[int]:
    calls: list[int] = []
    module.register_forward_pre_hook(lambda *_: calls.append(1))
    return calls


@pytest.mark.parametrize("frames", [3, 7])  # one window; three overlapping windows
def test_clip_length_and_references_once_per_clip(pipe: DurianPipeline, frames: int) -> None:
    calls = [count_calls(pipe.model.attribute_net), count_calls(pipe.model.portrait_net)]
    denoiser_calls = count_calls(pipe.model.denoiser)
    out = run(pipe, frames)
    assert out.frames.shape == (frames, 64, 64, 3)
    assert np.isfinite(out.frames).all() and 0 <= out.frames.min() and out.frames.max() <= 1
    assert [len(c) for c in calls] == [1, 1]  # whatever the frames, windows, steps and CFG branches
    windows = len(window_starts(frames, 4, 2))
    assert len(denoiser_calls) == 2 * 2 * windows  # steps x (cond, uncond) x windows
    assert len(pipe.model.bank) == 0  # cleared after sampling


def test_outputs_and_round_trip(pipe: DurianPipeline, tmp_path: Path) -> None:
    composed = run(pipe, 2, attributes=2, attribute_weights=(1.0, 0.5), output_type="pt")
    assert composed.frames.shape == (2, 3, 64, 64)
    pil = run(pipe, 2, attributes=2, alpha=0.5, output_type="pil")
    assert len(pil.frames) == 2 and pil.frames[0].size == (64, 64)
    with pytest.raises(ValueError, match="exactly two"):
        run(pipe, 2, attributes=1, alpha=0.5)
    pipe.save_pretrained(tmp_path)
    reloaded = DurianPipeline.from_pretrained(tmp_path)
    np.testing.assert_allclose(run(reloaded, 2).frames, run(pipe, 2).frames, atol=1e-5)


def test_alpha_and_weights_reach_the_model(pipe: DurianPipeline) -> None:
    """alpha 0 / 1 and weights (1, 0) give exactly the single-attribute videos; 0.5 and plain composition
    give neither (so dropping alpha or the weights anywhere on the way would fail here)."""
    first_image, second_image = face_image(1), face_image(2)
    first, second = run(pipe, 2, [first_image]).frames, run(pipe, 2, [second_image]).frames
    assert np.abs(first - second).max() > 1e-3
    both = [first_image, second_image]
    np.testing.assert_allclose(run(pipe, 2, both, alpha=0.0).frames, first, atol=1e-4)
    np.testing.assert_allclose(run(pipe, 2, both, alpha=1.0).frames, second, atol=1e-4)
    np.testing.assert_allclose(run(pipe, 2, both, attribute_weights=(1.0, 0.0)).frames, first, atol=1e-4)
    for kwargs in ({"alpha": 0.5}, {}):
        mixed = run(pipe, 2, both, **kwargs).frames
        assert min(np.abs(mixed - first).max(), np.abs(mixed - second).max()) > 1e-3, kwargs


def test_window_starts_cover_every_frame() -> None:
    assert window_starts(3, 4, 2) == [0]
    for frames, window, overlap in ((7, 4, 2), (24, 16, 4), (10, 4, 0), (33, 16, 8)):
        starts = window_starts(frames, window, overlap)
        covered = np.zeros(frames, int)
        for s in starts:
            covered[s:s + window] += 1
        assert covered.min() >= 1 and starts[-1] + window == frames
        assert all(b - a <= window - overlap for a, b in zip(starts, starts[1:]))


def test_retargeting_keeps_the_portrait_face_and_follows_the_motion() -> None:
    driving_face = FACE * 2.0 + 10  # a bigger face elsewhere in a bigger video
    motion = np.array([[0, 0], [4, 0], [4, 6]], np.float32)
    driving = driving_face[None] + motion[:, None]
    out = retarget_keypoints(driving, FACE)
    np.testing.assert_allclose(out[0], FACE, atol=1e-4)  # face shape of the portrait
    np.testing.assert_allclose(out - FACE, np.repeat(motion[:, None] / 2.0, 5, 1), atol=1e-4)  # scaled motion


def test_similarity_fit_and_inference_mask(pipe: DurianPipeline) -> None:
    angle = 0.3
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = FACE @ (1.5 * rotation).T + [3, -2]
    np.testing.assert_allclose(fit_similarity(FACE, dst), np.hstack([1.5 * rotation, [[3], [-2]]]), atol=1e-6)
    # An attribute photographed 8 px to the right: its mask lands 8 px to the left on the portrait.
    portrait_mask = torch.zeros(1, 64, 64)
    portrait_mask[:, :4] = 1
    attribute_mask = torch.zeros(1, 64, 64)
    attribute_mask[:, 10:20, 30:40] = 1
    mask = pipe.inference_mask(portrait_mask, FACE, [attribute_mask], [FACE + [8, 0]])
    assert mask[0, :4].min() == 1  # the portrait's own region stays
    assert mask[0, 12:18, 24:30].min() > 0.99 and mask[0, 12:18, 34:40].max() < 0.01


def test_the_default_schedule_is_zero_terminal_snr_for_training_and_sampling(tiny, pipe: DurianPipeline,
                                                                            tmp_path: Path) -> None:
    """The references' recipe: sampling starts at t = 999 from pure noise (alpha_cumprod 0), the state the last
    training timestep is in, and both schedulers share the betas and the v-prediction."""
    schedule = tiny.noise_schedule
    assert schedule == NoiseScheduleSpec() and schedule.prediction_type == "v_prediction"
    inference = inference_scheduler(schedule)
    training = training_noise_scheduler(inference)  # what the trainer noises with
    torch.testing.assert_close(training.betas, inference.betas, rtol=0, atol=0)
    assert training.alphas_cumprod[-1] == 0 and training.config.prediction_type == "v_prediction"
    inference.set_timesteps(25)
    assert inference.timesteps[0] == 999 and inference.alphas_cumprod[int(inference.timesteps[0])] == 0
    # The saved pipeline samples with that schedule.
    pipe.save_pretrained(tmp_path)
    loaded = DurianPipeline.from_pretrained(tmp_path).scheduler
    assert {k: loaded.config[k] for k in schedule.diffusers_config()} == schedule.diffusers_config()
    with pytest.raises(ValueError, match="use prediction_type='v_prediction'"):
        NoiseScheduleSpec(prediction_type="epsilon")


def goliath_motion(frames: int, seed: int = 0) -> np.ndarray:
    """(F, 238, 3) Goliath face points in a 64x64 frame (x, y, confidence), moving a little from frame to frame."""
    rng = np.random.default_rng(seed)
    first = np.concatenate([rng.uniform(8, 56, (238, 2)), rng.uniform(0, 1, (238, 1))], axis=1)
    motion = np.concatenate([rng.normal(0, 1.5, (frames, 1, 2)).cumsum(0), np.zeros((frames, 1, 1))], axis=2)
    return (first[None] + motion).astype(np.float32)


def test_driving_frames_are_drawn_as_the_dataset_drew_its_pose_frames(pipe: DurianPipeline, tmp_path: Path) -> None:
    """A model trained on layout L with render spec S draws a driving motion exactly as `render_pose_frames`
    (the dataset's pose frames) draws the same points: the portrait's own motion retargets onto itself."""
    spec = PoseRenderSpec(point_radius=3, confidence_threshold=0.5)
    pipe.set_training_facts(GOLIATH_FACE.name, spec, clip_length=2)
    driving = goliath_motion(3)
    expected = torch.from_numpy(render_pose_frames(driving, GOLIATH_FACE, 64, spec)).permute(0, 3, 1, 2) / 255
    torch.testing.assert_close(pipe.driving_pose_frames(driving, driving[0], (64, 64)), expected, rtol=0, atol=0)
    assert expected.amax(dim=(0, 1)).count_nonzero() > 238  # (points drawn, several pixels each)
    # The facts travel with the saved pipeline.
    pipe.save_pretrained(tmp_path)
    loaded = DurianPipeline.from_pretrained(tmp_path)
    assert (loaded.trained_layout, loaded.trained_pose_render, loaded.default_window) == (GOLIATH_FACE, spec, 2)
    torch.testing.assert_close(loaded.driving_pose_frames(driving, driving[0], (64, 64)), expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"trained on layout 'goliath_face' \(238 points\)"):
        loaded.driving_pose_frames(np.repeat(FACE[None], 3, 0), FACE, (64, 64))


def test_a_goliath_trained_pipeline_samples_from_goliath_points_over_its_clip_length(pipe: DurianPipeline) -> None:
    pipe.set_training_facts(GOLIATH_FACE.name, PoseRenderSpec(), clip_length=2)
    denoiser_calls = count_calls(pipe.model.denoiser)
    driving = goliath_motion(3)
    mask = np.zeros((64, 64), bool)
    mask[:18] = True
    portrait = driving[0] + np.float32([1, -1, 0])  # another face shape than the driving one
    out = pipe(face_image(0), mask, portrait, [face_image(1)], [mask], [FACE], driving, num_inference_steps=2,
               overlap=1, generator=torch.Generator().manual_seed(0))
    assert out.frames.shape == (3, 64, 64, 3) and np.isfinite(out.frames).all()
    assert len(denoiser_calls) == 2 * 2 * len(window_starts(3, 2, 1)) == 8  # windows of the trained 2 frames


def test_driving_pose_is_drawn_by_the_training_renderer() -> None:
    points = np.array([[[10, 20], [40, 50], [np.nan, np.nan], [30, 30], [12, 44]]], np.float32)
    image = render_driving_pose(points, (64, 64))
    expected = render_pose_frames(np.concatenate([np.nan_to_num(points), [[[1], [1], [0], [1], [1]]]], -1),
                                  TRUTH_5, (64, 64))
    assert image.shape == (1, 3, 64, 64)
    torch.testing.assert_close(image, torch.from_numpy(expected).permute(0, 3, 1, 2).float() / 255)


def test_rendered_pose_frames_drive_exactly_as_the_keypoints_they_came_from(pipe: DurianPipeline) -> None:
    """`pose_frames` (e.g. a training sample's guidance) replaces the driving keypoints' retarget-and-render."""
    mask = np.zeros((64, 64), bool)
    mask[:18] = True
    driving = FACE[None] + np.random.default_rng(0).normal(0, 1.5, (3, 5, 2))
    rendered = render_driving_pose(retarget_keypoints(driving, FACE), (64, 64))
    common = dict(num_inference_steps=2, window=4, overlap=2)
    by_points = pipe(face_image(0), mask, FACE, [face_image(1)], [mask], [FACE], driving,
                     generator=torch.Generator().manual_seed(0), **common)
    by_frames = pipe(face_image(0), mask, FACE, [face_image(1)], [mask], [FACE], pose_frames=rendered,
                     generator=torch.Generator().manual_seed(0), **common)
    np.testing.assert_allclose(by_frames.frames, by_points.frames, atol=1e-5)
    with pytest.raises(ValueError, match="either driving_keypoints or pose_frames"):
        pipe(face_image(0), mask, FACE, [face_image(1)], [mask], [FACE], driving, pose_frames=rendered)


def synthetic_video(folder: Path, frames: int = 6) -> Path:
    """A tiny synthetic portrait video with its ground truth beside it."""
    return write_portrait_video(folder / "clip.mp4", seed=0, num_frames=frames, fps=10, width=64, height=64)


def probe_frames(path: Path) -> int:
    ffprobe = find_ffmpeg()[1]
    info = subprocess.run([str(ffprobe), "-v", "error", "-count_frames", "-show_entries",
                           "stream=nb_read_frames,codec_name", "-of", "json", str(path)],
                          capture_output=True, text=True, check=True)
    stream = json.loads(info.stdout)["streams"][0]
    assert stream["codec_name"] == "h264"
    return int(stream["nb_read_frames"])


def test_sample_command_writes_an_mp4(tmp_path: Path) -> None:
    app = typer.Typer()
    app.command("sample")(sample)
    runner = CliRunner()
    assert "--from-truth" in runner.invoke(app, ["--help"]).output
    video = synthetic_video(tmp_path)
    out = tmp_path / "demo.mp4"
    result = runner.invoke(app, ["--from-truth", str(video), "--frames", "5", "--steps", "2", "--window", "4",
                                 "--overlap", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert probe_frames(out) == 5

    # Explicit files: two attributes interpolated, driving from an .npy.
    image, mask = tmp_path / "p.png", tmp_path / "m.png"
    PIL.Image.fromarray(face_image(3)).save(image)
    PIL.Image.fromarray(np.where(np.arange(64)[:, None] < 16, 255, 0).astype(np.uint8).repeat(64, 1)).save(mask)
    np.save(tmp_path / "k.npy", FACE)
    np.save(tmp_path / "d.npy", np.repeat(FACE[None], 3, 0))
    out2 = tmp_path / "files.mp4"
    args = ["--portrait", image, "--portrait-mask", mask, "--portrait-keypoints", tmp_path / "k.npy",
            "--attribute", image, "--attribute-mask", mask, "--attribute-keypoints", tmp_path / "k.npy",
            "--attribute", image, "--attribute-mask", mask, "--attribute-keypoints", tmp_path / "k.npy",
            "--alpha", "0.5", "--driving", tmp_path / "d.npy", "--steps", "1", "--out", out2]
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    assert probe_frames(out2) == 3

    # Driving keypoints found in a video by the perception of the dataset's build config (here its ground truth).
    config = tmp_path / "build.yaml"
    config.write_text(yaml.safe_dump({
        "inputs": {"source": str(tmp_path)}, "output_dir": str(tmp_path / "dataset"),
        "perception": {"crop": {"size": 64}, "detection": {"backend": "truth"}, "keypoints": {"backend": "truth"},
                       "segmentation": {"backend": "truth", "attributes": ["hair"]}}}))
    keypoints, layout, fps = driving_keypoints_from_video(video, config)
    assert (keypoints.shape, layout, fps) == ((6, 5, 3), TRUTH_5.name, 10.0)
    assert ((keypoints[..., :2] > 0) & (keypoints[..., :2] < 64)).all()  # in face-crop pixels, as the dataset's
    out3 = tmp_path / "video.mp4"
    video_args = [*args[:-6], "--driving", video, "--perception-config", config, "--frames", "4", "--steps", "1",
                  "--out", out3]
    result = runner.invoke(app, [str(a) for a in video_args])
    assert result.exit_code == 0, result.output
    assert probe_frames(out3) == 4
    result = runner.invoke(app, [str(a) for a in [*args[:-6], "--driving", video, "--out", out3]])
    assert result.exit_code != 0 and "needs --perception-config" in result.output
