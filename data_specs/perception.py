"""Contracts of the perception stages: configs, keypoint layouts, label maps and the pose rendering spec.

Nothing here imports torch: data workers read these tables without loading a model.

- Configs (`FaceDetectionConfig`, `FaceCropConfig`, `KeypointConfig`, `SegmentationConfig`,
  `PoseRenderSpec`) are frozen; every field has a default and a description.
- A `KeypointLayout` names the points a keypoint backend returns, the facial region of
  each point and its mirror partner. Sapiens returns `GOLIATH_FACE` (the 238 face points
  of Goliath's 308); the `detector` backend returns the face detector's five landmarks
  (`DETECTOR_5`); the ground-truth backend of the synthetic videos returns `TRUTH_5`.
  Keypoint arrays carry no layout of their own: whoever stores them stores the layout name
  with them, and the renderer draws whichever layout it is given.
- A `LabelMap` lists a segmentation network's classes in output order and which classes
  make up each attribute (hair, eyeglasses, beard, hat). A backend can only be asked for
  the attributes its label map has; anything else fails validation before work starts.
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np

from pydantic import AfterValidator, Field, field_validator, model_validator

from data_specs.spec import Resources, Spec

Attribute = Literal["hair", "eyeglasses", "beard", "hat"]
ATTRIBUTES: tuple[str, ...] = ("hair", "eyeglasses", "beard", "hat")
RGB = tuple[int, int, int]


# ---------------------------------------------------------------------------------------------
# Keypoint layouts


class KeypointLayout(Spec):
    """The meaning of each row of a (N, K, 3) keypoint array: name, facial region, mirror partner."""

    name: str = Field(description="Identifier stored beside keypoint arrays, e.g. 'goliath_face'.")
    description: str = Field(description="Where the points come from.")
    names: tuple[str, ...] = Field(description="Name of each point, in array order.")
    regions: tuple[str, ...] = Field(description="Facial region of each point (the subject's left/right).")
    flip: tuple[int, ...] = Field(description="Index of each point's mirror partner (itself on the midline).")

    @model_validator(mode="after")
    def _consistent(self) -> KeypointLayout:
        if not len(self.names) == len(self.regions) == len(self.flip):
            raise ValueError("names, regions and flip must have one entry per point")
        if any(not 0 <= j < len(self.flip) or self.flip[j] != i for i, j in enumerate(self.flip)):
            raise ValueError("flip must pair points symmetrically")
        return self

    @property
    def num_points(self) -> int:
        return len(self.names)


def _layout_from_table(name: str, description: str, table: tuple[tuple[str, str, str], ...]) -> KeypointLayout:
    """Build a layout from (name, mirror partner's name or '' for itself, region) rows."""
    names = tuple(row[0] for row in table)
    index = {point: i for i, point in enumerate(names)}
    flip = tuple(index[partner or point] for point, partner, _ in table)
    return KeypointLayout(name=name, description=description, names=names,
                          regions=tuple(row[2] for row in table), flip=flip)


GOLIATH_FACE_START = 70  # the face points are Goliath indices 70-307, in order
GOLIATH_NUM_KEYPOINTS = 308

# Goliath's face keypoints (indices 70-307 of the 308 Sapiens pose outputs): name, mirror partner, region.
# "l_"/"r_" and left/right regions are the subject's sides. Goliath has no jaw contour (only the chin tip).
_GOLIATH_FACE_TABLE: tuple[tuple[str, str, str], ...] = (
    # 70-77: midline
    ("center_of_glabella", "", "midline"),
    ("center_of_nose_root", "", "midline"),
    ("tip_of_nose_bridge", "", "midline"),
    ("midpoint_1_of_nose_bridge", "", "midline"),
    ("midpoint_2_of_nose_bridge", "", "midline"),
    ("midpoint_3_of_nose_bridge", "", "midline"),
    ("center_of_labiomental_groove", "", "midline"),
    ("tip_of_chin", "", "midline"),
    # 78-86: right_brow
    ("upper_startpoint_of_r_eyebrow", "upper_startpoint_of_l_eyebrow", "right_brow"),
    ("lower_startpoint_of_r_eyebrow", "lower_startpoint_of_l_eyebrow", "right_brow"),
    ("end_of_r_eyebrow", "end_of_l_eyebrow", "right_brow"),
    ("upper_midpoint_1_of_r_eyebrow", "upper_midpoint_1_of_l_eyebrow", "right_brow"),
    ("lower_midpoint_1_of_r_eyebrow", "lower_midpoint_1_of_l_eyebrow", "right_brow"),
    ("upper_midpoint_2_of_r_eyebrow", "upper_midpoint_3_of_l_eyebrow", "right_brow"),
    ("upper_midpoint_3_of_r_eyebrow", "upper_midpoint_2_of_l_eyebrow", "right_brow"),
    ("lower_midpoint_2_of_r_eyebrow", "lower_midpoint_3_of_l_eyebrow", "right_brow"),
    ("lower_midpoint_3_of_r_eyebrow", "lower_midpoint_2_of_l_eyebrow", "right_brow"),
    # 87-95: left_brow
    ("upper_startpoint_of_l_eyebrow", "upper_startpoint_of_r_eyebrow", "left_brow"),
    ("lower_startpoint_of_l_eyebrow", "lower_startpoint_of_r_eyebrow", "left_brow"),
    ("end_of_l_eyebrow", "end_of_r_eyebrow", "left_brow"),
    ("upper_midpoint_1_of_l_eyebrow", "upper_midpoint_1_of_r_eyebrow", "left_brow"),
    ("lower_midpoint_1_of_l_eyebrow", "lower_midpoint_1_of_r_eyebrow", "left_brow"),
    ("upper_midpoint_2_of_l_eyebrow", "upper_midpoint_3_of_r_eyebrow", "left_brow"),
    ("upper_midpoint_3_of_l_eyebrow", "upper_midpoint_2_of_r_eyebrow", "left_brow"),
    ("lower_midpoint_2_of_l_eyebrow", "lower_midpoint_3_of_r_eyebrow", "left_brow"),
    ("lower_midpoint_3_of_l_eyebrow", "lower_midpoint_2_of_r_eyebrow", "left_brow"),
    # 96-119: left_eye
    ("l_inner_end_of_upper_lash_line", "r_inner_end_of_upper_lash_line", "left_eye"),
    ("l_outer_end_of_upper_lash_line", "r_outer_end_of_upper_lash_line", "left_eye"),
    ("l_centerpoint_of_upper_lash_line", "r_centerpoint_of_upper_lash_line", "left_eye"),
    ("l_midpoint_2_of_upper_lash_line", "r_midpoint_1_of_upper_lash_line", "left_eye"),
    ("l_midpoint_1_of_upper_lash_line", "r_midpoint_2_of_upper_lash_line", "left_eye"),
    ("l_midpoint_6_of_upper_lash_line", "r_midpoint_3_of_upper_lash_line", "left_eye"),
    ("l_midpoint_5_of_upper_lash_line", "r_midpoint_4_of_upper_lash_line", "left_eye"),
    ("l_midpoint_4_of_upper_lash_line", "r_midpoint_5_of_upper_lash_line", "left_eye"),
    ("l_midpoint_3_of_upper_lash_line", "r_midpoint_6_of_upper_lash_line", "left_eye"),
    ("l_outer_end_of_upper_eyelid_line", "r_outer_end_of_upper_eyelid_line", "left_eye"),
    ("l_midpoint_6_of_upper_eyelid_line", "r_midpoint_3_of_upper_eyelid_line", "left_eye"),
    ("l_midpoint_2_of_upper_eyelid_line", "r_midpoint_1_of_upper_eyelid_line", "left_eye"),
    ("l_midpoint_5_of_upper_eyelid_line", "r_midpoint_4_of_upper_eyelid_line", "left_eye"),
    ("l_centerpoint_of_upper_eyelid_line", "r_centerpoint_of_upper_eyelid_line", "left_eye"),
    ("l_midpoint_4_of_upper_eyelid_line", "r_midpoint_5_of_upper_eyelid_line", "left_eye"),
    ("l_midpoint_1_of_upper_eyelid_line", "r_midpoint_2_of_upper_eyelid_line", "left_eye"),
    ("l_midpoint_3_of_upper_eyelid_line", "r_midpoint_6_of_upper_eyelid_line", "left_eye"),
    ("l_midpoint_6_of_upper_crease_line", "r_midpoint_3_of_upper_crease_line", "left_eye"),
    ("l_midpoint_2_of_upper_crease_line", "r_midpoint_1_of_upper_crease_line", "left_eye"),
    ("l_midpoint_5_of_upper_crease_line", "r_midpoint_4_of_upper_crease_line", "left_eye"),
    ("l_centerpoint_of_upper_crease_line", "r_centerpoint_of_upper_crease_line", "left_eye"),
    ("l_midpoint_4_of_upper_crease_line", "r_midpoint_5_of_upper_crease_line", "left_eye"),
    ("l_midpoint_1_of_upper_crease_line", "r_midpoint_2_of_upper_crease_line", "left_eye"),
    ("l_midpoint_3_of_upper_crease_line", "r_midpoint_6_of_upper_crease_line", "left_eye"),
    # 120-143: right_eye
    ("r_inner_end_of_upper_lash_line", "l_inner_end_of_upper_lash_line", "right_eye"),
    ("r_outer_end_of_upper_lash_line", "l_outer_end_of_upper_lash_line", "right_eye"),
    ("r_centerpoint_of_upper_lash_line", "l_centerpoint_of_upper_lash_line", "right_eye"),
    ("r_midpoint_1_of_upper_lash_line", "l_midpoint_2_of_upper_lash_line", "right_eye"),
    ("r_midpoint_2_of_upper_lash_line", "l_midpoint_1_of_upper_lash_line", "right_eye"),
    ("r_midpoint_3_of_upper_lash_line", "l_midpoint_6_of_upper_lash_line", "right_eye"),
    ("r_midpoint_4_of_upper_lash_line", "l_midpoint_5_of_upper_lash_line", "right_eye"),
    ("r_midpoint_5_of_upper_lash_line", "l_midpoint_4_of_upper_lash_line", "right_eye"),
    ("r_midpoint_6_of_upper_lash_line", "l_midpoint_3_of_upper_lash_line", "right_eye"),
    ("r_outer_end_of_upper_eyelid_line", "l_outer_end_of_upper_eyelid_line", "right_eye"),
    ("r_midpoint_3_of_upper_eyelid_line", "l_midpoint_6_of_upper_eyelid_line", "right_eye"),
    ("r_midpoint_1_of_upper_eyelid_line", "l_midpoint_2_of_upper_eyelid_line", "right_eye"),
    ("r_midpoint_4_of_upper_eyelid_line", "l_midpoint_5_of_upper_eyelid_line", "right_eye"),
    ("r_centerpoint_of_upper_eyelid_line", "l_centerpoint_of_upper_eyelid_line", "right_eye"),
    ("r_midpoint_5_of_upper_eyelid_line", "l_midpoint_4_of_upper_eyelid_line", "right_eye"),
    ("r_midpoint_2_of_upper_eyelid_line", "l_midpoint_1_of_upper_eyelid_line", "right_eye"),
    ("r_midpoint_6_of_upper_eyelid_line", "l_midpoint_3_of_upper_eyelid_line", "right_eye"),
    ("r_midpoint_3_of_upper_crease_line", "l_midpoint_6_of_upper_crease_line", "right_eye"),
    ("r_midpoint_1_of_upper_crease_line", "l_midpoint_2_of_upper_crease_line", "right_eye"),
    ("r_midpoint_4_of_upper_crease_line", "l_midpoint_5_of_upper_crease_line", "right_eye"),
    ("r_centerpoint_of_upper_crease_line", "l_centerpoint_of_upper_crease_line", "right_eye"),
    ("r_midpoint_5_of_upper_crease_line", "l_midpoint_4_of_upper_crease_line", "right_eye"),
    ("r_midpoint_2_of_upper_crease_line", "l_midpoint_1_of_upper_crease_line", "right_eye"),
    ("r_midpoint_6_of_upper_crease_line", "l_midpoint_3_of_upper_crease_line", "right_eye"),
    # 144-160: left_eye
    ("l_inner_end_of_lower_lash_line", "r_inner_end_of_lower_lash_line", "left_eye"),
    ("l_outer_end_of_lower_lash_line", "r_outer_end_of_lower_lash_line", "left_eye"),
    ("l_centerpoint_of_lower_lash_line", "r_centerpoint_of_lower_lash_line", "left_eye"),
    ("l_midpoint_2_of_lower_lash_line", "r_midpoint_1_of_lower_lash_line", "left_eye"),
    ("l_midpoint_1_of_lower_lash_line", "r_midpoint_2_of_lower_lash_line", "left_eye"),
    ("l_midpoint_6_of_lower_lash_line", "r_midpoint_3_of_lower_lash_line", "left_eye"),
    ("l_midpoint_5_of_lower_lash_line", "r_midpoint_4_of_lower_lash_line", "left_eye"),
    ("l_midpoint_4_of_lower_lash_line", "r_midpoint_5_of_lower_lash_line", "left_eye"),
    ("l_midpoint_3_of_lower_lash_line", "r_midpoint_6_of_lower_lash_line", "left_eye"),
    ("l_outer_end_of_lower_eyelid_line", "r_outer_end_of_lower_eyelid_line", "left_eye"),
    ("l_midpoint_6_of_lower_eyelid_line", "r_midpoint_3_of_lower_eyelid_line", "left_eye"),
    ("l_midpoint_2_of_lower_eyelid_line", "r_midpoint_1_of_lower_eyelid_line", "left_eye"),
    ("l_midpoint_5_of_lower_eyelid_line", "r_midpoint_4_of_lower_eyelid_line", "left_eye"),
    ("l_centerpoint_of_lower_eyelid_line", "r_centerpoint_of_lower_eyelid_line", "left_eye"),
    ("l_midpoint_4_of_lower_eyelid_line", "r_midpoint_5_of_lower_eyelid_line", "left_eye"),
    ("l_midpoint_1_of_lower_eyelid_line", "r_midpoint_2_of_lower_eyelid_line", "left_eye"),
    ("l_midpoint_3_of_lower_eyelid_line", "r_midpoint_6_of_lower_eyelid_line", "left_eye"),
    # 161-177: right_eye
    ("r_inner_end_of_lower_lash_line", "l_inner_end_of_lower_lash_line", "right_eye"),
    ("r_outer_end_of_lower_lash_line", "l_outer_end_of_lower_lash_line", "right_eye"),
    ("r_centerpoint_of_lower_lash_line", "l_centerpoint_of_lower_lash_line", "right_eye"),
    ("r_midpoint_1_of_lower_lash_line", "l_midpoint_2_of_lower_lash_line", "right_eye"),
    ("r_midpoint_2_of_lower_lash_line", "l_midpoint_1_of_lower_lash_line", "right_eye"),
    ("r_midpoint_3_of_lower_lash_line", "l_midpoint_6_of_lower_lash_line", "right_eye"),
    ("r_midpoint_4_of_lower_lash_line", "l_midpoint_5_of_lower_lash_line", "right_eye"),
    ("r_midpoint_5_of_lower_lash_line", "l_midpoint_4_of_lower_lash_line", "right_eye"),
    ("r_midpoint_6_of_lower_lash_line", "l_midpoint_3_of_lower_lash_line", "right_eye"),
    ("r_outer_end_of_lower_eyelid_line", "l_outer_end_of_lower_eyelid_line", "right_eye"),
    ("r_midpoint_3_of_lower_eyelid_line", "l_midpoint_6_of_lower_eyelid_line", "right_eye"),
    ("r_midpoint_1_of_lower_eyelid_line", "l_midpoint_2_of_lower_eyelid_line", "right_eye"),
    ("r_midpoint_4_of_lower_eyelid_line", "l_midpoint_5_of_lower_eyelid_line", "right_eye"),
    ("r_centerpoint_of_lower_eyelid_line", "l_centerpoint_of_lower_eyelid_line", "right_eye"),
    ("r_midpoint_5_of_lower_eyelid_line", "l_midpoint_4_of_lower_eyelid_line", "right_eye"),
    ("r_midpoint_2_of_lower_eyelid_line", "l_midpoint_1_of_lower_eyelid_line", "right_eye"),
    ("r_midpoint_6_of_lower_eyelid_line", "l_midpoint_3_of_lower_eyelid_line", "right_eye"),
    # 178-187: nose
    ("tip_of_nose", "", "nose"),
    ("bottom_center_of_nose", "", "nose"),
    ("r_outer_corner_of_nose", "l_outer_corner_of_nose", "nose"),
    ("l_outer_corner_of_nose", "r_outer_corner_of_nose", "nose"),
    ("inner_corner_of_r_nostril", "inner_corner_of_l_nostril", "nose"),
    ("outer_corner_of_r_nostril", "outer_corner_of_l_nostril", "nose"),
    ("upper_corner_of_r_nostril", "upper_corner_of_l_nostril", "nose"),
    ("inner_corner_of_l_nostril", "inner_corner_of_r_nostril", "nose"),
    ("outer_corner_of_l_nostril", "outer_corner_of_r_nostril", "nose"),
    ("upper_corner_of_l_nostril", "upper_corner_of_r_nostril", "nose"),
    # 188-203: outer_lips
    ("r_outer_corner_of_mouth", "l_outer_corner_of_mouth", "outer_lips"),
    ("l_outer_corner_of_mouth", "r_outer_corner_of_mouth", "outer_lips"),
    ("center_of_cupid_bow", "", "outer_lips"),
    ("center_of_lower_outer_lip", "", "outer_lips"),
    ("midpoint_1_of_upper_outer_lip", "midpoint_2_of_upper_outer_lip", "outer_lips"),
    ("midpoint_2_of_upper_outer_lip", "midpoint_1_of_upper_outer_lip", "outer_lips"),
    ("midpoint_1_of_lower_outer_lip", "midpoint_2_of_lower_outer_lip", "outer_lips"),
    ("midpoint_2_of_lower_outer_lip", "midpoint_1_of_lower_outer_lip", "outer_lips"),
    ("midpoint_3_of_upper_outer_lip", "midpoint_6_of_upper_outer_lip", "outer_lips"),
    ("midpoint_4_of_upper_outer_lip", "midpoint_5_of_upper_outer_lip", "outer_lips"),
    ("midpoint_5_of_upper_outer_lip", "midpoint_4_of_upper_outer_lip", "outer_lips"),
    ("midpoint_6_of_upper_outer_lip", "midpoint_3_of_upper_outer_lip", "outer_lips"),
    ("midpoint_3_of_lower_outer_lip", "midpoint_6_of_lower_outer_lip", "outer_lips"),
    ("midpoint_4_of_lower_outer_lip", "midpoint_5_of_lower_outer_lip", "outer_lips"),
    ("midpoint_5_of_lower_outer_lip", "midpoint_4_of_lower_outer_lip", "outer_lips"),
    ("midpoint_6_of_lower_outer_lip", "midpoint_3_of_lower_outer_lip", "outer_lips"),
    # 204-219: inner_lips
    ("r_inner_corner_of_mouth", "l_inner_corner_of_mouth", "inner_lips"),
    ("l_inner_corner_of_mouth", "r_inner_corner_of_mouth", "inner_lips"),
    ("center_of_upper_inner_lip", "", "inner_lips"),
    ("center_of_lower_inner_lip", "", "inner_lips"),
    ("midpoint_1_of_upper_inner_lip", "midpoint_2_of_upper_inner_lip", "inner_lips"),
    ("midpoint_2_of_upper_inner_lip", "midpoint_1_of_upper_inner_lip", "inner_lips"),
    ("midpoint_1_of_lower_inner_lip", "midpoint_2_of_lower_inner_lip", "inner_lips"),
    ("midpoint_2_of_lower_inner_lip", "midpoint_1_of_lower_inner_lip", "inner_lips"),
    ("midpoint_3_of_upper_inner_lip", "midpoint_6_of_upper_inner_lip", "inner_lips"),
    ("midpoint_4_of_upper_inner_lip", "midpoint_5_of_upper_inner_lip", "inner_lips"),
    ("midpoint_5_of_upper_inner_lip", "midpoint_4_of_upper_inner_lip", "inner_lips"),
    ("midpoint_6_of_upper_inner_lip", "midpoint_3_of_upper_inner_lip", "inner_lips"),
    ("midpoint_3_of_lower_inner_lip", "midpoint_6_of_lower_inner_lip", "inner_lips"),
    ("midpoint_4_of_lower_inner_lip", "midpoint_5_of_lower_inner_lip", "inner_lips"),
    ("midpoint_5_of_lower_inner_lip", "midpoint_4_of_lower_inner_lip", "inner_lips"),
    ("midpoint_6_of_lower_inner_lip", "midpoint_3_of_lower_inner_lip", "inner_lips"),
    # 220-245: left_ear
    ("l_top_end_of_inferior_crus", "r_top_end_of_inferior_crus", "left_ear"),
    ("l_top_end_of_superior_crus", "r_top_end_of_superior_crus", "left_ear"),
    ("l_start_of_antihelix", "r_start_of_antihelix", "left_ear"),
    ("l_end_of_antihelix", "r_end_of_antihelix", "left_ear"),
    ("l_midpoint_1_of_antihelix", "r_midpoint_1_of_antihelix", "left_ear"),
    ("l_midpoint_1_of_inferior_crus", "r_midpoint_1_of_inferior_crus", "left_ear"),
    ("l_midpoint_2_of_antihelix", "r_midpoint_2_of_antihelix", "left_ear"),
    ("l_midpoint_3_of_antihelix", "r_midpoint_3_of_antihelix", "left_ear"),
    ("l_point_1_of_inner_helix", "r_point_1_of_inner_helix", "left_ear"),
    ("l_point_2_of_inner_helix", "r_point_8_of_inner_helix", "left_ear"),
    ("l_point_3_of_inner_helix", "r_point_3_of_inner_helix", "left_ear"),
    ("l_point_4_of_inner_helix", "r_point_4_of_inner_helix", "left_ear"),
    ("l_point_5_of_inner_helix", "r_point_5_of_inner_helix", "left_ear"),
    ("l_point_6_of_inner_helix", "r_point_6_of_inner_helix", "left_ear"),
    ("l_point_7_of_inner_helix", "r_point_7_of_inner_helix", "left_ear"),
    ("l_highest_point_of_antitragus", "r_highest_point_of_antitragus", "left_ear"),
    ("l_bottom_point_of_tragus", "r_bottom_point_of_tragus", "left_ear"),
    ("l_protruding_point_of_tragus", "r_protruding_point_of_tragus", "left_ear"),
    ("l_top_point_of_tragus", "r_top_point_of_tragus", "left_ear"),
    ("l_start_point_of_crus_of_helix", "r_start_point_of_crus_of_helix", "left_ear"),
    ("l_deepest_point_of_concha", "r_deepest_point_of_concha", "left_ear"),
    ("l_tip_of_ear_lobe", "r_tip_of_ear_lobe", "left_ear"),
    ("l_midpoint_between_22_15", "r_midpoint_between_22_15", "left_ear"),
    ("l_bottom_connecting_point_of_ear_lobe", "r_bottom_connecting_point_of_ear_lobe", "left_ear"),
    ("l_top_connecting_point_of_helix", "r_top_connecting_point_of_helix", "left_ear"),
    ("l_point_8_of_inner_helix", "r_point_2_of_inner_helix", "left_ear"),
    # 246-271: right_ear
    ("r_top_end_of_inferior_crus", "l_top_end_of_inferior_crus", "right_ear"),
    ("r_top_end_of_superior_crus", "l_top_end_of_superior_crus", "right_ear"),
    ("r_start_of_antihelix", "l_start_of_antihelix", "right_ear"),
    ("r_end_of_antihelix", "l_end_of_antihelix", "right_ear"),
    ("r_midpoint_1_of_antihelix", "l_midpoint_1_of_antihelix", "right_ear"),
    ("r_midpoint_1_of_inferior_crus", "l_midpoint_1_of_inferior_crus", "right_ear"),
    ("r_midpoint_2_of_antihelix", "l_midpoint_2_of_antihelix", "right_ear"),
    ("r_midpoint_3_of_antihelix", "l_midpoint_3_of_antihelix", "right_ear"),
    ("r_point_1_of_inner_helix", "l_point_1_of_inner_helix", "right_ear"),
    ("r_point_8_of_inner_helix", "l_point_2_of_inner_helix", "right_ear"),
    ("r_point_3_of_inner_helix", "l_point_3_of_inner_helix", "right_ear"),
    ("r_point_4_of_inner_helix", "l_point_4_of_inner_helix", "right_ear"),
    ("r_point_5_of_inner_helix", "l_point_5_of_inner_helix", "right_ear"),
    ("r_point_6_of_inner_helix", "l_point_6_of_inner_helix", "right_ear"),
    ("r_point_7_of_inner_helix", "l_point_7_of_inner_helix", "right_ear"),
    ("r_highest_point_of_antitragus", "l_highest_point_of_antitragus", "right_ear"),
    ("r_bottom_point_of_tragus", "l_bottom_point_of_tragus", "right_ear"),
    ("r_protruding_point_of_tragus", "l_protruding_point_of_tragus", "right_ear"),
    ("r_top_point_of_tragus", "l_top_point_of_tragus", "right_ear"),
    ("r_start_point_of_crus_of_helix", "l_start_point_of_crus_of_helix", "right_ear"),
    ("r_deepest_point_of_concha", "l_deepest_point_of_concha", "right_ear"),
    ("r_tip_of_ear_lobe", "l_tip_of_ear_lobe", "right_ear"),
    ("r_midpoint_between_22_15", "l_midpoint_between_22_15", "right_ear"),
    ("r_bottom_connecting_point_of_ear_lobe", "l_bottom_connecting_point_of_ear_lobe", "right_ear"),
    ("r_top_connecting_point_of_helix", "l_top_connecting_point_of_helix", "right_ear"),
    ("r_point_2_of_inner_helix", "l_point_8_of_inner_helix", "right_ear"),
    # 272-280: left_iris
    ("l_center_of_iris", "r_center_of_iris", "left_iris"),
    ("l_border_of_iris_3", "r_border_of_iris_9", "left_iris"),
    ("l_border_of_iris_midpoint_1", "r_border_of_iris_midpoint_4", "left_iris"),
    ("l_border_of_iris_12", "r_border_of_iris_12", "left_iris"),
    ("l_border_of_iris_midpoint_4", "r_border_of_iris_midpoint_1", "left_iris"),
    ("l_border_of_iris_9", "r_border_of_iris_3", "left_iris"),
    ("l_border_of_iris_midpoint_3", "r_border_of_iris_midpoint_2", "left_iris"),
    ("l_border_of_iris_6", "r_border_of_iris_6", "left_iris"),
    ("l_border_of_iris_midpoint_2", "r_border_of_iris_midpoint_3", "left_iris"),
    # 281-289: right_iris
    ("r_center_of_iris", "l_center_of_iris", "right_iris"),
    ("r_border_of_iris_3", "l_border_of_iris_9", "right_iris"),
    ("r_border_of_iris_midpoint_1", "l_border_of_iris_midpoint_4", "right_iris"),
    ("r_border_of_iris_12", "l_border_of_iris_12", "right_iris"),
    ("r_border_of_iris_midpoint_4", "l_border_of_iris_midpoint_1", "right_iris"),
    ("r_border_of_iris_9", "l_border_of_iris_3", "right_iris"),
    ("r_border_of_iris_midpoint_3", "l_border_of_iris_midpoint_2", "right_iris"),
    ("r_border_of_iris_6", "l_border_of_iris_6", "right_iris"),
    ("r_border_of_iris_midpoint_2", "l_border_of_iris_midpoint_3", "right_iris"),
    # 290-298: left_pupil
    ("l_center_of_pupil", "r_center_of_pupil", "left_pupil"),
    ("l_border_of_pupil_3", "r_border_of_pupil_9", "left_pupil"),
    ("l_border_of_pupil_midpoint_1", "r_border_of_pupil_midpoint_4", "left_pupil"),
    ("l_border_of_pupil_12", "r_border_of_pupil_12", "left_pupil"),
    ("l_border_of_pupil_midpoint_4", "r_border_of_pupil_midpoint_1", "left_pupil"),
    ("l_border_of_pupil_9", "r_border_of_pupil_3", "left_pupil"),
    ("l_border_of_pupil_midpoint_3", "r_border_of_pupil_midpoint_2", "left_pupil"),
    ("l_border_of_pupil_6", "r_border_of_pupil_6", "left_pupil"),
    ("l_border_of_pupil_midpoint_2", "r_border_of_pupil_midpoint_3", "left_pupil"),
    # 299-307: right_pupil
    ("r_center_of_pupil", "l_center_of_pupil", "right_pupil"),
    ("r_border_of_pupil_3", "l_border_of_pupil_9", "right_pupil"),
    ("r_border_of_pupil_midpoint_1", "l_border_of_pupil_midpoint_4", "right_pupil"),
    ("r_border_of_pupil_12", "l_border_of_pupil_12", "right_pupil"),
    ("r_border_of_pupil_midpoint_4", "l_border_of_pupil_midpoint_1", "right_pupil"),
    ("r_border_of_pupil_9", "l_border_of_pupil_3", "right_pupil"),
    ("r_border_of_pupil_midpoint_3", "l_border_of_pupil_midpoint_2", "right_pupil"),
    ("r_border_of_pupil_6", "l_border_of_pupil_6", "right_pupil"),
    ("r_border_of_pupil_midpoint_2", "l_border_of_pupil_midpoint_3", "right_pupil"),
)

GOLIATH_FACE = _layout_from_table(
    "goliath_face",
    "Sapiens pose (Goliath 308 keypoints), face subset: Goliath indices 70-307 in order.",
    _GOLIATH_FACE_TABLE,
)

# Five face points, "left" = image-left: the heads face the camera, so the image-left eye is the subject's
# right eye. The order of ArcFace's alignment template.
_FIVE_POINTS_TABLE: tuple[tuple[str, str, str], ...] = (
    ("left_eye", "right_eye", "right_eye"),
    ("right_eye", "left_eye", "left_eye"),
    ("nose", "", "nose"),
    ("mouth_left", "mouth_right", "outer_lips"),
    ("mouth_right", "mouth_left", "outer_lips"),
)
# The synthetic videos' ground truth (tasks/synthetic.py: KEYPOINT_NAMES).
TRUTH_5 = _layout_from_table(
    "truth_5", "Ground truth of the generated test videos (not a model): eyes, nose tip, mouth corners.",
    _FIVE_POINTS_TABLE,
)
# RetinaFace's five landmarks as facexlib returns them (the `detector` keypoint backend); insightface aligns
# ArcFace with the same detector's points.
DETECTOR_5 = _layout_from_table(
    "retinaface_5",
    "The face detector's five landmarks (RetinaFace): eyes, nose tip, mouth corners; not a keypoint model.",
    _FIVE_POINTS_TABLE,
)

KEYPOINT_LAYOUTS: dict[str, KeypointLayout] = {layout.name: layout for layout in (GOLIATH_FACE, TRUTH_5, DETECTOR_5)}

# ArcFace's five alignment points, in its order (image-left eye, image-right eye, nose tip, image-left and
# image-right mouth corners), from each layout: "region:NAME" averages a region's points, else a point's name.
# The subject's right eye is on the image's left. Samples carry the detector's own five points
# (`ClipSample.landmarks`), which is what ArcFace aligns with; this derivation serves samples without them.
_ARCFACE_SOURCES: dict[str, tuple[str, ...]] = {
    TRUTH_5.name: TRUTH_5.names,
    DETECTOR_5.name: DETECTOR_5.names,
    GOLIATH_FACE.name: ("region:right_eye", "region:left_eye", "tip_of_nose", "r_outer_corner_of_mouth",
                        "l_outer_corner_of_mouth"),
}


def arcface_points(keypoints: np.ndarray, layout: KeypointLayout) -> np.ndarray:
    """(..., K, 3) keypoints of `layout` -> (..., 5, 2) float32 ArcFace alignment points."""
    keypoints = np.asarray(keypoints, np.float32)
    points = []
    for source in _ARCFACE_SOURCES[layout.name]:
        if source.startswith("region:"):
            rows = [i for i, region in enumerate(layout.regions) if region == source.removeprefix("region:")]
        else:
            rows = [layout.names.index(source)]
        points.append(keypoints[..., rows, :2].mean(axis=-2))
    return np.stack(points, axis=-2)


# ---------------------------------------------------------------------------------------------
# Segmentation label maps


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


# ---------------------------------------------------------------------------------------------
# Sapiens sizes


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


# ---------------------------------------------------------------------------------------------
# Stage configs


class RuntimeConfig(Spec):
    """Where and in what batches a model runs."""

    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="'auto': CUDA when the worker sees a GPU, else the CPU."
    )
    batch_size: int = Field(8, ge=1, le=4096, description="Images per forward pass.")
    cpus: float = Field(0.25, ge=0, description="CPUs Ray reserves for the model's actor: enough for a GPU "
                        "model or the truth backend; give a model that runs on the CPU more.")
    gpus: float = Field(0.0, ge=0, description="GPUs Ray gives the model's actor (fractions share one GPU).")
    replicas: int = Field(1, ge=1, le=1024, description="Actors running this model (e.g. one per GPU).")

    @model_validator(mode="after")
    def _device_matches_gpus(self) -> RuntimeConfig:
        if self.device == "cuda" and self.gpus == 0:
            raise ValueError("device 'cuda' needs gpus > 0, or the scheduler gives the worker no GPU")
        if self.device == "cpu" and self.gpus > 0:
            raise ValueError("device 'cpu' reserves no GPU: set gpus to 0")
        return self

    @property
    def resources(self) -> Resources:
        return Resources(cpus=self.cpus, gpus=self.gpus)


class FaceDetectionConfig(Spec):
    """Face detection on whole frames."""

    backend: Literal["retinaface_resnet50", "retinaface_mobile0.25", "truth"] = Field(
        "retinaface_resnet50",
        description="facexlib RetinaFace network, or 'truth': the exact boxes of generated test videos.",
    )
    weights_dir: str | None = Field(
        None,
        description="Folder holding the facexlib weights under their official names "
        "(detection_Resnet50_Final.pth, detection_mobilenet0.25_Final.pth).",
    )
    allow_download: bool = Field(
        False, description="Let facexlib download missing weights into `weights_dir` (needs internet)."
    )
    max_side: int = Field(
        640, ge=32, le=8192,
        description="The detector sees a copy of each frame shrunk (area averaging) so that its longer side is at "
        "most this; boxes and landmarks are mapped back to the frame. RetinaFace's anchors reach 512 px, so a "
        "close-up face at HD resolution would come back as several boxes; 640 is insightface's detection size.",
    )
    score_threshold: float = Field(0.8, gt=0, lt=1, description="Detections scoring at or below this are dropped.")
    nms_threshold: float = Field(0.4, gt=0, le=1, description="IoU above which the weaker of two boxes is dropped.")
    runtime: RuntimeConfig = Field(default_factory=lambda: RuntimeConfig(batch_size=16))


class FaceCropConfig(Spec):
    """Following the main face through a clip, rejecting unusable clips, and cutting the square crop."""

    min_iou: float = Field(
        0.3, gt=0, lt=1, description="A detection continues the track when its IoU with the last box is at least this."
    )
    max_gap: int = Field(
        3, ge=0, description="Longest run of frames without a matching detection that is bridged by interpolation."
    )
    min_face_fraction: float = Field(
        0.08, ge=0, lt=1, description="Reject when the median face box side is below this fraction of the frame's "
        "shorter side."
    )
    similar_face_ratio: float = Field(
        0.5, gt=0, le=1, description="Another face with at least this fraction of the main face's area competes "
        "with it."
    )
    max_crowded_fraction: float = Field(
        0.1, ge=0, le=1, description="Reject when more than this fraction of frames show a competing face."
    )
    max_outside_fraction: float = Field(
        0.1, ge=0, lt=1, description="Reject when more than this fraction of the face box lies outside the frame."
    )
    smoothing_sigma: float = Field(
        2.0, ge=0, description="Gaussian smoothing of the face box over time, in frames (0: none). Zero-phase, so "
        "the crop does not lag the head."
    )
    margin: float = Field(
        0.5, ge=0, le=3, description="Crop side = longer face-box side x (1 + 2 x margin)."
    )
    shift_y: float = Field(
        0.1, ge=-1, le=1, description="Crop centre moves up by this fraction of the face-box height (hair and hats "
        "sit above the face box)."
    )
    size: int = Field(512, ge=16, le=4096, description="Output crops are size x size pixels.")
    max_upscale: float = Field(
        1.5, ge=1, description="Reject a clip whose crop would be enlarged from the source by more than this "
        "factor (`source_px_per_output_px` below 1 / max_upscale): the crop would hold less detail than its size "
        "claims."
    )


class KeypointConfig(Spec):
    """Face keypoints on the face crops."""

    backend: Literal["sapiens", "detector", "truth"] = Field(
        "sapiens", description="Sapiens pose (Goliath face points); 'detector': the face detector's 5 landmarks "
        "(no keypoint model, e.g. to inspect crops, masks and pairs before running Sapiens); or 'truth': the 5 "
        "exact points of test videos."
    )
    checkpoint: str | None = Field(
        None, description="Sapiens pose checkpoint: the original .pth, a TorchScript .pt2 or a bfloat16 "
        "torch.export .pt2 (the format is read from the file, never from its name)."
    )
    arch: SapiensSize = Field("0.3b", description="Sapiens size of a .pth checkpoint.")
    trust_code: bool = Field(False, description="Load a TorchScript or torch.export `checkpoint`: these run "
                             "code when opened (a crafted one runs anything), so they are refused unless set; "
                             "the .pth release is weights only.")
    image_size: SapiensInput = Field((1024, 768), description="Network input (height, width); multiples of 16.")
    box_scale: float = Field(1.25, gt=0, description="Top-down box = the whole face crop x this, widened to 3:4 "
                             "(mmpose's bbox padding, as Sapiens' demo feeds a face crop).")
    blur_kernel: int = Field(11, ge=1, description="DARK heatmap modulation kernel (odd).")
    flip_test: bool = Field(False, description="Also run the mirrored crop and average the heatmaps (2x compute).")
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)

    @field_validator("blur_kernel")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError("must be odd")
        return value

    @model_validator(mode="after")
    def _checkpoint_given(self) -> KeypointConfig:
        if self.backend == "sapiens" and not self.checkpoint:
            raise ValueError("backend 'sapiens' needs `checkpoint` (a .pth or .pt2 file)")
        return self


class SegmentationConfig(Spec):
    """Attribute masks on the face crops."""

    backend: SegmentationBackend = Field(
        "bisenet", description="facexlib BiSeNet or ParseNet, Sapiens segmentation (Goliath 28 classes or the "
        "19-class face layout), or 'truth': the exact masks of generated test videos."
    )
    attributes: tuple[Attribute, ...] = Field(
        ("hair", "eyeglasses", "hat"), min_length=1, description="Attributes to mask; the backend must have them."
    )
    weights_dir: str | None = Field(
        None, description="facexlib backends: folder with parsing_bisenet.pth / parsing_parsenet.pth."
    )
    allow_download: bool = Field(False, description="facexlib backends: let facexlib download missing weights.")
    checkpoint: str | None = Field(None, description="Sapiens backends: a .pth or .pt2 segmentation checkpoint.")
    arch: SapiensSize = Field("1b", description="Sapiens size of a .pth checkpoint.")
    trust_code: bool = Field(False, description="Load a TorchScript or torch.export `checkpoint`: these run "
                             "code when opened (a crafted one runs anything), so they are refused unless set; "
                             "the .pth release is weights only.")
    image_size: SapiensInput = Field((1024, 768), description="Sapiens input (height, width); multiples of 16.")
    presence_min_area: float = Field(
        0.002, ge=0, lt=1, description="An attribute is present in a frame when its mask covers more than this "
        "fraction of the crop."
    )
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)

    @field_validator("attributes")
    @classmethod
    def _unique(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError("attributes must not repeat")
        return value

    @model_validator(mode="after")
    def _backend_has_attributes(self) -> SegmentationConfig:
        available = backend_attributes(self.backend)
        missing = [a for a in self.attributes if a not in available]
        if missing:
            raise ValueError(f"backend {self.backend!r} cannot produce {', '.join(missing)}; "
                             f"it produces {', '.join(available)}")
        if self.backend.startswith("sapiens") and not self.checkpoint:
            raise ValueError(f"backend {self.backend!r} needs `checkpoint` (a .pth or .pt2 file)")
        return self


_REGION_COLOURS: dict[str, RGB] = {
    "midline": (255, 255, 255),
    "right_brow": (255, 140, 0),
    "left_brow": (0, 140, 255),
    "right_eye": (255, 0, 0),
    "left_eye": (0, 0, 255),
    "right_iris": (255, 0, 255),
    "left_iris": (0, 255, 255),
    "right_pupil": (255, 255, 0),
    "left_pupil": (0, 255, 0),
    "nose": (200, 120, 255),
    "outer_lips": (255, 60, 120),
    "inner_lips": (120, 255, 60),
    "right_ear": (160, 80, 0),
    "left_ear": (0, 80, 160),
}


class PoseRenderSpec(Spec):
    """How keypoints become the pose guider's input frames (`tasks.perception.pose_render`).

    Each point with confidence >= `confidence_threshold` is a filled dot in its region's colour on
    black, drawn without anti-aliasing in layout order; the dot radius scales with the frame size.
    """

    confidence_threshold: float = Field(0.3, ge=0, description="Points with a lower confidence are not drawn.")
    point_radius: int = Field(2, ge=0, description="Dot radius in pixels at `reference_size` (0: one pixel).")
    reference_size: int = Field(512, ge=1, description="Output size at which `point_radius` applies; it scales "
                                "with the output's shorter side.")
    region_colours: dict[str, RGB] = Field(
        default_factory=lambda: dict(_REGION_COLOURS),
        description="RGB colour of each facial region; every region of a layout must have one.",
    )

    @field_validator("region_colours")
    @classmethod
    def _visible(cls, value: dict[str, RGB]) -> dict[str, RGB]:
        for region, colour in value.items():
            if not all(0 <= c <= 255 for c in colour) or not any(colour):
                raise ValueError(f"{region}: colour {colour} must be RGB in 0..255 and not black (the background)")
        return value


class PerceptionConfig(Spec):
    """The perception of a build: each clip's main face is tracked and cropped, then keypoints, pose frames and
    attribute masks are computed on the crops. The models run in Ray actors that load once per build."""

    detection: FaceDetectionConfig = Field(default_factory=FaceDetectionConfig)
    crop: FaceCropConfig = Field(default_factory=FaceCropConfig)
    keypoints: KeypointConfig = Field(description="Keypoint backend; 'sapiens' needs a checkpoint.")
    segmentation: SegmentationConfig = Field(default_factory=SegmentationConfig)
    pose_render: PoseRenderSpec = Field(default_factory=PoseRenderSpec)


class PerceptionMeta(Spec):
    """What perception adds to a sample's `meta.json`."""

    keypoint_layout: str = Field(description="Name of the keypoint layout (`KeypointLayout.name`).")
    crop_boxes: list[tuple[float, float, float, float]] = Field(
        description="Per frame: the square box (x1, y1, x2, y2, decoded-frame pixels) the crop was cut from.")
    source_px_per_output_px: float | None = Field(
        None, description="Median crop side in source pixels / crop size: below 1 the crop is enlarged from the "
        "source (None: written before it was recorded).")
    presence: dict[str, list[bool]] = Field(description="Per attribute, per frame: is the attribute visible.")
    provenance: dict[str, str] = Field(description="What produced each output (model and weights, or ground truth).")
