"""The trainer's parts: loss weights at every timestep, per-rank noise, stages under the bf16 policy, fp32
masters in checkpoints, identical starting weights and gradients on two ranks (gloo, DDP), config limits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler
from safetensors.torch import load_file
from torch import nn

from data_specs.model import model_flavour
from data_specs.training import OptimConfig, TrainConfigError, load_train_config
from model.builders import random_components, random_motion_adapter
from model.durian import DurianModel, ReferenceInputs
from training.loop import distribute, forward_backward, make_optimizer, optimizer_step, prepare_stage
from training.precision import PrecisionPolicy, precision_policy
from training.state import CheckpointManager, StageParts, TrainState
from training.step import ModelInputs, StepOptions, min_snr_weights, step_generator, training_noise_scheduler

BF16 = PrecisionPolicy(torch.bfloat16, torch.bfloat16)


def tiny_inputs(model: DurianModel, seed: int = 0, frames: int = 1, latent: int = 8) -> ModelInputs:
    """Random model inputs of the tiny flavour's shapes (8x8 latents: 32 px)."""
    g = torch.Generator().manual_seed(seed)
    channels = model.attribute_net.config.in_channels
    return ModelInputs(
        latents=torch.randn(1, channels - 1, frames, latent, latent, generator=g),
        pose_frames=torch.rand(1, 3, frames, 4 * latent, 4 * latent, generator=g),
        references=ReferenceInputs(
            portrait=torch.randn(1, channels, latent, latent, generator=g),
            attributes=torch.randn(1, 1, channels, latent, latent, generator=g),
            identity_embeds=torch.randn(1, 1, model.config.identity_dim, generator=g),
            attribute_embeds=torch.randn(1, 1, model.attribute_net.config.cross_attention_dim, generator=g)))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("zero_snr", [False, True])
def test_min_snr_weights_are_finite_at_every_timestep(prediction_type: str, zero_snr: bool):
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              prediction_type=prediction_type, rescale_betas_zero_snr=zero_snr)
    timesteps = torch.arange(scheduler.config.num_train_timesteps)
    weights = min_snr_weights(scheduler, timesteps, gamma=5.0)
    assert torch.isfinite(weights).all() and (weights >= 0).all() and (weights <= 1).all()
    snr = (scheduler.alphas_cumprod / (1 - scheduler.alphas_cumprod))[timesteps]
    # Hang et al.: min(SNR, 5) / SNR for the noise, min(SNR, 5) / (SNR + 1) for v, wherever SNR > 0.
    expected = snr.clamp(max=5.0) / (snr if prediction_type == "epsilon" else snr + 1)
    positive = snr > 0
    torch.testing.assert_close(weights[positive], expected[positive].float())
    if zero_snr:  # t = 999 is pure noise: the limit of the noise weight is 1, v's weight is 0
        assert weights[-1] == (1.0 if prediction_type == "epsilon" else 0.0)


def test_the_training_schedule_is_the_pipelines():
    flavour = model_flavour("tiny")
    scheduler = training_noise_scheduler(random_components(flavour, seed=0).scheduler)
    spec = flavour.noise_schedule
    assert scheduler.config.prediction_type == spec.prediction_type == "v_prediction"
    assert scheduler.config.rescale_betas_zero_snr and scheduler.alphas_cumprod[-1] == 0


def test_ranks_draw_different_noise_and_a_step_repeats_its_own():
    def draw(rank: int, step: int) -> torch.Tensor:
        return torch.randn(8, generator=step_generator(0, rank, step, torch.device("cpu")))

    assert torch.equal(draw(0, 5), draw(0, 5))
    assert not torch.equal(draw(0, 5), draw(1, 5))
    assert not torch.equal(draw(0, 5), draw(0, 6))


def test_mixed_precision_is_off_on_cpu_unless_forced():
    cpu = torch.device("cpu")
    assert precision_policy("auto", cpu) == PrecisionPolicy()
    assert precision_policy("bf16", cpu) == BF16
    assert precision_policy("bf16", cpu, fp32_vae=True).vae_dtype == torch.float32
    assert precision_policy("auto", torch.device("cuda")).working_dtype == torch.bfloat16


def test_stages_under_bf16_keep_fp32_masters_and_insert_the_motion_modules_bit_for_bit():
    flavour = model_flavour("tiny")
    model = random_components(flavour, seed=0).model
    fp32 = {name: p.detach().clone() for name, p in model.named_parameters()}

    masters = prepare_stage(model, 1, BF16)
    assert not model.has_motion_modules
    assert not any("motion_modules" in name for name, _ in model.named_parameters())
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}  # frozen and working copies alike
    names = {id(p): name for name, p in model.named_parameters()}
    assert masters.separate and {m.dtype for m in masters.masters} == {torch.float32}
    assert all(torch.equal(m, fp32[names[id(p)]]) for p, m in zip(masters.working, masters.masters))

    adapter = random_motion_adapter(flavour, seed=1)
    expected = {f"denoiser.{name}": tensor.clone() for name, tensor in adapter.state_dict().items()}
    masters = prepare_stage(model, 2, BF16, motion_adapter=lambda: adapter)
    assert model.has_motion_modules
    names = {id(p): name for name, p in model.named_parameters()}
    trained = [names[id(p)] for p in masters.working]
    assert trained and all("motion_modules" in name for name in trained)
    assert set(trained) == {name for name in expected if name in dict(model.named_parameters())}
    assert all(torch.equal(m, expected[names[id(p)]]) for p, m in zip(masters.working, masters.masters))
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_a_bf16_step_updates_the_masters_and_the_checkpoint_holds_them_in_fp32(tmp_path: Path):
    components = random_components(model_flavour("tiny"), seed=0)
    model = components.model
    masters = prepare_stage(model, 1, BF16)
    before = [m.detach().clone() for m in masters.masters]
    optimizer = torch.optim.AdamW(masters.masters, lr=1e-3)
    scheduler = training_noise_scheduler(components.scheduler)
    loss = forward_backward(model, scheduler, tiny_inputs(model), StepOptions(autocast=True),
                            step_generator(0, 0, 0, torch.device("cpu")))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    masters.grads_to_masters()
    assert all(p.grad is None for p in masters.working) and {m.grad.dtype for m in masters.masters} == {torch.float32}
    optimizer.step()
    masters.zero_grad()
    masters.to_working()
    assert any(not torch.equal(a, b) for a, b in zip(before, masters.masters))
    assert all(torch.equal(p, m.to(torch.bfloat16)) for p, m in zip(masters.working, masters.masters))

    parts = StageParts(masters, optimizer, torch.optim.lr_scheduler.ConstantLR(optimizer, 1.0), None)
    manager = CheckpointManager(tmp_path, keep=2, enabled=True)
    path = manager.save(TrainState(global_step=1, stage_step=1, batches=1), model, parts)
    saved = load_file(path / "model.safetensors")
    names = {id(p): name for name, p in model.named_parameters()}
    assert all(saved[names[id(p)]].dtype == torch.float32 and torch.equal(saved[names[id(p)]], m)
               for p, m in zip(masters.working, masters.masters))

    # Restored into a fresh bf16 model: the same masters and working copies.
    fresh = random_components(model_flavour("tiny"), seed=5).model
    fresh_masters = prepare_stage(fresh, 1, BF16)
    fresh_optimizer = torch.optim.AdamW(fresh_masters.masters, lr=1e-3)
    state = manager.load(path, fresh, StageParts(fresh_masters, fresh_optimizer,
                                                 torch.optim.lr_scheduler.ConstantLR(fresh_optimizer, 1.0), None))
    assert state == TrainState(global_step=1, stage_step=1, batches=1)
    assert all(torch.equal(a, b) for a, b in zip(fresh_masters.masters, masters.masters))
    assert all(torch.equal(a, b) for a, b in zip(fresh_masters.working, masters.working))


def _two_ranks(rank: int, store: str, results: str) -> None:
    """One of two gloo ranks: a model built with this rank's own seed, synchronised, one DDP step; in fp32,
    then under bf16 (fp32 masters, gradients averaged in fp32 by the communication hook). Under bf16 the
    sharded optimiser (ZeRO-1) then steps, a checkpoint is saved after the first step and two more steps run;
    a fresh model resumed from that checkpoint runs the same two steps."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    cpu = torch.device("cpu")
    manager = CheckpointManager(Path(results) / "checkpoints", keep=2, enabled=rank == 0)

    def stage_1(policy: PrecisionPolicy, seed: int) -> tuple[nn.Module, StageParts, DDPMScheduler]:
        components = random_components(model_flavour("tiny"), seed=seed)  # different weights on each rank
        masters = prepare_stage(components.model, 1, policy)
        wrapped = distribute(components.model, masters)
        optimizer = make_optimizer(OptimConfig(), 1e-3, masters.masters, cpu, shard=True)
        parts = StageParts(masters, optimizer, torch.optim.lr_scheduler.ConstantLR(optimizer, 1.0), None)
        return wrapped, parts, training_noise_scheduler(components.scheduler)

    def steps(wrapped: nn.Module, parts: StageParts, scheduler: DDPMScheduler, first: int, last: int) -> None:
        for step in range(first, last):
            forward_backward(wrapped, scheduler, tiny_inputs(wrapped.module, seed=10 * step + rank),
                             StepOptions(reference_dropout=0.5, autocast=True), step_generator(0, rank, step, cpu))
            optimizer_step(parts, grad_clip=1.0)

    try:
        for name, policy in (("fp32", PrecisionPolicy()), ("bf16", BF16)):
            wrapped, parts, scheduler = stage_1(policy, seed=rank)
            masters = parts.masters
            started = [m.detach().clone() for m in masters.masters]
            forward_backward(wrapped, scheduler, tiny_inputs(wrapped.module, seed=rank),
                             StepOptions(reference_dropout=0.5, autocast=policy.autocast),
                             step_generator(0, rank, 0, cpu))
            masters.grads_to_masters()
            grads = [torch.zeros_like(m) if m.grad is None else m.grad.clone() for m in masters.masters]
            torch.save({"masters": started, "grads": grads}, f"{results}/{name}-rank{rank}.pt")
        # bf16, sharded optimiser: the first step (its gradients above), a checkpoint, two more steps.
        optimizer_step(parts, grad_clip=1.0)
        manager.save(TrainState(global_step=1, stage_step=1, batches=1), wrapped.module, parts)
        saved = [m.detach().clone() for m in masters.masters]
        steps(wrapped, parts, scheduler, 1, 3)
        continued = [m.detach().clone() for m in masters.masters]
        owned = len(parts.optimizer.optim.state)  # the AdamW states this rank holds
        dist.barrier()  # rank 0 has written the checkpoint
        wrapped, parts, scheduler = stage_1(BF16, seed=rank + 7)
        manager.load(manager.latest(), wrapped.module, parts)
        steps(wrapped, parts, scheduler, 1, 3)
        torch.save({"saved": saved, "continued": continued, "resumed": [m.detach() for m in parts.masters.masters],
                    "owned": owned, "trained": len(parts.masters.masters)}, f"{results}/zero-rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_start_from_rank_0s_weights_and_average_their_gradients(tmp_path: Path):
    import torch.multiprocessing as mp

    mp.start_processes(_two_ranks, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, start_method="spawn")
    rank0 = random_components(model_flavour("tiny"), seed=0).model
    expected = [p.detach() for p in rank0.select_trainable(1)]
    for name in ("fp32", "bf16"):
        ranks = [torch.load(tmp_path / f"{name}-rank{rank}.pt") for rank in range(2)]
        assert all(torch.equal(a, b) for a, b in zip(ranks[1]["masters"], expected))  # rank 1 took rank 0's
        assert all(torch.equal(a, b) for a, b in zip(ranks[0]["masters"], ranks[1]["masters"]))
        assert all(torch.equal(a, b) for a, b in zip(ranks[0]["grads"], ranks[1]["grads"]))  # averaged
        assert {g.dtype for g in ranks[0]["grads"]} == {torch.float32}
        assert sum(g.abs().sum() for g in ranks[0]["grads"]) > 0, name
    # ZeRO-1: each rank holds a share of the optimiser state; the weights agree on both ranks after each step,
    # and a resume from the checkpoint continues bit for bit.
    zero = [torch.load(tmp_path / f"zero-rank{rank}.pt") for rank in range(2)]
    assert all(0 < z["owned"] < z["trained"] for z in zero) and sum(z["owned"] for z in zero) == zero[0]["trained"]
    for key in ("saved", "continued", "resumed"):
        assert all(torch.equal(a, b) for a, b in zip(zero[0][key], zero[1][key])), key
    assert any(not torch.equal(a, b) for a, b in zip(zero[0]["saved"], zero[0]["continued"]))
    assert all(torch.equal(a, b) for a, b in zip(zero[0]["continued"], zero[0]["resumed"]))


def test_frames_beyond_the_motion_modules_length_are_a_config_error(tmp_path: Path):
    config = {"output_dir": str(tmp_path), "data": {"dataset": str(tmp_path)}}
    assert load_train_config({**config, "stages": [{"stage": 2, "steps": 1, "frames": 32}]}).stages[0].frames == 32
    with pytest.raises(TrainConfigError, match="frames=33 is more than the motion modules"):
        load_train_config({**config, "stages": [{"stage": 2, "steps": 1, "frames": 33}]})


def test_precomputed_latents_are_used_only_when_this_runs_vae_made_them(tmp_path: Path):
    import dataclasses

    import numpy as np

    from tests.training.training_testing import make_pairs, write_samples
    from training.loop import Trainer
    from training.ray_train import LocalSession
    from weight_files.tensors import weights_fingerprint

    vae = random_components(model_flavour("tiny"), seed=0).vae  # the VAE a seed-0 tiny run trains with
    this_vae = weights_fingerprint(vae)
    assert this_vae == weights_fingerprint(vae.half())  # fp16 encoders and fp32 trainers agree

    def trainer(made_by: str | None, name: str) -> Trainer:
        pairs = make_pairs(clips=1, size=32, frames=1, pairs_per_clip=1, stages=(1,))
        latent = np.zeros((4, 8, 8), np.float16)
        pairs = [dataclasses.replace(p, latents={"target": latent[None], "attr_ref": latent, "port_ref": latent},
                                     meta=p.meta.model_copy(update={"latents_vae": "a VAE",
                                                                    "latents_vae_weights": made_by}))
                 for p in pairs]
        dataset = write_samples(tmp_path / name, pairs)
        config = load_train_config({"output_dir": str(tmp_path / "runs"), "name": name, "resolution": 32,
                                    "data": {"dataset": str(dataset), "loader_workers": 0},
                                    "stages": [{"stage": 1, "steps": 1}]})
        return Trainer(config, LocalSession(config))

    assert trainer(this_vae, "same").check_latents(1)
    assert not trainer(None, "unrecorded").check_latents(1)  # encoded by this run's VAE instead
    with pytest.raises(TrainConfigError, match="made by another VAE"):
        trainer("0" * 64, "other").check_latents(1)


def test_a_stage_2_run_from_a_stage_1_pipeline_inserts_the_motion_modules(tmp_path: Path):
    from tests.training.training_testing import write_pair_dataset
    from training.loop import Trainer
    from training.ray_train import LocalSession

    flavour = model_flavour("tiny")
    stage1 = random_components(flavour, seed=3)
    stage1.pipeline().save_pretrained(str(tmp_path / "stage1"))
    dataset = write_pair_dataset(tmp_path / "data", clips=1, size=32, frames=2, pairs_per_clip=1, stages=(2,))
    config = load_train_config({"output_dir": str(tmp_path / "runs"), "resolution": 32, "seed": 4,
                                "init_from": str(tmp_path / "stage1"),
                                "data": {"dataset": str(dataset), "loader_workers": 0},
                                "stages": [{"stage": 2, "steps": 1, "frames": 2}]})
    trainer = Trainer(config, LocalSession(config))
    assert not trainer.model.has_motion_modules
    parts = trainer.start_stage(0)
    assert trainer.model.has_motion_modules and trainer.state.motion_modules
    spatial = {name: p for name, p in trainer.model.named_parameters() if "motion_modules" not in name}
    saved = stage1.model.state_dict()
    assert all(torch.equal(p, saved[name]) for name, p in spatial.items())  # stage 1's weights, as saved
    adapter = random_motion_adapter(flavour, seed=4).state_dict()  # the run's seed: the same on every rank
    names = {id(p): name for name, p in trainer.model.named_parameters()}
    assert all(torch.equal(p, adapter[names[id(p)].removeprefix("denoiser.")]) for p in parts.masters.masters)


def test_the_loader_pins_its_batches_for_a_gpu_step(tmp_path: Path):
    """Batches in page-locked memory on CUDA only, so the step's non-blocking copies do not wait for the device
    (pinning itself needs a GPU: not run here)."""
    from data_specs.training import DataConfig, StageRun
    from tests.training.training_testing import write_pair_dataset
    from training.data import DatasetIndex, make_loader, pins_batches

    assert pins_batches(torch.device("cuda")) and not pins_batches(torch.device("cpu"))
    dataset = write_pair_dataset(tmp_path / "ds", clips=2, stages=(1,))
    config = DataConfig(dataset=str(dataset), batch_size=2, loader_workers=0)
    for pin in (True, False):
        loader = make_loader(DatasetIndex.open(dataset), config, StageRun(stage=1, steps=1), pin_memory=pin)
        assert loader.loader.pin_memory is pin
    batch = next(iter(loader))
    moved = batch.to("cpu", non_blocking=True)
    assert moved is not batch and torch.equal(moved.targets, batch.targets) and moved.keys == batch.keys
