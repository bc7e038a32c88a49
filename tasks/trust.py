"""What a build may execute: files that hold code are loaded only when the config trusts them.

A weight file is data: its tensors are read by the allow-listed unpickler or from a
safetensors header, and nothing in it can run. TorchScript and `torch.export` archives are
programs: TorchScript carries code, and `torch.export.load` unpickles parts of its archive with
`weights_only=False`, so a crafted archive named like an official `.pth` runs whatever its pickle
names the moment it is opened. Checkpoints come from model hubs; such a file is loaded only
where its config section says `trust_code: true`.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["UntrustedCodeError", "refuse_untrusted_code"]


class UntrustedCodeError(ValueError):
    """A file that holds code (TorchScript, `torch.export`) was given where the config does not trust code."""


def refuse_untrusted_code(path: str | Path, kind: str, setting: str, trust_code: bool) -> None:
    """Raise `UntrustedCodeError` for a `kind` file (its contents would run on load) unless `trust_code`.

    setting: the config field that allows it, named in the message (e.g. `perception.keypoints.trust_code`).
    """
    if trust_code:
        return
    raise UntrustedCodeError(
        f"{path} is a {kind} file, which can run code when loaded; it was not opened. If you trust where it came "
        f"from, set `{setting}: true` in the build config, or use the weights-only release (the original .pth "
        f"or a .safetensors file)")
