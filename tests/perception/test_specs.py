"""The perception contracts: keypoint layouts, label maps, and config validation before any work starts."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
from pydantic import ValidationError

from data_specs.perception import (
    ATTRIBUTES,
    BISENET_LABELS,
    DETECTOR_5,
    GOLIATH_FACE,
    KEYPOINT_LAYOUTS,
    LABEL_MAPS,
    PARSENET_LABELS,
    SAPIENS_FACE_LABELS,
    SAPIENS_GOLIATH_LABELS,
    TRUTH_5,
    FaceCropConfig,
    FaceDetectionConfig,
    KeypointConfig,
    KeypointLayout,
    LabelMap,
    PoseRenderSpec,
    RuntimeConfig,
    SegmentationConfig,
    arcface_points,
    backend_attributes,
)
from data_specs.sample import LANDMARKS, ClipMeta, ClipSample, decode_sample, encode_sample
from tasks.synthetic import KEYPOINT_NAMES

# Goliath index ranges of the face regions (design notes, section 4).
GOLIATH_RANGES = {
    "brows": (78, 95), "eyelids": (96, 177), "nose": (178, 187), "outer lips": (188, 203),
    "inner lips": (204, 219), "ears": (220, 271), "irises": (272, 289), "pupils": (290, 307),
}
REGION_NAME_PATTERN = {
    "brows": r"eyebrow", "eyelids": r"lash_line|eyelid_line|crease_line", "nose": r"nose|nostril",
    "outer lips": r"outer_lip|outer_corner_of_mouth|cupid_bow", "inner lips": r"inner_lip|inner_corner_of_mouth",
    "ears": r"helix|crus|antihelix|tragus|concha|ear_lobe|between_22_15", "irises": r"iris", "pupils": r"pupil",
}


def goliath_names(first: int, last: int) -> tuple[str, ...]:
    return GOLIATH_FACE.names[first - 70 : last - 69]


def side(name: str) -> str | None:
    """'l' or 'r' when a Goliath name marks the subject's side."""
    match = re.search(r"(?:^|_)([lr])(?:_|$)", name)
    return match.group(1) if match else None


def test_goliath_face_layout_has_the_238_face_points_in_order() -> None:
    assert GOLIATH_FACE.num_points == 238 and len(set(GOLIATH_FACE.names)) == 238
    assert GOLIATH_FACE.names[0] == "center_of_glabella" and GOLIATH_FACE.names[77 - 70] == "tip_of_chin"
    assert GOLIATH_FACE.names[-1] == "r_border_of_pupil_midpoint_2"
    for part, (first, last) in GOLIATH_RANGES.items():
        names = goliath_names(first, last)
        assert all(re.search(REGION_NAME_PATTERN[part], n) for n in names), part
    assert not any("jaw" in n or "contour" in n for n in GOLIATH_FACE.names)  # Goliath has no jaw line


def test_goliath_regions_name_the_subjects_side() -> None:
    for name, region in zip(GOLIATH_FACE.names, GOLIATH_FACE.regions):
        if region.startswith(("left_", "right_")):
            assert side(name) == region[0], (name, region)
        else:
            assert region in ("midline", "nose", "outer_lips", "inner_lips"), (name, region)


def test_flip_partners_swap_sides() -> None:
    for layout in KEYPOINT_LAYOUTS.values():
        for i, j in enumerate(layout.flip):
            assert layout.flip[j] == i
            if layout.regions[i].startswith("left_"):
                assert layout.regions[j] == "right_" + layout.regions[i].removeprefix("left_")
    for name, partner in zip(GOLIATH_FACE.names, GOLIATH_FACE.flip):
        expected = {"l": "r", "r": "l", None: None}[side(name)]
        assert side(GOLIATH_FACE.names[partner]) == expected, name
    assert GOLIATH_FACE.names[GOLIATH_FACE.flip[GOLIATH_FACE.names.index("l_center_of_iris")]] == "r_center_of_iris"
    assert GOLIATH_FACE.flip[0] == 0  # the glabella is on the midline


def test_layout_rejects_asymmetric_flip() -> None:
    with pytest.raises(ValidationError, match="symmetrically"):
        KeypointLayout(name="x", description="x", names=("a", "b", "c"), regions=("n", "n", "n"), flip=(1, 2, 0))


def test_truth_layout_matches_the_generator() -> None:
    assert TRUTH_5.names == KEYPOINT_NAMES
    assert "ground truth" in TRUTH_5.description.lower() and "not a model" in TRUTH_5.description


def test_the_detectors_five_points_are_arcfaces_points_in_order() -> None:
    """RetinaFace's landmarks (image-left eye first) are ArcFace's alignment points as they are."""
    assert KEYPOINT_LAYOUTS[DETECTOR_5.name] is DETECTOR_5 and DETECTOR_5.num_points == 5
    points = np.random.default_rng(0).uniform(0, 64, (3, 5, 3)).astype(np.float32)
    np.testing.assert_array_equal(arcface_points(points, DETECTOR_5), points[..., :2])
    assert DETECTOR_5.flip == (1, 0, 2, 4, 3)


def test_landmarks_travel_with_the_sample() -> None:
    frames = np.zeros((2, 16, 16, 3), np.uint8)
    meta = ClipMeta(video_id="v", clip_index=0, frame_indices=[0, 1], time_s=[0.0, 0.04], fps=25.0,
                    source_path="/v.mp4", content_sha256="0" * 64, config_hash="c", code_version="v",
                    source_size=(1280, 720))
    landmarks = np.random.default_rng(1).uniform(0, 16, (2, 5, 2)).astype(np.float32)
    sample = ClipSample(key="v_c00000", meta=meta, frames=frames, landmarks=landmarks)
    raw = encode_sample(sample, 90)
    assert LANDMARKS in raw and LANDMARKS in sample.field_names()
    decoded = decode_sample(raw)
    np.testing.assert_array_equal(decoded.landmarks, landmarks)
    assert decoded.meta.source_size == (1280, 720)
    with pytest.raises(ValueError, match=r"landmarks must be \(2, 5, 2\)"):
        encode_sample(ClipSample(key="k", meta=meta, frames=frames, landmarks=landmarks[:1]), 90)


@pytest.mark.parametrize(
    ("label_map", "count", "expected"),
    [
        (BISENET_LABELS, 19, {"eye_g": 6, "ear_r": 9, "hair": 17, "hat": 18}),
        (PARSENET_LABELS, 19, {"eye_g": 3, "hair": 13, "hat": 14, "ear_r": 15}),
        (SAPIENS_GOLIATH_LABELS, 28, {"Background": 0, "Hair": 3, "Tongue": 27}),
        (SAPIENS_FACE_LABELS, 19, {"Hair": 13, "Beard": 14, "Glasses": 16, "Headwear": 17, "Facewear": 18}),
    ],
)
def test_label_maps_match_the_published_class_lists(label_map: LabelMap, count: int, expected: dict) -> None:
    assert len(label_map.classes) == count
    for name, index in expected.items():
        assert label_map.classes[index] == name
    names = {"hair": ("hair", "Hair"), "eyeglasses": ("eye_g", "Glasses"), "hat": ("hat", "Headwear"),
             "beard": ("Beard",)}
    for attribute, indices in label_map.attributes.items():
        assert [label_map.classes[i] for i in indices] in ([n] for n in names[attribute])


def test_sapiens_goliath_drops_glasses_and_headwear() -> None:
    assert not any(re.search("eyeglass|headset|hat", c, re.I) for c in SAPIENS_GOLIATH_LABELS.classes)
    assert backend_attributes("sapiens_goliath") == ("hair",)
    assert backend_attributes("bisenet") == ("hair", "eyeglasses", "hat")
    assert backend_attributes("sapiens_face") == ATTRIBUTES == backend_attributes("truth")
    assert set(LABEL_MAPS) == {"bisenet", "parsenet", "sapiens_goliath", "sapiens_face"}


@pytest.mark.parametrize(("backend", "attribute"), [("bisenet", "beard"), ("parsenet", "beard"),
                                                    ("sapiens_goliath", "hat")])
def test_asking_a_backend_for_an_attribute_it_lacks_is_a_config_error(backend: str, attribute: str) -> None:
    with pytest.raises(ValidationError, match=f"cannot produce {attribute}"):
        SegmentationConfig(backend=backend, attributes=("hair", attribute), checkpoint="x.pth")


def test_configs_check_what_each_backend_needs() -> None:
    with pytest.raises(ValidationError, match="needs `checkpoint`"):
        KeypointConfig()
    with pytest.raises(ValidationError, match="needs `checkpoint`"):
        SegmentationConfig(backend="sapiens_face", attributes=("beard",))
    with pytest.raises(ValidationError, match="multiples of 16"):
        KeypointConfig(checkpoint="a.pth", image_size=(1000, 768))
    with pytest.raises(ValidationError, match="not repeat"):
        SegmentationConfig(attributes=("hair", "hair"))
    with pytest.raises(ValidationError, match="gpus > 0"):
        RuntimeConfig(device="cuda")
    with pytest.raises(ValidationError, match="extra"):
        FaceDetectionConfig(weight_dir="typo")
    assert KeypointConfig(backend="truth").checkpoint is None
    assert KeypointConfig(backend="detector").checkpoint is None  # the detector's landmarks need no weights
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        FaceCropConfig(max_upscale=0.5)
    assert RuntimeConfig(device="cuda", gpus=0.5).resources.gpus == 0.5


def test_render_spec_colours_every_region_distinctly_and_never_black() -> None:
    spec = PoseRenderSpec()
    for layout in KEYPOINT_LAYOUTS.values():
        assert set(layout.regions) <= set(spec.region_colours)
    assert len(set(spec.region_colours.values())) == len(spec.region_colours)
    with pytest.raises(ValidationError, match="not black"):
        PoseRenderSpec(region_colours={"nose": (0, 0, 0)})


def test_specs_and_package_import_without_torch() -> None:
    code = ("import sys, data_specs.perception, tasks.perception, tasks.perception.face_track, "
            "tasks.perception.truth, tasks.perception.processor, data_specs.pose_frames; print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
