"""Network sizes of the perception models (Sapiens), beside `data_specs.model`'s flavours of the Durian model.

Nothing here imports torch: configs name a size, and `tasks.perception.sapiens` builds it.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from data_specs.spec import Spec


class SapiensArch(Spec):
    """One Sapiens ViT size (mmpretrain `arch`), plus the width of its dense heads."""

    embed_dim: int
    depth: int
    num_heads: int
    head_channels: int = Field(768, description="Width of the deconv/conv layers of the pose and seg heads.")
    backbone_params: int | None = Field(None, description="Published backbone parameter count.")


SAPIENS_ARCHS: dict[str, SapiensArch] = {
    "0.3b": SapiensArch(embed_dim=1024, depth=24, num_heads=16, backbone_params=306_000_000),
    "0.6b": SapiensArch(embed_dim=1280, depth=32, num_heads=16, backbone_params=635_000_000),
    "1b": SapiensArch(embed_dim=1536, depth=40, num_heads=24, backbone_params=1_139_000_000),
    "2b": SapiensArch(embed_dim=1920, depth=48, num_heads=32, backbone_params=2_132_000_000),
    "tiny": SapiensArch(embed_dim=32, depth=2, num_heads=2, head_channels=16),  # tests and the demo
}
SapiensSize = Literal["0.3b", "0.6b", "1b", "2b", "tiny"]


def _patch_multiple(value: tuple[int, int]) -> tuple[int, int]:
    if any(side <= 0 or side % 16 for side in value):
        raise ValueError("both sides must be positive multiples of 16 (the patch size)")
    return value


SapiensInput = Annotated[tuple[int, int], AfterValidator(_patch_multiple)]  # (height, width)
