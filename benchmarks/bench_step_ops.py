"""Dispatched ATen ops and casts per training step (loss + backward) of the SD 1.5 architecture, on the CPU.

The host side of a GPU step is its dispatched ops: every op is a Python -> dispatcher -> kernel launch trip,
and under autocast every use of an fp32 weight by a matmul or convolution is a cast (`aten._to_copy`), except
trainable leaves, which autocast casts once per forward (its cache) and whose gradients come back through one
more cast each in backward. This counts them on the `sd15` flavour (real widths) with small latents, built
and run on fake tensors (`fake_training`), so it needs neither memory nor a GPU; the counts do not depend on
the latent size or the frame count.

Columns: ATen ops per step (every op that reaches the dispatcher below autograd and autocast, less `prim.device`
metadata queries), casts (`aten._to_copy`), forward casts of frozen / trainable parameters (casts whose input
is a parameter of the model, told apart by requires_grad), and host syncs in the step (`.item()` and the like).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_step_ops.py                          # this checkout
    git worktree add /tmp/baseline 7f780c8                                              # before issue 18
    PYTHONPATH=/tmp/baseline .venv/bin/python benchmarks/bench_step_ops.py
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from dataclasses import dataclass

import fake_training
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

_METADATA_OPS = {torch.ops.prim.device.default}  # tensor.device queries: no kernel, no launch
_CAST = torch.ops.aten._to_copy.default


class OpCounter(TorchDispatchMode):
    """Counts the ops dispatched while active; casts of `parameters` by frozen / trainable and phase."""

    def __init__(self, parameters: list[torch.nn.Parameter]) -> None:
        super().__init__()
        self.trainable = {id(p): p.requires_grad for p in parameters}
        self.ops: Counter = Counter()
        self.casts = 0
        self.parameter_casts: Counter = Counter()  # (phase, "frozen" | "trainable")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 (torch's signature)
        if func not in _METADATA_OPS:
            self.ops[func] += 1
        if func is _CAST:
            self.casts += 1
            trainable = self.trainable.get(id(args[0]))
            if trainable is not None:
                # Autograd runs backward nodes with a current node set; the forward has none.
                phase = "backward" if torch._C._current_autograd_node() is not None else "forward"
                self.parameter_casts[phase, "trainable" if trainable else "frozen"] += 1
        return func(*args, **(kwargs or {}))


@dataclass
class StepCounts:
    stage: int
    frames: int
    ops: int
    casts: int
    forward_frozen: int
    forward_trainable: int
    host_syncs: int
    seconds: float
    description: str
    by_op: Counter

    def most_common(self, count: int) -> str:
        return ", ".join(f"{str(op).removeprefix('aten.')} {n:,}" for op, n in self.by_op.most_common(count))

    def row(self) -> str:
        label = "stage 1" if self.stage == 1 else f"stage 2 (F = {self.frames})"
        return (f"| {label} | {self.ops:,} | {self.casts:,} | {self.forward_frozen:,} / {self.forward_trainable:,} "
                f"| {self.host_syncs} |")


def count_step(stage: int, frames: int, latent: int, mixed_precision: str, checkpointing: bool) -> StepCounts:
    """Ops and casts of one loss + backward of `stage` (batch 1)."""
    start = time.perf_counter()
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    training = fake_training.build(fake_mode, "sd15", stage, frames, mixed_precision, checkpointing)
    with fake_mode:
        inputs = fake_training.make_inputs(training, batch=1, frames=frames, latent=latent)
        syncs = fake_training.HostSyncs()
        with syncs, OpCounter(list(training.model.parameters())) as counter:
            training.step(inputs)
    casts = counter.parameter_casts
    return StepCounts(stage, frames, sum(counter.ops.values()), counter.casts, casts["forward", "frozen"],
                      casts["forward", "trainable"], syncs.count, time.perf_counter() - start,
                      training.description, counter.ops)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latent", type=int, default=8, help="Latent side (8: 64 px frames).")
    parser.add_argument("--frames", type=int, default=8, help="Stage 2 clip length.")
    parser.add_argument("--mixed-precision", default="bf16", choices=["bf16", "no"],
                        help="The trainer's TrainConfig.mixed_precision (the loop before issue 18: always fp32 "
                        "weights under bf16 autocast).")
    parser.add_argument("--checkpointing", action="store_true", help="Gradient checkpointing on (recomputation "
                        "in backward repeats the forward's ops).")
    parser.add_argument("--top", type=int, default=12, help="List the most frequent ops of each step.")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, sd15 widths, batch 1, {args.latent}x{args.latent} latents, "
          f"checkpointing {args.checkpointing}")
    print("| | ATen ops per step | casts per step | forward casts of frozen / trainable weights | host syncs |")
    print("|---|---|---|---|---|")
    results = [count_step(1, 1, args.latent, args.mixed_precision, args.checkpointing),
               count_step(2, args.frames, args.latent, args.mixed_precision, args.checkpointing)]
    for result in results:
        print(result.row(), flush=True)
    print(f"model: {results[0].description}; {sum(r.seconds for r in results):.0f} s")
    for result in results:
        print(f"stage {result.stage}, most frequent: {result.most_common(args.top)}")


if __name__ == "__main__":
    main()
