"""Complementary masking through augmentation: no attribute pixel reaches the portrait reference and no other
pixel the attribute reference, whatever the warp, the fill and the colour jitter drew."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from data_specs.training_samples import AugmentConfig
from tasks.samples import augment
from tasks.samples.expansion import dilate_erode

SIDE = 64
DRAWS = 60
ATTRIBUTE_COLOUR = (255, 0, 255)  # nothing else in the test frames has G == 0 with R == B > 0


def frame_with_hair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A textured frame whose attribute (hair) touches the top and left edges, where a warp exposes and
    a reflecting fill mirrors it, with the attribute in ATTRIBUTE_COLOUR and every other pixel green-heavy."""
    image = rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
    image[..., 1] = rng.integers(128, 256, (SIDE, SIDE), dtype=np.uint8)
    mask = np.zeros((SIDE, SIDE), np.uint8)
    cv2.ellipse(mask, (SIDE // 3, 0), (SIDE // 2, SIDE // 4), 0, 0, 360, 1, -1)
    mask[:, :4] = 1
    mask = mask.astype(bool)
    image[mask] = ATTRIBUTE_COLOUR
    return image, mask


def telea(image: np.ndarray, region: np.ndarray, seed: int) -> np.ndarray:
    """A real inpainting fill (OpenCV's Telea): it spreads the colours around the region into it, so any
    attribute pixel it were given would show in what it paints."""
    return cv2.inpaint(image, region.astype(np.uint8), 3, cv2.INPAINT_TELEA)


def recoloured(image: np.ndarray, where: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The image with the pixels `where` replaced by random colours."""
    other = image.copy()
    other[where] = rng.integers(0, 256, (int(where.sum()), 3), dtype=np.uint8)
    return other


def is_attribute_colour(image: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels of the attribute's colour, at any intensity (blended with black)."""
    red, green, blue = (image[..., c].astype(int) for c in range(3))
    return (green == 0) & (red == blue) & (red > 0)


@pytest.mark.parametrize("fill", ["constant", "reflect", "inpaint"])
def test_no_pixel_crosses_the_masks_under_random_augmentations(fill: str):
    config = AugmentConfig(fill=fill, fill_value=(40, 200, 90))  # the real ranges, each fill
    rng = np.random.default_rng(0)
    inpaint = telea if fill == "inpaint" else None
    exposed_pixels = reflected_mask_pixels = 0
    for _ in range(DRAWS):
        image, attribute_mask = frame_with_hair(rng)
        grown = dilate_erode(attribute_mask, int(rng.integers(0, 4)), 0)  # M_port_train as the processor grows it
        portrait_mask = attribute_mask | grown
        params = augment.draw(rng, config, SIDE)
        portrait = augment.apply(image, portrait_mask, params, augment.PORTRAIT, inpaint)
        attribute = augment.apply(image, attribute_mask, params, augment.ATTRIBUTE, inpaint)
        warped = augment.warp_reference(image, portrait_mask, params, augment.PORTRAIT)
        exposed_pixels += int(warped.exposed.sum())
        reflected_mask_pixels += int((warped.mask & warped.exposed).sum())

        # Bit for bit: the portrait reference is the same whatever the masked pixels hold, the attribute
        # reference the same whatever the pixels outside its mask hold (colour jitter included).
        for where in (attribute_mask, portrait_mask):
            other = augment.apply(recoloured(image, where, rng), portrait_mask, params, augment.PORTRAIT, inpaint)
            np.testing.assert_array_equal(other.image, portrait.image)
            np.testing.assert_array_equal(other.mask, portrait.mask)
        other = augment.apply(recoloured(image, ~attribute_mask, rng), attribute_mask, params, augment.ATTRIBUTE,
                              inpaint)
        np.testing.assert_array_equal(other.image, attribute.image)

        # The masks are complementary in the stored images, and the unmasked portrait masks to the reference.
        assert not portrait.image[portrait.mask].any() and not attribute.image[~attribute.mask].any()
        np.testing.assert_array_equal(portrait.image, portrait.unmasked * ~portrait.mask[..., None])

        # Pixel by pixel by colour, without colour jitter: no attribute colour in the portrait reference, only
        # the attribute's colour (at any intensity) in the attribute reference.
        plain = params.model_copy(update={"brightness": 1.0, "contrast": 1.0, "saturation": 1.0, "hue": 0.0})
        portrait_plain = augment.apply(image, portrait_mask, plain, augment.PORTRAIT, inpaint).image
        attribute_plain = augment.apply(image, attribute_mask, plain, augment.ATTRIBUTE, inpaint).image
        assert not is_attribute_colour(portrait_plain).any()
        lit = attribute_plain.any(axis=-1)
        assert lit.any() and is_attribute_colour(attribute_plain)[lit].all()
    assert exposed_pixels > 0  # the draws did expose the frame's outside
    if fill == "reflect":
        assert reflected_mask_pixels > 0  # ... and the reflection mirrored the attribute, masked with it


def test_the_reflected_attribute_is_masked_where_it_used_to_leak():
    """The measured failure: with fill 'reflect', mirrored hair at the exposed border stayed in port_ref."""
    image, mask = frame_with_hair(np.random.default_rng(1))
    params = augment.identity_params().model_copy(update={"angle_deg": 8.0, "translate": (5.0, 6.0),
                                                          "fill": "reflect"})
    warped = augment.warp_reference(image, mask, params, augment.PORTRAIT)
    mirrored_hair = is_attribute_colour(warped.whole) & warped.exposed
    assert mirrored_hair.sum() > 50  # the fill did mirror hair into the exposed area ...
    assert warped.mask[mirrored_hair].all()  # ... and the portrait's mask covers it
    portrait = augment.finish(warped, params)
    assert not is_attribute_colour(portrait.image).any()
