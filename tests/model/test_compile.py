"""`torch.compile` of the denoiser (issue 18: compilation as a training option "when it compiles").

The tiny flavour's denoiser, with the reference readers and the pose-feature hook installed, is compiled in
place (`nn.Module.compile`: its parameters and state-dict keys stay those of the eager module) as one graph
(`fullgraph=True`: a graph break fails the test) and must give eager's prediction and gradients in a training
step. The backend is "aot_eager": Dynamo's capture and AOTAutograd's joint forward/backward graph, which is
what decides whether the denoiser compiles, without inductor's C++ code generation, which takes about 100 s
on the CI's two cores for this model (inductor gave the same prediction when tried; BENCHMARKS.md).
"""

from __future__ import annotations

import torch
from durian_testing import make_clip, make_references

from model.builders import DurianComponents


def _training_step(components: DurianComponents) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Prediction and denoiser gradients of one step (stage-1 shapes: single frames)."""
    model = components.model
    noisy, timesteps, pose = make_clip(frames=1)
    prediction = model(noisy, timesteps, pose, make_references())
    prediction.square().mean().backward()
    model.clear_references()
    grads = {name: p.grad.clone() for name, p in model.denoiser.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return prediction.detach(), grads


def test_compiled_denoiser_trains_like_eager(components: DurianComponents) -> None:
    torch._dynamo.reset()
    model = components.model.train()
    model.requires_grad_(True)
    state_keys = list(model.state_dict())
    eager_prediction, eager_grads = _training_step(components)

    model.denoiser.compile(backend="aot_eager", fullgraph=True)
    compiled_prediction, compiled_grads = _training_step(components)

    assert model.denoiser._compiled_call_impl is not None  # the compiled call is what ran
    assert list(model.state_dict()) == state_keys  # checkpoints keep their layout
    assert eager_prediction.abs().max() > 0
    torch.testing.assert_close(compiled_prediction, eager_prediction, rtol=1e-4, atol=1e-5)
    assert compiled_grads.keys() == eager_grads.keys() and len(eager_grads) > 0
    for name, grad in eager_grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, rtol=1e-3, atol=1e-5, msg=name)
