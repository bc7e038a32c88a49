"""Keypoint layouts: the meaning of each row of a (N, K, 3) keypoint array, and ArcFace's five points from each.

A `KeypointLayout` names the points a keypoint backend returns, the facial region of each point and
its mirror partner. Sapiens returns `GOLIATH_FACE` (the 238 face points of Goliath's 308); the
`detector` backend returns the face detector's five landmarks (`DETECTOR_5`); the ground-truth
backend of the synthetic videos returns `TRUTH_5`. Keypoint arrays carry no layout of their own:
whoever stores them stores the layout name with them, and the renderer draws whichever layout it is given.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field, model_validator

from data_specs.spec import Spec


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
