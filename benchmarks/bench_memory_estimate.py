"""Peak device memory per rank of a training step at the paper's sizes, estimated without a GPU.

torchtitan's way (scripts/estimate/estimation.py): the model on fake tensors (`fake_training`: built as the
trainer prepares it) and PyTorch's `MemTracker` (torch.distributed._tools.mem_tracker) following every
tensor's storage through one whole step: loss, backward (with gradient checkpointing, as configured for the
paper's sizes), the trainer's optimiser step. A first untracked step creates AdamW's state, so the tracked
second step is a steady one. Tracked: every network's weights (the model, VAE, CLIP and ArcFace, which stay
on the device), the fp32 masters and their gradients (kept from step to step), the working gradients,
AdamW's state, activations and backward temporaries. Inputs are
the precomputed target latents and encoded references (the frozen encoders' no-grad passes run before the
forward and are not on its peak).

Per rank with 8 ranks: DistributedDataParallel keeps a full replica on every rank, so the per-rank figure is
the single-process one plus DDP's gradient buckets (one buffer the size of the trained parameters' gradients,
in their dtype, held for the whole run: added here from the parameter count, since DDP's reducer does not run
on fake tensors). 8-bit AdamW (bitsandbytes, GPU only) is accounted as bytes: 1 byte per state value and one
fp32 absmax per 256 values for tensors of 4,096 values or more (its `min_8bit_size`), 32-bit state below.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_memory_estimate.py                   # this checkout
    PYTHONPATH=/tmp/baseline .venv/bin/python benchmarks/bench_memory_estimate.py       # before issue 18 (7f780c8)
"""

from __future__ import annotations

import argparse
import functools
import math
import time
from dataclasses import dataclass

import torch
import torch.utils.checkpoint
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed._tools.mem_tracker import MemTracker

import fake_training

GIB = 2**30
_TOTAL = "Total"


@dataclass
class MemoryEstimate:
    """Bytes of one rank.

    static: what the step starts with: every network's weights, the fp32 masters, AdamW's state and the
    masters' gradients (the trainer keeps their buffers from step to step).
    end_of_forward / peak: in use when the DurianModel's forward returns / at the step's peak (MemTracker).
    """

    label: str
    weights: int
    adamw_state: int
    end_of_forward: int
    peak: int
    peak_phase: str
    ddp_buckets: int
    working_gradients: int
    master_gradients: int
    adam8bit_state: int
    trained_parameters: int
    seconds: float

    def row(self) -> str:
        static = self.weights + self.adamw_state + self.master_gradients
        per_rank = self.peak + self.ddp_buckets
        with_8bit = per_rank - self.adamw_state + self.adam8bit_state
        cells = [self.weights, self.adamw_state, self.master_gradients, self.end_of_forward - static,
                 self.peak - static, self.ddp_buckets, self.end_of_forward + self.ddp_buckets]
        return (f"| {self.label} | " + " | ".join(f"{value / GIB:.1f}" for value in cells)
                + f" | **{per_rank / GIB:.1f}** ({self.peak_phase}) | {with_8bit / GIB:.1f} |")


class StepMemoryTracker(MemTracker):
    """MemTracker keeping only the whole step's peak: its per-module peaks cost a pass over every module seen
    (thousands at SD 1.5 size) after every op, which made one step take many minutes."""

    peak_phase = "none"

    def _update_peak_stats(self, peak_state: object) -> None:
        for device, snapshot in self._curr_mem_snap.items():
            if self._peak_mem.get(device, 0) < snapshot[_TOTAL]:
                self._peak_mem[device] = snapshot[_TOTAL]
                self._peak_mem_snap[device] = dict(snapshot)
                self.peak_phase = ("optimiser step" if self._in_opt else "backward" if self._mod_tracker.is_bw
                                   else "forward (or between)")


class _NoHook:
    def remove(self) -> None:
        pass


def skip_frozen_parameters(tracker: MemTracker, modules: list[torch.nn.Module]) -> None:
    """MemTracker puts a gradient hook on every parameter of each module it sees run, which a frozen one
    refuses (torch 2.14): frozen parameters are entered as already hooked (they never get a gradient)."""
    for module in modules:
        for parameter in module.parameters():
            if not parameter.requires_grad:
                tracker._param_to_grad_hook_handles[parameter] = (_NoHook(), _NoHook())


def checkpoint_motion_modules(model: torch.nn.Module) -> int:
    """What-if (not what training runs): recompute each motion module in backward as well, which diffusers'
    UNetMotionModel does not (it checkpoints resnets and spatial transformer blocks). Returns how many."""
    count = 0
    for name, module in model.denoiser.named_modules():
        if name.rpartition(".")[0].endswith("motion_modules"):
            module.forward = functools.partial(torch.utils.checkpoint.checkpoint, module.forward, use_reentrant=False)
            count += 1
    return count


def adam8bit_state_bytes(parameters: list[torch.Tensor]) -> int:
    """bitsandbytes AdamW8bit's two states: uint8 plus one fp32 absmax per 256-value block, fp32 for small
    tensors."""
    total = 0
    for parameter in parameters:
        n = parameter.numel()
        total += 2 * (n + 4 * math.ceil(n / 256)) if n >= 4096 else 2 * 4 * n
    return total


def estimate(label: str, stage: int, batch: int, frames: int, latent: int, mixed_precision: str,
             checkpointing: bool, motion_checkpointing: bool = False) -> MemoryEstimate:
    start = time.perf_counter()
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    training = fake_training.build(fake_mode, "sd15", stage, frames, mixed_precision, checkpointing)
    components = training.components
    if motion_checkpointing and stage == 2:
        label += f", {checkpoint_motion_modules(components.model)} motion modules checkpointed (what-if)"
    with fake_mode, fake_training.HostSyncs():
        inputs = fake_training.make_inputs(training, batch, frames, latent)
        training.step(inputs)  # the first step creates the optimiser state
        training.optimizer_step()
        tracker = StepMemoryTracker()
        skip_frozen_parameters(tracker, [components.model, components.vae, components.image_encoder,
                                         components.identity_encoder])
        separate_masters = [] if training.master_weights is None or not training.master_weights.separate \
            else training.master_weights.masters
        # The masters' gradients outlive the step (the trainer overwrites them in place each step).
        master_grads = [m.grad for m in separate_masters if m.grad is not None]
        tracker.track_external(components.model, components.vae, components.image_encoder,
                               components.identity_encoder, training.optimizer, *separate_masters, *master_grads,
                               inputs.latents, inputs.pose_frames, *vars(inputs.references).values())
        end_of_forward = {}

        def record_end_of_forward(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
            end_of_forward["bytes"] = tracker.get_tracker_snapshot()[fake_training.CPU][_TOTAL]

        hook = components.model.register_forward_hook(record_end_of_forward)
        with tracker:
            training.step(inputs)
            training.optimizer_step()
        hook.remove()
    peak = tracker.get_tracker_snapshot("peak")[fake_training.CPU][_TOTAL]
    trained = sum(p.numel() for p in training.masters)
    working_size = training.model.dtype.itemsize  # the trained parameters' working copies (the model's dtype)
    networks = (components.model, components.vae, components.image_encoder, components.identity_encoder)
    weights = fake_training.parameter_bytes([t for module in networks for t in (*module.parameters(),
                                                                                *module.buffers())])
    weights += fake_training.parameter_bytes(separate_masters)
    return MemoryEstimate(label, weights, adamw_state=2 * 4 * trained, end_of_forward=end_of_forward["bytes"],
                          peak=peak, peak_phase=tracker.peak_phase, ddp_buckets=trained * working_size,
                          working_gradients=trained * working_size,
                          master_gradients=fake_training.parameter_bytes(master_grads),
                          adam8bit_state=adam8bit_state_bytes(training.masters), trained_parameters=trained,
                          seconds=time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mixed-precision", default="bf16", choices=["bf16", "no"],
                        help="The trainer's TrainConfig.mixed_precision (before issue 18: fp32 weights always).")
    parser.add_argument("--no-checkpointing", action="store_true", help="Keep every activation.")
    parser.add_argument("--frames", type=int, default=24, help="Stage 2 clip length.")
    parser.add_argument("--stage1-batch", type=int, default=4)
    parser.add_argument("--latent", type=int, default=64, help="Latent side (64: 512 px).")
    parser.add_argument("--stage", type=int, choices=[1, 2], default=None, help="Only this stage.")
    parser.add_argument("--what-if-checkpoint-motion-modules", action="store_true",
                        help="Stage 2: also recompute the motion modules in backward (not what training runs).")
    args = parser.parse_args()
    checkpointing = not args.no_checkpointing
    print(f"torch {torch.__version__}, sd15, {args.latent * 8}^2, checkpointing {checkpointing}, "
          f"{'trainer' if fake_training.TRAINER else 'loop before issue 18'}, mixed_precision {args.mixed_precision}")
    print("| GiB per rank (DDP, 8 ranks) | weights (every network, fp32 masters) | AdamW state | masters' "
          "gradients (kept) | activations at the end of the forward | activations, gradients and temporaries "
          "at the peak | DDP buckets | at the end of the forward | peak per rank (where) | peak with 8-bit AdamW |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    runs = [(f"stage 1, batch {args.stage1_batch}", 1, args.stage1_batch, 1),
            (f"stage 2, batch 1, {args.frames} frames", 2, 1, args.frames)]
    for label, stage, batch, frames in runs:
        if args.stage not in (None, stage):
            continue
        result = estimate(label, stage, batch, frames, args.latent, args.mixed_precision, checkpointing,
                          args.what_if_checkpoint_motion_modules)
        print(result.row(), flush=True)
        print(f"  ({result.trained_parameters / 1e6:.0f} M trained parameters, their working gradients "
              f"{result.working_gradients / GIB:.1f} GiB in backward; {result.seconds:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
