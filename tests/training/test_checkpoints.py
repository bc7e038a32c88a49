"""The training state on disk: round trips, RNG restore, pruning, crash safety and the exported pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from data_specs.model import model_flavour
from model.builders import DurianComponents, random_components, random_motion_adapter
from model.pipeline import DurianPipeline
from training.checkpoints import (
    export_pipeline,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    make_ema,
    save_checkpoint,
)


@pytest.fixture(scope="module")
def components() -> DurianComponents:
    """A stage-2 model (motion modules inserted)."""
    components = random_components(model_flavour("tiny"), seed=0)
    components.model.add_motion_modules(random_motion_adapter(model_flavour("tiny"), seed=0))
    return components


class Small(torch.nn.Module):
    """A few tensors, one pair tied (shared storage), one buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(4, 4)
        self.b = torch.nn.Linear(4, 4)
        self.b.weight = self.a.weight
        self.register_buffer("count", torch.zeros(2))


def _training_state(model, seed: int = 0):
    torch.manual_seed(seed)
    parameters = model.select_trainable(2)  # the temporal layers: a small share, so the test stays fast
    optimizer = torch.optim.AdamW(parameters, lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 10))
    ema = make_ema(parameters, decay=0.9)
    for p in parameters:
        p.grad = torch.randn_like(p) * 0.01
    optimizer.step()
    scheduler.step()
    ema.step(parameters)
    return parameters, optimizer, scheduler, ema


def _save(root: Path, step: int, model: torch.nn.Module, keep: int | None = 2) -> Path:
    return save_checkpoint(root, step, model, None, None, extra={"stage": 1}, keep=keep)


def test_round_trip_of_the_training_state(components: DurianComponents, tmp_path: Path) -> None:
    model = components.model
    parameters, optimizer, scheduler, ema = _training_state(model)
    extra = {"stage": 2, "batches": 7, "seed": 3}
    path = save_checkpoint(tmp_path, 100, model, optimizer, scheduler, ema=ema, extra=extra)
    assert path == tmp_path / "step-00000100"
    assert sorted(p.name for p in path.iterdir()) == ["ema.safetensors", "model.safetensors", "optimizer.pt",
                                                      "scheduler.pt", "state.json"]

    saved_model = {k: v.clone() for k, v in model.state_dict().items()}
    saved_optimizer = optimizer.state_dict()
    saved_optimizer = {i: {k: v.clone() for k, v in s.items()} for i, s in saved_optimizer["state"].items()}
    saved_ema = [p.clone() for p in ema.shadow_params]
    # Move everything on, then restore.
    with torch.no_grad():
        for p in parameters:
            p.add_(1.0)
    for p in parameters:
        p.grad = torch.ones_like(p)
    optimizer.step()
    scheduler.step()
    ema.step(parameters)

    loaded = load_checkpoint(path, model, optimizer, scheduler, ema)
    assert loaded == {**extra, "step": 100}
    assert all(torch.equal(v, saved_model[k]) for k, v in model.state_dict().items())
    restored = optimizer.state_dict()["state"]
    assert restored.keys() == saved_optimizer.keys()
    assert all(torch.equal(restored[i][k], v) for i, s in saved_optimizer.items() for k, v in s.items())
    assert scheduler.last_epoch == 1
    assert ema.optimization_step == 1 and ema.decay == 0.9
    assert all(torch.equal(a, b) for a, b in zip(ema.shadow_params, saved_ema))


def test_extra_may_not_shadow_the_step(components: DurianComponents, tmp_path: Path) -> None:
    """state.json's `step` is the argument; an `extra` step (a stage's own count, say) would be lost silently."""
    with pytest.raises(ValueError, match="may not contain 'step'"):
        save_checkpoint(tmp_path, 7, components.model, None, None, extra={"step": 3})
    assert not any(tmp_path.iterdir())


def test_strict_keys_and_tied_weights(tmp_path: Path) -> None:
    model = Small()
    with torch.no_grad():
        model.count.fill_(3)
    path = _save(tmp_path, 1, model)
    other = Small()
    load_checkpoint(path, other)
    assert torch.equal(other.a.weight, model.a.weight) and other.b.weight is other.a.weight
    assert torch.equal(other.count, model.count)
    with pytest.raises(RuntimeError, match="Unexpected key"):
        load_checkpoint(path, torch.nn.Linear(4, 4))
    with pytest.raises(FileNotFoundError):
        load_checkpoint(path, other, optimizer=torch.optim.SGD(other.parameters(), lr=0.1))


def test_keeps_the_newest_checkpoints(tmp_path: Path) -> None:
    model = Small()
    for step in (10, 20, 30, 40):
        _save(tmp_path, step, model, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000030", "step-00000040"]
    _save(tmp_path, 40, model, keep=2)  # the same step again: replaced
    _save(tmp_path, 5, model, keep=1)  # the one just written always stays
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000005"]
    assert latest_checkpoint(tmp_path / "missing") is None


def test_a_killed_save_is_invisible_and_cleaned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = Small()
    first = _save(tmp_path, 100, model)
    junk = tmp_path / ".step-00000200.partial"
    junk.mkdir()
    (junk / "model.safetensors").write_bytes(b"junk")
    (tmp_path / "step-00000300").mkdir()  # no state.json: not a checkpoint
    assert latest_checkpoint(tmp_path) == first

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, 200, model, optimizer, None, extra={})
    monkeypatch.undo()
    assert latest_checkpoint(tmp_path) == first
    assert not junk.exists() and not (tmp_path / "step-00000200").exists()

    second = save_checkpoint(tmp_path, 200, model, optimizer, None, extra={})
    assert latest_checkpoint(tmp_path) == second
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_export_pipeline_round_trips_and_replaces(components: DurianComponents, tmp_path: Path) -> None:
    folder = tmp_path / "pipeline"
    export_pipeline(components, folder)
    loaded = DurianPipeline.from_pretrained(folder)
    expected = components.model.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in loaded.model.state_dict().items())
    assert loaded.model.state_dict().keys() == expected.keys()

    pipeline = components.pipeline()
    first = next(iter(pipeline.model.parameters()))
    with torch.no_grad():
        first.add_(1.0)
    export_pipeline(pipeline, folder)
    reloaded = DurianPipeline.from_pretrained(folder)
    assert torch.equal(next(iter(reloaded.model.parameters())), first)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipeline"]


def test_a_folder_is_published_whole_or_not_at_all(tmp_path: Path) -> None:
    from data_specs.files import publishing_folder

    with publishing_folder(tmp_path / "pipeline") as partial:
        (partial / "model.safetensors").write_text("first")
    with pytest.raises(RuntimeError), publishing_folder(tmp_path / "pipeline") as partial:
        (partial / "model.safetensors").write_text("half")
        raise RuntimeError("killed while writing")
    assert (tmp_path / "pipeline" / "model.safetensors").read_text() == "first"
    with publishing_folder(tmp_path / "pipeline") as partial:
        (partial / "model.safetensors").write_text("second")
    assert (tmp_path / "pipeline" / "model.safetensors").read_text() == "second"
    assert [p.name for p in tmp_path.iterdir()] == ["pipeline"]  # no partial or old folder left
