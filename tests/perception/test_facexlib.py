"""facexlib RetinaFace, BiSeNet and ParseNet: random weights under the official file names, never a download."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from data_specs.perception import BISENET_LABELS, FaceDetectionConfig, SegmentationConfig
from data_specs.spec import RuntimeConfig
from tasks.perception import build_face_detector, build_segmenter
from tasks.perception.processor import attribute_presence
from tasks.perception.runtime import FACEXLIB_WEIGHTS

CPU = RuntimeConfig(device="cpu", batch_size=2)


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random weights of the four networks, saved as the official files are (detectors from DataParallel)."""
    from facexlib.detection.retinaface import RetinaFace
    from facexlib.parsing.bisenet import BiSeNet
    from facexlib.parsing.parsenet import ParseNet

    folder = tmp_path_factory.mktemp("facexlib_weights")
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's `pretrained` deprecation inside facexlib
        networks = {
            "retinaface_resnet50": RetinaFace("resnet50", device="cpu"),
            "retinaface_mobile0.25": RetinaFace("mobile0.25", device="cpu"),
            "bisenet": BiSeNet(num_class=19),
            "parsenet": ParseNet(in_size=512, out_size=512, parsing_ch=19),
        }
    for name, network in networks.items():
        prefix = "module." if name.startswith("retinaface") else ""
        state = {prefix + key: value for key, value in network.state_dict().items()}
        torch.save(state, folder / FACEXLIB_WEIGHTS[name][0])
    return folder


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("tried to download weights")

    import facexlib.utils.misc

    monkeypatch.setattr(facexlib.utils.misc, "download_url_to_file", refuse)


@pytest.mark.parametrize(("backend", "file_name"), [("retinaface_resnet50", "detection_Resnet50_Final.pth"),
                                                    ("retinaface_mobile0.25", "detection_mobilenet0.25_Final.pth")])
def test_retinaface_loads_local_weights_and_detects_in_batches(weights_dir: Path, backend: str,
                                                               file_name: str) -> None:
    saved = torch.load(weights_dir / file_name)
    # allow_download is on: a file already in place must still be used as it is.
    config = FaceDetectionConfig(backend=backend, weights_dir=str(weights_dir), allow_download=True,
                                 score_threshold=0.05, runtime=CPU)
    detector = build_face_detector(config)
    detector.setup()
    loaded = detector.model.state_dict()
    assert {"module." + key for key in loaded} == set(saved)
    for key, value in loaded.items():
        torch.testing.assert_close(value, saved["module." + key], rtol=0, atol=0)
    frames = np.random.default_rng(0).integers(0, 255, (3, 96, 128, 3), dtype=np.uint8)
    detections = detector.detect(frames)
    assert len(detections) == 3
    for found in detections:
        assert found.dtype == np.float32 and found.ndim == 2 and found.shape[1] == 15
        assert (np.diff(found[:, 4]) <= 0).all() and (found[:, 4] > 0.05).all()  # best first, above threshold
    assert any(len(found) for found in detections)  # random weights still fire at a low threshold


@pytest.mark.parametrize("backend", ["retinaface_mobile0.25", "bisenet"])
def test_missing_weights_name_the_file_and_where_it_goes(tmp_path: Path, backend: str) -> None:
    file_name, url = FACEXLIB_WEIGHTS[backend]
    if backend == "bisenet":
        component = build_segmenter(SegmentationConfig(weights_dir=str(tmp_path), runtime=CPU))
    else:
        component = build_face_detector(FaceDetectionConfig(backend=backend, weights_dir=str(tmp_path), runtime=CPU))
    with pytest.raises(FileNotFoundError) as error:
        component.setup()
    assert file_name in str(error.value) and str(tmp_path) in str(error.value) and url in str(error.value)
    assert "allow_download" in str(error.value)


@pytest.mark.parametrize("backend", ["bisenet", "parsenet"])
def test_face_parsers_load_local_weights_and_give_one_mask_per_attribute(weights_dir: Path, backend: str) -> None:
    config = SegmentationConfig(backend=backend, attributes=("hat", "hair"), weights_dir=str(weights_dir),
                                runtime=CPU)
    segmenter = build_segmenter(config)
    segmenter.setup()
    saved = torch.load(weights_dir / FACEXLIB_WEIGHTS[backend][0])
    assert segmenter.model.state_dict().keys() == saved.keys()
    segmenter.input_size = 128  # fully convolutional: a smaller input keeps the test fast on a CPU
    crops = np.random.default_rng(0).integers(0, 255, (3, 40, 40, 3), dtype=np.uint8)
    masks = segmenter(crops)
    assert list(masks) == ["hat", "hair"]
    assert all(m.shape == (3, 40, 40) and m.dtype == bool for m in masks.values())


def test_label_map_turns_winning_classes_into_masks(weights_dir: Path) -> None:
    """Logits where hair wins the left half and eyeglasses the top right: masks follow at crop size."""
    segmenter = build_segmenter(SegmentationConfig(attributes=("hair", "eyeglasses", "hat"),
                                                   weights_dir=str(weights_dir), runtime=CPU))
    logits = torch.zeros(2, 19, 8, 8)
    logits[:, BISENET_LABELS.attributes["hair"][0], :, :4] = 5
    logits[:, BISENET_LABELS.attributes["eyeglasses"][0], :4, 4:] = 5
    segmenter.model = torch.nn.Identity()  # set up, without loading weights
    segmenter._logits = lambda crops: logits[: len(crops)]
    masks = segmenter(np.zeros((2, 32, 32, 3), np.uint8))
    # Bilinear upsampling moves the class borders by up to a source pixel (4 crop pixels).
    assert masks["hair"][:, :, :12].all() and not masks["hair"][:, :, 20:].any()
    assert masks["eyeglasses"][:, :12, 20:].all() and not masks["eyeglasses"][:, 20:].any()
    assert not masks["hat"].any()
    presence = attribute_presence(masks, min_area=0.01)
    assert presence["hair"].all() and presence["eyeglasses"].all() and not presence["hat"].any()
    assert not attribute_presence(masks, min_area=0.6)["hair"].any()  # hair covers half of each crop


def test_retinaface_on_the_bounded_copy_of_an_hd_frame_answers_in_frame_pixels(weights_dir: Path) -> None:
    """The real network (random weights) on a 16:9 HD frame's 640 x 360 copy: its priors tile the copy's own
    width and height, and the detections come back spread over the whole 1280 x 720 frame."""
    from tasks.perception.face_track import detector_view, to_frame_detections

    config = FaceDetectionConfig(backend="retinaface_mobile0.25", weights_dir=str(weights_dir),
                                 score_threshold=0.05, nms_threshold=0.9, runtime=CPU)
    detector = build_face_detector(config)
    detector.setup()
    frames = np.random.default_rng(1).integers(0, 255, (1, 720, 1280, 3), dtype=np.uint8)
    view, scale = detector_view(frames, config.max_side)
    assert view.shape[1:3] == (360, 640)
    (detections,) = to_frame_detections(detector.detect(view), scale)
    assert len(detections) > 10
    centres = (detections[:, :2] + detections[:, 2:4]) / 2
    assert centres[:, 0].max() > 0.8 * 1280 and centres[:, 1].max() > 0.8 * 720  # in frame pixels, both axes
    assert centres[:, 0].max() < 1.1 * 1280 and centres[:, 1].max() < 1.1 * 720
