"""Training precision: which dtype every network is held in, and the fp32 master weights of the trained ones.

Under mixed precision (bf16, the default on GPUs) every network is held in bf16: the frozen ones (the VAE,
unless `fp32_vae`, CLIP, ArcFace, and the model's parts the stage does not train) are cast once, when the run
builds them, so no frozen weight is cast again at use. The trained parameters keep fp32 masters
(`MasterWeights`): the optimiser, gradient clipping, the EMA and the checkpoints work on the masters; the model
runs on bf16 working copies, refreshed from the masters once per optimiser step in one multi-tensor copy, and
their bf16 gradients are copied into the masters' fp32 gradients in one multi-tensor copy after backward. The
forward still runs under bf16 autocast, which keeps the ops that need it (softmax, normalisations) in fp32.
What stays fp32 uses TF32 matmuls and convolutions on CUDA.

Without mixed precision (CPUs by default) everything is fp32 and the masters are the parameters themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from data_specs.training import MixedPrecision

__all__ = ["MasterWeights", "PrecisionPolicy", "hold_in", "precision_policy"]


def hold_in(module: nn.Module, dtype: torch.dtype, device: torch.device | None = None) -> None:
    """Cast `module`'s floating-point tensors to `dtype` (and move it to `device`) in place.

    `nn.Module.to` itself: diffusers' `ModelMixin.to` warns about modules to keep in fp32 on every dtype cast,
    also when a model has none (diffusers 0.42).
    """
    nn.Module.to(module, device=device, dtype=dtype)


@dataclass(frozen=True)
class PrecisionPolicy:
    """Dtypes of a training run.

    working_dtype: what every network (and the trained parameters' working copies) is held in.
    vae_dtype: the VAE's (fp32 when `fp32_vae`, as diffusers' SD 1.5 examples keep it for decoding).
    """

    working_dtype: torch.dtype = torch.float32
    vae_dtype: torch.dtype = torch.float32

    @property
    def autocast(self) -> bool:
        """Whether the forward runs under bf16 autocast."""
        return self.working_dtype == torch.bfloat16

    def apply(self, networks: list[nn.Module], vae: nn.Module, device: torch.device) -> None:
        """Hold `networks` in the working dtype and `vae` in its own, on `device` (one cast each, in place);
        TF32 for what stays fp32 on CUDA."""
        for network in networks:
            hold_in(network, self.working_dtype, device)
        hold_in(vae, self.vae_dtype, device)
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True


def precision_policy(mixed_precision: MixedPrecision, device: torch.device,
                     fp32_vae: bool = False) -> PrecisionPolicy:
    """The policy of `TrainConfig.mixed_precision` on `device` ('auto': bf16 on CUDA, fp32 elsewhere)."""
    mixed = device.type == "cuda" if mixed_precision == "auto" else mixed_precision == "bf16"
    if not mixed:
        return PrecisionPolicy()
    return PrecisionPolicy(torch.bfloat16, torch.float32 if fp32_vae else torch.bfloat16)


class MasterWeights:
    """fp32 masters of the parameters a stage trains, and their working copies in the model.

    Take them while the parameters are still fp32, then cast the model to `working_dtype`. With an fp32
    working dtype the masters ARE the parameters (nothing is copied). Otherwise: `to_working()` after every
    optimiser step (one `_foreach_copy_`), `grads_to_masters()` after backward (one `_foreach_copy_`; the
    working gradients are then dropped, unless they live in DDP's buckets). The masters' fp32 gradients exist
    only from `grads_to_masters()` to `zero_grad()` (the optimiser step), not through the next backward.

    grads_in_buckets: the working gradients are views of DDP's gradient buckets (`gradient_as_bucket_view`, set
        by `training.loop.distribute`): they are zeroed in place instead of dropped, as the buckets stay anyway.
    """

    def __init__(self, working: list[nn.Parameter], working_dtype: torch.dtype = torch.float32) -> None:
        self.working = working
        self.separate = working_dtype != torch.float32
        self.grads_in_buckets = False
        if self.separate:
            self.masters = [nn.Parameter(p.detach().float().clone()) for p in working]
        else:
            self.masters = working

    @torch.no_grad()
    def to_working(self) -> None:
        """Copy the masters into the working parameters (rounded to their dtype)."""
        if self.separate:
            torch._foreach_copy_([p.data for p in self.working], [m.data for m in self.masters])

    @torch.no_grad()
    def grads_to_masters(self) -> None:
        """The working gradients (already averaged over ranks) as the masters' fp32 gradients; a parameter
        without a gradient gets zero."""
        if not self.separate:
            return
        for working, master in zip(self.working, self.masters):
            master.grad = torch.empty_like(master)
            if working.grad is None:
                working.grad = torch.zeros_like(working)
        torch._foreach_copy_([m.grad for m in self.masters], [p.grad for p in self.working])
        if not self.grads_in_buckets:
            for working in self.working:
                working.grad = None

    @torch.no_grad()
    def zero_grad(self) -> None:
        """After the optimiser step: drop the masters' gradients, and the working ones (zeroed in place when they
        are DDP's bucket views, which the next backward fills)."""
        if self.grads_in_buckets:
            torch._foreach_zero_([p.grad for p in self.working if p.grad is not None])
        else:
            for parameter in self.working:
                parameter.grad = None
        if self.separate:
            for master in self.masters:
                master.grad = None
