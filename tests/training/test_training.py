"""The training loop: resume gives the same losses (bf16 with fp32 masters); 2 Ray Train workers (gloo) overfit
a tiny set in the flow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from data_specs.training import load_train_config
from tests.training.training_testing import write_pair_dataset
from training.loop import train
from training.ray_train import LocalSession, train_locally


class Interrupted(Exception):
    pass


class KilledAfter(LocalSession):
    """A local session whose process 'dies' once (stage, step) is reported (after its checkpoint is written),
    as a run killed there would."""

    def __init__(self, config, stage: int, step: int) -> None:
        super().__init__(config)
        self.kill_at = (stage, step)

    def report(self, metrics: dict, checkpoint: Path | None) -> None:
        if (metrics["stage"], metrics["step"]) == self.kill_at:
            raise Interrupted


def tiny_config(dataset: Path, output: Path, **overrides) -> object:
    return load_train_config({
        "output_dir": str(output), "resolution": 32, "checkpoint_every": 3,
        "data": {"dataset": str(dataset), "loader_workers": 0, "shuffle_buffer": 4},
        "optim": {"learning_rate": 3e-3}, **overrides})


def test_a_killed_run_resumes_from_its_last_checkpoint_with_the_same_losses_under_bf16(tmp_path: Path):
    """bf16 forced on the CPU (fp32 masters, bf16 working copies): across the stage-2 insertion of the motion
    modules, a run killed twice resumes exactly, and its checkpoints hold the masters in fp32."""
    from safetensors.torch import load_file

    from training.checkpoints import latest_checkpoint

    dataset = write_pair_dataset(tmp_path / "data", clips=2, size=32, frames=2, pairs_per_clip=1)
    stages = [{"stage": 1, "steps": 2}, {"stage": 2, "steps": 2, "frames": 2}]
    settings = {"stages": stages, "checkpoint_every": 1, "mixed_precision": "bf16"}
    whole = train_locally(tiny_config(dataset, tmp_path / "whole", **settings)).losses

    config = tiny_config(dataset, tmp_path / "killed", **settings)
    with pytest.raises(Interrupted):
        train(config, KilledAfter(config, stage=1, step=2))  # stage 1 done, killed before stage 2
    with pytest.raises(Interrupted):
        train(config, KilledAfter(config, stage=2, step=1))  # mid-stage 2, its step-1 checkpoint written
    resumed = train_locally(config).losses
    assert len(whole) == 4 and len(resumed) == 1
    assert resumed == whole[3:]  # bit for bit
    saved = load_file(latest_checkpoint(config.run_dir / "checkpoints") / "model.safetensors")
    motion = {name: t.dtype for name, t in saved.items() if "motion_modules" in name and "pos_embed" not in name}
    assert motion and set(motion.values()) == {torch.float32}  # the stage-2 masters (not the position buffers)
    assert {t.dtype for name, t in saved.items() if name.startswith("attribute_net.")} == {torch.bfloat16}
    # The export: fp32, with the motion modules and the clip length, the frozen networks exactly as built.
    from data_specs.model import model_flavour
    from model.builders import random_components
    from model.pipeline import DurianPipeline

    pipeline = DurianPipeline.from_pretrained(config.run_dir / "pipeline")
    assert pipeline.model.has_motion_modules and pipeline.default_window == 2
    assert pipeline.model.dtype == torch.float32
    # The guidance it draws is the dataset's: the same renderer, layout and spec give the same pose frames.
    import webdataset as wds

    from data_specs.sample import decode_sample
    from model.pipeline import render_driving_pose
    from tests.samples.samples_testing import HAND_POSE_RENDER

    sample = decode_sample(next(iter(wds.WebDataset(str(next((dataset / "shards").glob("*.tar"))),
                                                    shardshuffle=False))))
    assert pipeline.trained_pose_render == HAND_POSE_RENDER and pipeline.trained_layout.name == "truth_5"
    drawn = render_driving_pose(sample.keypoints, (32, 32), pipeline.trained_layout, pipeline.trained_pose_render)
    assert sample.pose_frames.any() and np.array_equal((drawn * 255).round().byte().permute(0, 2, 3, 1).numpy(),
                                                       sample.pose_frames)
    built = random_components(model_flavour("tiny"), seed=config.seed)
    for exported, initial in ((pipeline.vae, built.vae), (pipeline.image_encoder, built.image_encoder)):
        assert all(torch.equal(a, b) for a, b in zip(exported.state_dict().values(), initial.state_dict().values()))


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server", "local_ray")
def test_two_ray_train_workers_overfit_a_tiny_set_in_the_flow(tmp_path: Path, capfd: pytest.CaptureFixture):
    from prefect.artifacts import Artifact
    from safetensors.torch import load_file

    from data_specs.model import model_flavour
    from flows.train import train_durian
    from model.builders import random_components
    from model.pipeline import DurianPipeline
    from training.checkpoints import latest_checkpoint
    from training.monitoring import read_metrics

    dataset = write_pair_dataset(tmp_path / "data", clips=3, size=32, frames=2, pairs_per_clip=1, eval_clips=(2,))
    config = tiny_config(dataset, tmp_path / "runs", stages=[{"stage": 1, "steps": 20}], checkpoint_every=10,
                         reference_dropout=0, noise_offset=0, scaling={"workers": 2}, ema_decay=0.5,
                         validate_every=20, sample_steps=2)
    result = train_durian(config)
    losses = [record["loss"] for record in read_metrics(config.run_dir) if record["kind"] == "train"]
    assert len(losses) == 20
    # An honest overfit check: the last steps' loss is well below the first steps'.
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5]), losses
    # The exported pipeline holds the final checkpoint's EMA weights, which training moved away from the init.
    model = DurianPipeline.from_pretrained(result["pipeline"]).model
    trained = model.state_dict()
    checkpoint = latest_checkpoint(config.run_dir / "checkpoints")
    final, ema = load_file(checkpoint / "model.safetensors"), load_file(checkpoint / "ema.safetensors")
    names = {id(p): n for n, p in model.named_parameters()}
    trainable = [names[id(p)] for p in model.select_trainable(1)]  # the EMA's order
    assert len(ema) == len(trainable)
    assert all(torch.equal(trained[name], ema[str(i)]) for i, name in enumerate(trainable))
    assert not all(torch.equal(final[name], ema[str(i)]) for i, name in enumerate(trainable))  # averaged
    assert all(torch.equal(trained[name], final[name]) for name in final if name not in trainable)
    initial = random_components(model_flavour("tiny"), seed=config.seed).model.state_dict()
    assert not torch.equal(trained["pose_guider.conv_out.weight"], initial["pose_guider.conv_out.weight"])
    for key in ("train-durian-losses", "train-durian-loss-plot", "train-durian-pipeline", "train-durian-summary",
                "train-durian-validation", "train-durian-sample-video"):
        assert Artifact.get(key) is not None, key
    # Validation on the held-out video (never trained on): metrics and a side-by-side video.
    validation = [r for r in read_metrics(config.run_dir) if r["kind"] == "validation"]
    assert [r["step"] for r in validation] == [20]
    assert all(0 < r["l1"] < 1 and 0 < r["psnr"] < 60 and -1 < r["ssim"] <= 1 for r in validation)
    assert all(Path(r["video"]).is_file() and Path(r["video"]).stat().st_size > 0 for r in validation)
    assert all(r["reliance/all/gap_dropped_inside"] == r["reliance/all/gap_dropped_inside"] for r in validation)
    assert result["validation"]["step"] == 20
    # Ray Train's state queries work on the local Ray (its dashboard runs), and its preemption watcher is off.
    output = "".join(capfd.readouterr())
    assert "Failed to query Ray Train Controller" not in output and "PreemptionWatcher" not in output
