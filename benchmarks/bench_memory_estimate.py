"""Peak device memory per rank of a training step at the paper's sizes, estimated without a GPU.

torchtitan's way (scripts/estimate/estimation.py): the model on fake tensors (`fake_training`: built as the
trainer prepares it) and PyTorch's `MemTracker` (torch.distributed._tools.mem_tracker) following every
tensor's storage through one whole step: loss, backward (with gradient checkpointing, as configured for the
paper's sizes), the trainer's optimiser step. A first untracked step creates AdamW's state, so the tracked
second step is a steady one. Tracked: every network's weights (the model, VAE, CLIP and ArcFace, which stay
on the device), the fp32 masters and their gradients, the working gradients, AdamW's state, activations and
backward temporaries. Inputs are the precomputed target latents and encoded references (the frozen encoders'
no-grad passes run before the forward and are not on its peak).

Per rank with 8 ranks, the trainer (issue 18): DistributedDataParallel keeps a full replica of the model on
every rank, with `gradient_as_bucket_view` (the working gradients are views of DDP's buckets, which the fake
step keeps from step to step, zeroed in place, as a rank does: tracked, so nothing is added for buckets; the
table counts them with the step's static memory, not its activations); AdamW's state is
sharded over the 8 ranks (ZeRO-1, `optim.shard_state`, torch's `ZeroRedundancyOptimizer`): the fake step is
one process holding all of it, so 7/8 of it is taken off its end-of-forward and peak figures (each rank
steps its 1/8 of the masters; the masters, their fp32 gradients, which exist only from `grads_to_masters` to
the end of the optimiser step, and the working copies stay whole on every rank). Before issue 18 (the loop
of 7f780c8): a full replica of everything per rank plus DDP's gradient buckets (one buffer the size of the
trained parameters' gradients, in their dtype: added from the parameter count, since DDP's reducer does not
run on fake tensors). 8-bit AdamW (bitsandbytes, GPU only) is accounted as bytes: 1 byte per state value and
one fp32 absmax per 256 values for tensors of 4,096 values or more (its `min_8bit_size`), 32-bit state below,
sharded like AdamW's.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_memory_estimate.py                   # this checkout
    PYTHONPATH=/tmp/baseline .venv/bin/python benchmarks/bench_memory_estimate.py       # before issue 18 (7f780c8)
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass

import fake_training
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed._tools.mem_tracker import MemTracker

GIB = 2**30
RANKS = 8  # the paper's: per-rank figures are for 8 ranks
_TOTAL = "Total"


@dataclass
class MemoryEstimate:
    """Bytes of one rank.

    static: what the step starts with: every network's weights, the fp32 masters, this rank's AdamW state and
    the masters' gradients (before issue 18's trainer: kept from step to step; now dropped after each step).
    end_of_forward / peak: in use when the DurianModel's forward returns / at the step's peak (MemTracker), less
    the AdamW state other ranks hold when it is sharded (`sharded_state_saved`: the fake step is one process).
    """

    label: str
    weights: int
    adamw_state: int  # this rank's
    sharded_state_saved: int
    end_of_forward: int
    peak: int
    peak_phase: str
    ddp_buckets: int
    buckets_tracked: bool  # the buckets are the working gradients the fake step keeps (the trainer's DDP)
    working_gradients: int
    master_gradients: int
    adam8bit_state: int  # this rank's
    trained_parameters: int
    seconds: float

    def row(self) -> str:
        # The trainer's buckets are its working gradients, which the tracker follows; before, DDP's own buffer.
        untracked_buckets = 0 if self.buckets_tracked else self.ddp_buckets
        static = self.weights + self.adamw_state + self.master_gradients + self.ddp_buckets - untracked_buckets
        end_of_forward = self.end_of_forward - self.sharded_state_saved
        peak = self.peak - self.sharded_state_saved
        per_rank = peak + untracked_buckets
        with_8bit = per_rank - self.adamw_state + self.adam8bit_state
        cells = [self.weights, self.adamw_state, self.master_gradients, end_of_forward - static,
                 peak - static, self.ddp_buckets, end_of_forward + untracked_buckets]
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


def adam8bit_state_bytes(parameters: list[torch.Tensor]) -> int:
    """bitsandbytes AdamW8bit's two states: uint8 plus one fp32 absmax per 256-value block, fp32 for small
    tensors."""
    total = 0
    for parameter in parameters:
        n = parameter.numel()
        total += 2 * (n + 4 * math.ceil(n / 256)) if n >= 4096 else 2 * 4 * n
    return total


def estimate(label: str, stage: int, batch: int, frames: int, latent: int, mixed_precision: str,
             checkpointing: bool) -> MemoryEstimate:
    start = time.perf_counter()
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    training = fake_training.build(fake_mode, "sd15", stage, frames, mixed_precision, checkpointing)
    components = training.components
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
    adamw_state = 2 * 4 * trained
    # The trainer (issue 18) on several ranks: AdamW's state sharded over them (ZeRO-1, `optim.shard_state`),
    # and the working gradients are DDP's buckets (`gradient_as_bucket_view`, kept by the fake step as they are
    # on a rank, so tracked): no bucket beside them. Before: a full replica per rank plus DDP's bucket buffer.
    shards = RANKS if fake_training.TRAINER else 1
    return MemoryEstimate(label, weights, adamw_state=adamw_state // shards,
                          sharded_state_saved=adamw_state - adamw_state // shards,
                          end_of_forward=end_of_forward["bytes"], peak=peak, peak_phase=tracker.peak_phase,
                          ddp_buckets=trained * working_size, buckets_tracked=fake_training.TRAINER,
                          working_gradients=trained * working_size,
                          master_gradients=fake_training.parameter_bytes(master_grads),
                          adam8bit_state=adam8bit_state_bytes(training.masters) // shards,
                          trained_parameters=trained, seconds=time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mixed-precision", default="bf16", choices=["bf16", "no"],
                        help="The trainer's TrainConfig.mixed_precision (before issue 18: fp32 weights always).")
    parser.add_argument("--no-checkpointing", action="store_true", help="Keep every activation.")
    parser.add_argument("--frames", type=int, default=24, help="Stage 2 clip length.")
    parser.add_argument("--stage1-batch", type=int, default=4)
    parser.add_argument("--latent", type=int, default=64, help="Latent side (64: 512 px).")
    parser.add_argument("--stage", type=int, choices=[1, 2], default=None, help="Only this stage.")
    args = parser.parse_args()
    checkpointing = not args.no_checkpointing
    print(f"torch {torch.__version__}, sd15, {args.latent * 8}^2, checkpointing {checkpointing}, "
          f"{'trainer' if fake_training.TRAINER else 'loop before issue 18'}, mixed_precision {args.mixed_precision}")
    print("| GiB per rank (DDP, 8 ranks) | weights (every network, fp32 masters) | AdamW state (this rank's) | "
          "masters' gradients at the step's start | activations at the end of the forward | activations, gradients and temporaries "
          "at the peak | DDP buckets | at the end of the forward | peak per rank (where) | peak with 8-bit AdamW |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    runs = [(f"stage 1, batch {args.stage1_batch}", 1, args.stage1_batch, 1),
            (f"stage 2, batch 1, {args.frames} frames", 2, 1, args.frames)]
    for label, stage, batch, frames in runs:
        if args.stage not in (None, stage):
            continue
        result = estimate(label, stage, batch, frames, args.latent, args.mixed_precision, checkpointing)
        print(result.row(), flush=True)
        print(f"  ({result.trained_parameters / 1e6:.0f} M trained parameters, their working gradients "
              f"{result.working_gradients / GIB:.1f} GiB in backward; {result.seconds:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
