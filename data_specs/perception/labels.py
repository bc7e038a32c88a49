"""Segmentation label maps and the attributes: which classes of each network make up each attribute.

A `LabelMap` lists a segmentation network's classes in output order and which classes make up each
attribute (hair, eyeglasses, beard, hat). A backend can only be asked for the attributes its label
map has; anything else fails validation before work starts.
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field, model_validator

from data_specs.spec import Spec

Attribute = Literal["hair", "eyeglasses", "beard", "hat"]
ATTRIBUTES: tuple[str, ...] = get_args(Attribute)


class LabelMap(Spec):
    """The classes of a segmentation network in output order, and the classes of each attribute."""

    name: str
    classes: tuple[str, ...] = Field(description="Class names, index = channel of the logits.")
    attributes: dict[str, tuple[int, ...]] = Field(description="Attribute -> class indices that form its mask.")
    normalisation: Literal["imagenet", "minus_one_to_one", "sapiens"] = Field(
        description="How RGB input is normalised: ImageNet mean/std on [0, 1], [-1, 1], or Sapiens' mean/std on "
        "[0, 255]."
    )

    @model_validator(mode="after")
    def _indices_exist(self) -> LabelMap:
        for attribute, indices in self.attributes.items():
            if attribute not in ATTRIBUTES:
                raise ValueError(f"unknown attribute {attribute!r}")
            if not indices or any(not 0 <= i < len(self.classes) for i in indices):
                raise ValueError(f"{attribute}: class indices {indices} outside 0..{len(self.classes) - 1}")
        return self


BISENET_LABELS = LabelMap(
    name="facexlib_bisenet",
    classes=("background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear", "ear_r",
             "nose", "mouth", "u_lip", "l_lip", "neck", "neck_l", "cloth", "hair", "hat"),
    attributes={"eyeglasses": (6,), "hair": (17,), "hat": (18,)},
    normalisation="imagenet",
)
PARSENET_LABELS = LabelMap(
    name="facexlib_parsenet",
    classes=("background", "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear",
             "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth"),
    attributes={"eyeglasses": (3,), "hair": (13,), "hat": (14,)},
    normalisation="minus_one_to_one",
)
# Sapiens body-part segmentation: Goliath's 34 classes minus the 6 it drops (eyeglass frame and
# lenses, badge, chair, spandex, headset), so no eyeglasses or hat.
SAPIENS_GOLIATH_LABELS = LabelMap(
    name="sapiens_goliath",
    classes=("Background", "Apparel", "Face_Neck", "Hair", "Left_Foot", "Left_Hand", "Left_Lower_Arm",
             "Left_Lower_Leg", "Left_Shoe", "Left_Sock", "Left_Upper_Arm", "Left_Upper_Leg", "Lower_Clothing",
             "Right_Foot", "Right_Hand", "Right_Lower_Arm", "Right_Lower_Leg", "Right_Shoe", "Right_Sock",
             "Right_Upper_Arm", "Right_Upper_Leg", "Torso", "Upper_Clothing", "Lower_Lip", "Upper_Lip",
             "Lower_Teeth", "Upper_Teeth", "Tongue"),
    attributes={"hair": (3,)},
    normalisation="sapiens",
)
# Sapiens' 19-class face-parsing config; no weights are released, this is for weights a user trains.
SAPIENS_FACE_LABELS = LabelMap(
    name="sapiens_face",
    classes=("Background", "Skin", "Nose", "Right_eye", "Left_eye", "Right_brow", "Left_brow", "Right_ear",
             "Left_ear", "Mouth_interior", "Top_lip", "Bottom_lip", "Neck", "Hair", "Beard", "Clothing", "Glasses",
             "Headwear", "Facewear"),
    attributes={"hair": (13,), "beard": (14,), "eyeglasses": (16,), "hat": (17,)},
    normalisation="sapiens",
)

SegmentationBackend = Literal["bisenet", "parsenet", "sapiens_goliath", "sapiens_face", "truth"]
LABEL_MAPS: dict[str, LabelMap] = {
    "bisenet": BISENET_LABELS,
    "parsenet": PARSENET_LABELS,
    "sapiens_goliath": SAPIENS_GOLIATH_LABELS,
    "sapiens_face": SAPIENS_FACE_LABELS,
}


def backend_attributes(backend: str) -> tuple[str, ...]:
    """The attributes a segmentation backend can produce (the ground truth has them all)."""
    if backend == "truth":
        return ATTRIBUTES
    return tuple(a for a in ATTRIBUTES if a in LABEL_MAPS[backend].attributes)
