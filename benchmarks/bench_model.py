"""Benchmark one Durian training step (forward, backward, AdamW step) on identical shapes.

CPU (default, tiny flavour at larger latents):
  * stage 1: the full model against the bare denoiser (no reference nets, no reference keys);
  * stage 2 at F = 8 and 16: the reference cost, split into the reference nets
    (run once per clip, so flat in F) and the whole overhead of the step
    (reference nets + longer keys in every spatial self-attention, linear in F).
GPU (--gpu, real SD 1.5 sizes, random weights, the trainer's bf16 policy: every network in bf16, fp32
  masters of the trained weights, bf16 autocast): the same ratios, plus step time, peak memory and MFU for
  stage 1 (batch 4, 512^2) and stage 2 (24 frames, gradient checkpointing).

The model of a stage is prepared by the trainer's `prepare_stage` (stage 2 inserts random motion modules),
the step is the trainer's `forward_backward` (`training.step.diffusion_loss`: noise, min-SNR-weighted loss,
backward) then its optimiser side (gradients to the fp32 masters, clipping, AdamW, working copies refreshed),
from latents built here as tensors (the frozen VAE and CLIP encoders are not timed). "Bare" is the same
optimisation step of the denoiser alone: no reference net runs, no reference keys (the unconditional branch).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable

import torch
from diffusers import DDPMScheduler
from torch.utils.flop_counter import FlopCounterMode

from data_specs.model import ModelFlavour, model_flavour
from model.builders import random_components, random_motion_adapter
from model.durian import DurianModel, ReferenceInputs
from model.reference_attention import UNCONDITIONAL
from training.loop import forward_backward, prepare_stage
from training.precision import MasterWeights, PrecisionPolicy
from training.step import ModelInputs, StepOptions, step_generator, training_noise_scheduler

# Dense bf16 peak of an H100/H200 SXM (vendor datasheet), the MFU denominator.
H200_BF16_PEAK_FLOPS = 989.5e12


def emit(lines: list[str], line: str) -> None:
    """Keep a result line and print it now (partial results survive a crash or timeout)."""
    lines.append(line)
    print(line, flush=True)


def make_batch(flavour: ModelFlavour, model: DurianModel, batch: int, frames: int, latent: int,
               device: torch.device) -> ModelInputs:
    """Random inputs of the real shapes: latents (B, 4, F, h, w), pose frames at pixel size."""
    pixels = latent * flavour.vae.vae_scale_factor
    cross = flavour.unet.cross_attention_dim
    identity = model.identity_proj.in_features if isinstance(model.identity_proj, torch.nn.Linear) else cross
    return ModelInputs(
        latents=torch.randn(batch, 4, frames, latent, latent, device=device),
        pose_frames=torch.rand(batch, 3, frames, pixels, pixels, device=device),
        references=ReferenceInputs(
            portrait=torch.randn(batch, 5, latent, latent, device=device),
            attributes=torch.randn(batch, 1, 5, latent, latent, device=device),
            identity_embeds=torch.randn(batch, 1, identity, device=device),
            attribute_embeds=torch.randn(batch, 1, cross, device=device),
        ),
    )


def optimizer_step(masters: MasterWeights, optimizer: torch.optim.Optimizer) -> None:
    """The trainer's optimiser side of a step (`Trainer.optimizer_step`, without schedule and EMA)."""
    masters.grads_to_masters()
    torch.nn.utils.clip_grad_norm_(masters.masters, 1.0)
    optimizer.step()
    masters.zero_grad()
    masters.to_working()


def train_step(model: DurianModel, scheduler: DDPMScheduler, masters: MasterWeights,
               optimizer: torch.optim.Optimizer, batch: ModelInputs, bare: bool, autocast: bool) -> None:
    """One optimisation step: training's loss and backward, or with `bare` the denoiser's alone (no reference
    net, no reference keys: the unconditional branch, with plain MSE)."""
    generator = step_generator(seed=0, rank=0, step=0, device=batch.latents.device)
    if bare:
        latents = batch.latents
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],),
                                  generator=generator, device=latents.device)
        with torch.autocast(latents.device.type, dtype=torch.bfloat16, enabled=autocast):
            prediction = model.denoise(latents, timesteps, batch.pose_frames, batch.references.attribute_embeds,
                                       UNCONDITIONAL)
        torch.nn.functional.mse_loss(prediction.float(), latents).backward()
    else:
        forward_backward(model, scheduler, batch, StepOptions(reference_dropout=0.0, autocast=autocast), generator)
    optimizer_step(masters, optimizer)


def reference_nets_only(model: DurianModel, batch: ModelInputs, autocast: bool) -> None:
    """The reference nets' share of a stage-2 step (they are frozen: forward only)."""
    with torch.autocast(batch.latents.device.type, dtype=torch.bfloat16, enabled=autocast):
        model.encode_references(batch.references)
    model.clear_references()


def timed(fns: dict[str, Callable[[], None]], device: torch.device, warmup: int, repeats: int
          ) -> dict[str, float]:
    """Median seconds of each function, run round-robin so that drifting machine load
    (shared CPUs, clocks) hits all of them alike."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_index in range(warmup + repeats):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            if round_index >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def build(flavour: ModelFlavour, stage: int, device: torch.device, gpu: bool, checkpointing: bool
          ) -> tuple[DurianModel, DDPMScheduler, MasterWeights, torch.optim.Optimizer]:
    """Random model prepared for `stage` by the trainer: on GPU its bf16 policy, on CPU fp32."""
    with torch.device(device):
        components = random_components(flavour, seed=0)
        policy = PrecisionPolicy(torch.bfloat16, torch.bfloat16) if gpu else PrecisionPolicy()
        masters = prepare_stage(components.model, stage, policy, lambda: random_motion_adapter(flavour, seed=0),
                                checkpointing)
    optimizer = torch.optim.AdamW(masters.masters, lr=1e-5, weight_decay=1e-2, fused=gpu)
    return components.model, training_noise_scheduler(components.scheduler), masters, optimizer


def step_flops(model: DurianModel, scheduler: DDPMScheduler, masters: MasterWeights,
               optimizer: torch.optim.Optimizer, batch: ModelInputs, autocast: bool) -> int:
    """FLOPs of one step (matmuls, convs, attention; forward and backward)."""
    with FlopCounterMode(display=False) as counter:
        train_step(model, scheduler, masters, optimizer, batch, bare=False, autocast=autocast)
    return counter.get_total_flops()


def denoiser_forward_flops(model: DurianModel, batch: ModelInputs) -> int:
    """FLOPs of one denoiser forward: what gradient checkpointing recomputes in backward."""
    timesteps = torch.zeros(batch.latents.shape[0], dtype=torch.long, device=batch.latents.device)
    with torch.no_grad(), torch.autocast(batch.latents.device.type, dtype=torch.bfloat16):
        model.encode_references(batch.references)
        with FlopCounterMode(display=False) as counter:
            model.denoise(batch.latents, timesteps, batch.pose_frames, batch.references.attribute_embeds)
    model.clear_references()
    return counter.get_total_flops()


def report_ratios(flavour: ModelFlavour, device: torch.device, gpu: bool, latent: int, batch1: int,
                  warmup: int, repeats: int) -> list[str]:
    """Stage 1 full vs bare; stage 2 reference cost at F = 8 and 16."""
    lines = []
    model, scheduler, masters, optimizer = build(flavour, 1, device, gpu, checkpointing=False)
    data = make_batch(flavour, model, batch1, 1, latent, device)
    t = timed({"full": lambda: train_step(model, scheduler, masters, optimizer, data, False, gpu),
               "bare": lambda: train_step(model, scheduler, masters, optimizer, data, True, gpu)}, device, warmup,
              repeats)
    emit(lines, f"| stage 1, batch {batch1}, {latent}^2 latents | full {t['full'] * 1e3:.1f} ms | "
                 f"bare denoiser {t['bare'] * 1e3:.1f} ms | full / bare = {t['full'] / t['bare']:.2f} |")
    del model, masters, optimizer

    model, scheduler, masters, optimizer = build(flavour, 2, device, gpu, checkpointing=False)
    data = {frames: make_batch(flavour, model, 1, frames, latent, device) for frames in (8, 16)}
    fns = {}
    for frames, batch in data.items():
        fns[f"full{frames}"] = lambda b=batch: train_step(model, scheduler, masters, optimizer, b, False, gpu)
        fns[f"bare{frames}"] = lambda b=batch: train_step(model, scheduler, masters, optimizer, b, True, gpu)
        fns[f"nets{frames}"] = lambda b=batch: reference_nets_only(model, b, gpu)
    t = timed(fns, device, warmup, repeats)
    for frames in data:
        full, bare, nets = t[f"full{frames}"], t[f"bare{frames}"], t[f"nets{frames}"]
        emit(lines, f"| stage 2, F = {frames}, {latent}^2 latents | full {full * 1e3:.1f} ms | "
                     f"bare denoiser {bare * 1e3:.1f} ms | reference nets {nets * 1e3:.1f} ms; "
                     f"whole reference overhead {(full - bare) * 1e3:.1f} ms |")
    overhead = {f: t[f"full{f}"] - t[f"bare{f}"] for f in data}
    emit(lines, f"| stage 2, F = 16 vs 8 | reference nets x{t['nets16'] / t['nets8']:.2f} | "
                 f"whole reference overhead x{overhead[16] / overhead[8]:.2f} | "
                 f"bare denoiser x{t['bare16'] / t['bare8']:.2f} |")
    return lines


def report_gpu_sizes(flavour: ModelFlavour, device: torch.device, warmup: int, repeats: int) -> list[str]:
    """Step time, peak memory and MFU at the paper's sizes."""
    lines = []
    latent = flavour.resolution // flavour.vae.vae_scale_factor
    for stage, batch, frames, checkpointing in ((1, 4, 1, False), (2, 1, 24, True)):
        model, scheduler, masters, optimizer = build(flavour, stage, device, True, checkpointing)
        data = make_batch(flavour, model, batch, frames, latent, device)
        # Hardware FLOPs include the recomputation; model FLOPs (MFU) do not.
        hardware_flops = step_flops(model, scheduler, masters, optimizer, data, autocast=True)
        flops = hardware_flops - (denoiser_forward_flops(model, data) if checkpointing else 0)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        step = functools.partial(train_step, model, scheduler, masters, optimizer, data, bare=False, autocast=True)
        seconds = timed({"step": step}, device, warmup, repeats)["step"]
        peak = torch.cuda.max_memory_allocated(device) / 2**30
        trainable = sum(p.numel() for p in masters.masters)
        emit(lines,
             f"| stage {stage}: batch {batch}, {frames} frame(s), {flavour.resolution}^2"
             f"{', grad. checkpointing' if checkpointing else ''} | {seconds * 1e3:.0f} ms | {peak:.1f} GiB | "
             f"{flops / 1e12:.1f} TFLOP | MFU {flops / seconds / H200_BF16_PEAK_FLOPS:.1%} "
             f"(HFU {hardware_flops / seconds / H200_BF16_PEAK_FLOPS:.1%}) | "
             f"{trainable / 1e6:.0f} M trainable |")
        del model, masters, optimizer, data, step
        torch.cuda.empty_cache()
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="SD 1.5 sizes in bf16 on the first CUDA device.")
    parser.add_argument("--latent", type=int, default=32, help="CPU mode: latent side of the ratio runs.")
    parser.add_argument("--ratio-latent", type=int, default=64, help="GPU mode: latent side of the ratio runs.")
    parser.add_argument("--warmup", type=int, default=2, help="Untimed steps before timing.")
    parser.add_argument("--repeats", type=int, default=5, help="Timed steps (the median is reported).")
    parser.add_argument("--threads", type=int, default=None, help="CPU mode: torch threads.")
    args = parser.parse_args()

    if args.gpu:
        device, flavour = torch.device("cuda"), model_flavour("sd15")
        torch.backends.cuda.matmul.allow_tf32 = True
        print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}")
        report_ratios(flavour, device, True, args.ratio_latent, 4, args.warmup, args.repeats)
        report_gpu_sizes(flavour, device, args.warmup, args.repeats)
    else:
        if args.threads:
            torch.set_num_threads(args.threads)
        device, flavour = torch.device("cpu"), model_flavour("tiny")
        print(f"device: cpu ({torch.get_num_threads()} threads), torch {torch.__version__}, tiny flavour")
        report_ratios(flavour, device, False, args.latent, 2, args.warmup, args.repeats)


if __name__ == "__main__":
    main()
