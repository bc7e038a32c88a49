"""Augmentation of a reference frame: a random affine warp, a fill of the exposed area, colour jitter.

`draw` samples an `AugmentParams` (recorded in the sample's metadata) and `apply` replays it on
the original frame and mask, bit for bit: the same three steps that the processor runs
(`warp_reference`, the fill, `finish`), where an inpainting fill is a model call batched over
the clip's pairs.

Complementary masking holds through every step: a reference is warped from the part of the frame
it keeps (I x M for the attribute reference, I x (1 - M) for the portrait reference), so no pixel
of the other part reaches it, neither by the warp's interpolation nor by the fill. The portrait's
mask goes through the fill with its image (a reflected attribute is masked like the attribute),
the inpainter never sees the attribute, and the colour jitter pivots on the kept pixels' mean.
The stored reference is then a function of its kept part alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from data_specs.training_samples import AugmentConfig, AugmentParams

_GREY_WEIGHTS = np.array([0.299, 0.587, 0.114])
_RGB_TO_YIQ = np.array([_GREY_WEIGHTS, [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])

Inpaint = Callable[[np.ndarray, np.ndarray, int], np.ndarray]  # (image, where to paint, seed) -> image
Role = Literal["attribute", "portrait"]
ATTRIBUTE, PORTRAIT = "attribute", "portrait"


def identity_params() -> AugmentParams:
    """No change: what a reference records when augmentation is off."""
    return AugmentParams(angle_deg=0.0, scale=1.0, translate=(0.0, 0.0), brightness=1.0, contrast=1.0,
                         saturation=1.0, hue=0.0, fill="constant")


def draw(rng: np.random.Generator, config: AugmentConfig, side: int) -> AugmentParams:
    """Random parameters within the config's ranges for a `side` x `side` reference."""
    shift = config.translate * side
    return AugmentParams(
        angle_deg=float(rng.uniform(-config.rotate_deg, config.rotate_deg)),
        scale=float(rng.uniform(*config.scale)),
        translate=(float(rng.uniform(-shift, shift)), float(rng.uniform(-shift, shift))),
        brightness=float(rng.uniform(1 - config.brightness, 1 + config.brightness)),
        contrast=float(rng.uniform(1 - config.contrast, 1 + config.contrast)),
        saturation=float(rng.uniform(1 - config.saturation, 1 + config.saturation)),
        hue=float(rng.uniform(-config.hue, config.hue)),
        fill=config.fill,
        fill_value=config.fill_value,
        inpaint_seed=int(rng.integers(2**31)) if config.fill == "inpaint" else None,
    )


def affine_matrix(params: AugmentParams, size: tuple[int, int]) -> np.ndarray:
    """The 2 x 3 matrix of the warp for an image of (height, width)."""
    height, width = size
    matrix = cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), params.angle_deg, params.scale)
    matrix[:, 2] += params.translate
    return matrix


def warp_points(points: np.ndarray, params: AugmentParams, size: tuple[int, int]) -> np.ndarray:
    """(N, 2) pixel points of an image of (height, width) -> where the warp moves them."""
    matrix = affine_matrix(params, size)
    return np.asarray(points, np.float64) @ matrix[:, :2].T + matrix[:, 2]


@dataclass(frozen=True)
class WarpedReference:
    """A reference frame after the warp, before the inpainting fill (if any) and the colour jitter."""

    role: Role
    kept: np.ndarray  # (H, W, 3) uint8: the frame's kept part (I x M or I x (1 - M)) warped, exposed area filled
    whole: np.ndarray | None  # portrait only: the whole frame warped, which the unmasked image shows under the mask
    mask: np.ndarray  # (H, W) bool: the warped mask
    exposed: np.ndarray  # (H, W) bool: where the warp exposed the frame's outside

    @property
    def keep(self) -> np.ndarray:
        """Where the reference shows its image: the mask for the attribute, its complement for the portrait."""
        return self.mask if self.role == ATTRIBUTE else ~self.mask

    def paint_region(self) -> np.ndarray | None:
        """Where an inpainting fill paints (None: nowhere). The portrait's exposed area, together with its mask's
        area, so the model takes the attribute's hole for unknown rather than for black picture. The attribute
        reference is never painted: its mask stops at the frame, so its exposed area is masked out anyway."""
        if self.role == ATTRIBUTE or not self.exposed.any():
            return None
        return self.exposed | self.mask


@dataclass(frozen=True)
class Reference:
    """A finished reference: the masked image, its mask, and (portrait) the unmasked image."""

    image: np.ndarray  # (H, W, 3) uint8: I_attr x M_attr, or I_port x (1 - M_port_train)
    mask: np.ndarray  # (H, W) bool
    unmasked: np.ndarray | None  # portrait only: the augmented frame unmasked (the identity encoder's input)


def warp_reference(image: np.ndarray, mask: np.ndarray, params: AugmentParams, role: Role) -> WarpedReference:
    """Warp one reference frame and its mask (M_attr for the attribute, M_port_train for the portrait).

    The kept part is warped on its own, so the bilinear interpolation blends it with black at the mask's edge,
    never with the other part. With fill 'reflect' the portrait's mask is reflected with the image: what the
    fill mirrors of the attribute is masked. The attribute's mask is 0 in the exposed area whatever the fill,
    so no fill invents attribute pixels (nor blends into them: its constant border is black).
    """
    size = image.shape[:2]
    matrix = affine_matrix(params, size)
    dsize = (size[1], size[0])
    mask = np.asarray(mask, bool)
    keep = mask if role == ATTRIBUTE else ~mask
    border = cv2.BORDER_REFLECT_101 if params.fill == "reflect" else cv2.BORDER_CONSTANT
    # The attribute keeps black beyond the frame: a fill colour would blend into its edge pixels.
    fill = tuple(int(v) for v in params.fill_value) if role == PORTRAIT else (0, 0, 0)

    def move(picture: np.ndarray) -> np.ndarray:
        return cv2.warpAffine(picture, matrix, dsize, flags=cv2.INTER_LINEAR, borderMode=border, borderValue=fill)

    kept = move(image * keep[..., None].astype(np.uint8))
    whole = move(image) if role == PORTRAIT else None
    # The mask (bit 0) and a marker of the frame's inside (bit 1) travel in one nearest-neighbour warp.
    marked = mask.astype(np.uint8) | np.uint8(2)
    moved = cv2.warpAffine(marked, matrix, dsize, flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                           borderValue=0)
    warped_mask = (moved & 1).astype(bool)
    if role == PORTRAIT and border != cv2.BORDER_CONSTANT:
        warped_mask = cv2.warpAffine(mask.astype(np.uint8), matrix, dsize, flags=cv2.INTER_NEAREST,
                                     borderMode=border).astype(bool)
    return WarpedReference(role=role, kept=kept, whole=whole, mask=warped_mask, exposed=moved == 0)


def finish(warped: WarpedReference, params: AugmentParams, painted: np.ndarray | None = None) -> Reference:
    """The colour jitter and the masking, after the fill; `painted`: `warped.kept` with its paint region painted.

    The portrait's unmasked image shows the whole warped frame under the mask and the kept (or painted) part
    elsewhere, so masking it gives exactly the portrait reference.
    """
    base = warped.kept if painted is None else np.asarray(painted, np.uint8)
    keep = warped.keep
    if warped.whole is not None:
        base = np.where(warped.mask[..., None], warped.whole, base)
    jittered = jitter(base, params, region=keep)
    return Reference(image=jittered * keep[..., None].astype(np.uint8), mask=warped.mask,
                     unmasked=jittered if warped.role == PORTRAIT else None)


def jitter(image: np.ndarray, params: AugmentParams, region: np.ndarray | None = None) -> np.ndarray:
    """Brightness, contrast, saturation, then hue, on a uint8 RGB image.

    All four are linear in RGB (the hue turns the chroma plane of YIQ), so they compose into one
    3 x 4 colour matrix applied in a single pass that rounds and saturates to uint8. The contrast
    pivots on the mean grey of `region` (bool (H, W); the whole image when None or empty): a
    reference's kept pixels, so the other part cannot shift its colours either.
    """
    grey = _GREY_WEIGHTS
    inside = None if region is None or not region.any() else region.astype(np.uint8)
    mean = params.brightness * float(np.dot(cv2.mean(image, mask=inside)[:3], grey))
    saturation = params.saturation * np.eye(3) + (1 - params.saturation) * np.outer(np.ones(3), grey)
    linear = _hue_rotation(params.hue) @ (params.contrast * params.brightness * saturation)
    # Every step maps grey to grey, so the contrast's pull towards the mean grey stays an offset.
    matrix = np.hstack([linear, np.full((3, 1), (1 - params.contrast) * mean)])
    return cv2.transform(image, matrix.astype(np.float32))


def _hue_rotation(turn: float) -> np.ndarray:
    """The RGB matrix that turns the I/Q chroma plane of YIQ by `turn` of a full circle (grey stays grey)."""
    angle = 2 * np.pi * turn
    rotation = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    return np.linalg.inv(_RGB_TO_YIQ) @ rotation @ _RGB_TO_YIQ


def apply(image: np.ndarray, mask: np.ndarray, params: AugmentParams, role: Role,
          inpaint: Inpaint | None = None) -> Reference:
    """Replay recorded parameters on an original frame and its mask: the reference the processor stored."""
    warped = warp_reference(image, mask, params, role)
    region = warped.paint_region() if params.fill == "inpaint" else None
    painted = None
    if region is not None:
        if inpaint is None:
            raise ValueError("fill 'inpaint' needs the inpainting model to replay")
        painted = inpaint(warped.kept, region, params.inpaint_seed or 0)
    return finish(warped, params, painted)
