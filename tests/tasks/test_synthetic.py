"""The synthetic video generator: determinism, ground truth that matches the pixels, edge cases, datasets."""

from pathlib import Path

import numpy as np
import pytest

from data_specs.video import DecodeConfig
from tasks.media import iter_frames, probe_video
from tasks.synthetic import (
    ATTRIBUTES,
    BEARD,
    COLOURS,
    EYEGLASSES,
    HAIR,
    HAT,
    _render,
    attribute_colour,
    load_truth,
    plan_triplets,
    read_triplets,
    render_triplet,
    write_dataset,
    write_portrait_video,
    write_triplets,
)

SMALL = {"num_frames": 6, "width": 64, "height": 64}


def decoded(path: Path) -> np.ndarray:
    """(F, H, W, 3) frames at the video's display size: padded to a square by the decoder, then cut back."""
    probe = probe_video(str(path))
    size = max(probe.width, probe.height)
    frames = np.stack([f.image for f in iter_frames(str(path), probe, DecodeConfig(size=size, crop="pad"))])
    top, left = (size - probe.height) // 2, (size - probe.width) // 2
    return frames[:, top : top + probe.height, left : left + probe.width]


def test_same_seed_gives_same_video_and_truth(tmp_path: Path) -> None:
    first = write_portrait_video(tmp_path / "a.mp4", seed=3, **SMALL)
    second = write_portrait_video(tmp_path / "b.mp4", seed=3, **SMALL)
    other = write_portrait_video(tmp_path / "c.mp4", seed=4, **SMALL)
    assert first.read_bytes() == second.read_bytes()
    assert np.array_equal(decoded(first), decoded(second))
    truth_a, truth_b = load_truth(first), load_truth(second)
    assert truth_a.keys() == truth_b.keys()
    assert all(np.array_equal(truth_a[key], truth_b[key]) for key in truth_a)
    assert not np.array_equal(truth_a["boxes"], load_truth(other)["boxes"])


def test_truth_layout(portrait: Path) -> None:
    truth = load_truth(portrait)
    assert truth["fps"] == 24.0 and truth["size"] == (96, 64)
    assert truth["boxes"].shape == (24, 4) and truth["boxes"].dtype == np.float32
    assert truth["keypoints"].shape == (24, 5, 2) and truth["keypoints"].dtype == np.float32
    for name in ATTRIBUTES:
        assert truth[f"masks_{name}"].shape == (24, 64, 96) and truth[f"masks_{name}"].dtype == bool


def test_masks_are_non_empty_and_disjoint(portrait: Path) -> None:
    truth = load_truth(portrait)
    masks = [truth[f"masks_{name}"] for name in ATTRIBUTES]
    assert all(mask.any(axis=(1, 2)).all() for mask in masks)  # every attribute visible in every frame
    assert (np.sum(masks, axis=0) <= 1).all()


def test_masks_match_the_pixels(portrait: Path) -> None:
    frames = decoded(portrait)
    truth = load_truth(portrait)
    for name, label in (("hair", HAIR), ("eyeglasses", EYEGLASSES), ("hat", HAT), ("beard", BEARD)):
        pixels = frames[truth[f"masks_{name}"]].astype(float)
        assert np.abs(np.median(pixels, axis=0) - COLOURS[label]).max() < 25, name


def test_keypoints_lie_inside_the_box(portrait: Path) -> None:
    truth = load_truth(portrait)
    boxes, points = truth["boxes"][:, None], truth["keypoints"]
    assert ((points >= boxes[..., :2]) & (points <= boxes[..., 2:])).all()
    left_eye, right_eye, _, mouth_left, mouth_right = points.transpose(1, 0, 2)
    assert (left_eye[:, 0] < right_eye[:, 0]).all() and (mouth_left[:, 0] < mouth_right[:, 0]).all()


def test_box_follows_the_head(portrait: Path) -> None:
    truth = load_truth(portrait)
    centres_x = truth["boxes"][:, [0, 2]].mean(axis=1)
    assert np.ptp(centres_x) > 5  # the head moves
    hat = truth["masks_hat"]
    hat_x = np.array([np.nonzero(mask)[1].mean() for mask in hat])
    assert np.abs(hat_x - centres_x).max() < 2  # and the box moves with it


def test_attribute_subset_renders_only_those(tmp_path: Path) -> None:
    path = write_portrait_video(tmp_path / "bare.mp4", seed=1, attributes=("beard",), **SMALL)
    truth = load_truth(path)
    assert [key for key in truth if key.startswith("masks_")] == ["masks_beard"]
    frames = decoded(path)
    assert np.abs(frames.astype(int) - COLOURS[HAT]).sum(axis=3).min() > 60  # no hat anywhere


def test_rotated_video_truth_is_upright(edge_cases: dict[str, Path]) -> None:
    truth = load_truth(edge_cases["rotated"])
    assert truth["size"] == (64, 96)
    assert truth["masks_hat"].shape[1:] == (96, 64)
    rows = np.nonzero(truth["masks_hat"].any(axis=(0, 2)))[0]
    assert rows.max() < 96 / 2  # the hat is at the top


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown attributes"):
        write_portrait_video(tmp_path / "x.mp4", seed=0, attributes=("monocle",), **SMALL)
    with pytest.raises(ValueError, match="even frame size"):
        write_portrait_video(tmp_path / "x.mp4", seed=0, num_frames=2, width=63, height=64)


def test_edge_cases_are_all_written(edge_cases: dict[str, Path]) -> None:
    paths = edge_cases
    assert set(paths) == {
        "zero_byte", "truncated", "truncated_stream", "random_bytes", "audio_only", "one_frame",
        "variable_fps", "rotated", "large", "spaces and ünïcode name",
    }
    assert all(path.is_file() and path.stem == name for name, path in paths.items())
    assert paths["zero_byte"].stat().st_size == 0


def test_dataset_has_distinct_videos_and_attribute_subsets(tmp_path: Path) -> None:
    paths = write_dataset(tmp_path / "set", count=4, seed=10, **SMALL)
    assert [p.name for p in paths] == [f"portrait_{i:04d}.mp4" for i in range(4)]
    truths = [load_truth(p) for p in paths]
    attribute_sets = [{k.removeprefix("masks_") for k in t if k.startswith("masks_")} for t in truths]
    assert attribute_sets[0] == set(ATTRIBUTES)
    assert any(s != set(ATTRIBUTES) for s in attribute_sets[1:])
    assert len({t["boxes"].tobytes() for t in truths}) == 4
    # seed + index: video 1 of seed 10 is the video of seed 11
    subset = [a for a in ATTRIBUTES if a in attribute_sets[1]]
    again = write_portrait_video(tmp_path / "again.mp4", seed=11, attributes=subset, **SMALL)
    assert np.array_equal(load_truth(again)["boxes"], truths[1]["boxes"])

    fixed = write_dataset(tmp_path / "fixed", count=2, attributes=("hat",), **SMALL)
    assert all([k for k in load_truth(p) if k.startswith("masks_")] == ["masks_hat"] for p in fixed)


@pytest.mark.parametrize(("width", "height"), [(1280, 720), (720, 1280)])
def test_a_head_placed_high_and_small_in_an_hd_frame(tmp_path: Path, width: int, height: int) -> None:
    """head_centre and head_size put the face where real footage has it; the truth follows it to the pixel."""
    path = write_portrait_video(tmp_path / "hd.mp4", seed=2, num_frames=2, width=width, height=height,
                                head_centre=(0.3, 0.2), head_size=0.1, attributes=())
    truth = load_truth(path)
    assert truth["size"] == (width, height)
    boxes = truth["boxes"]
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    short = min(width, height)
    # The head drifts by a fraction of its own size around the placed centre; its unturned width is 10% of 720.
    assert np.abs(centres - (0.3 * width, 0.2 * height)).max() < 0.1 * short
    assert 0.07 * short <= (boxes[:, 2] - boxes[:, 0]).min() and (boxes[:, 2] - boxes[:, 0]).max() <= 0.1 * short + 1
    frames = decoded(path)
    for frame, box in zip(frames, boxes):  # skin inside the box's middle, background far outside
        cx, cy = np.round((box[:2] + box[2:]) / 2).astype(int)
        assert np.abs(frame[cy, cx + 2].astype(int) - frame[cy, cx - 2]).max() < 20
        assert np.abs(frame[cy, cx].astype(int) - frame[height - 5, width - 5]).max() > 30


@pytest.mark.parametrize("spec", plan_triplets(8, seed=5, num_frames=4, width=64, height=64),
                         ids=lambda spec: f"{spec.index}-{spec.attribute}")
def test_triplet_truth_is_a_outside_the_attribute_and_b_inside(spec) -> None:
    triplet = render_triplet(spec)
    region = triplet.region
    colour = attribute_colour(spec.seed_b, spec.attribute)
    assert region.any(axis=(1, 2)).all()  # the transferred attribute is seen in every frame
    assert np.array_equal(triplet.truth[~region], triplet.a[~region])  # A's identity and motion, pixel for pixel
    assert (triplet.truth[region] == colour).all()  # B's attribute rendering inside its region
    assert (triplet.b[triplet.truth_b[f"masks_{spec.attribute}"]] == colour).all()  # ... which is how B wears it
    assert not np.array_equal(triplet.truth, triplet.a)  # a real change: A's own colour differs, or A lacks it
    assert np.array_equal(triplet.truth_truth["keypoints"], triplet.truth_a["keypoints"])  # A's motion


def test_styled_attributes_keep_the_head_and_change_only_attribute_colours() -> None:
    plain, plain_truth = _render(11, 3, 48, 48, ATTRIBUTES)
    styled, styled_truth = _render(11, 3, 48, 48, ATTRIBUTES, styled=True)
    attributes = np.any([plain_truth[f"masks_{name}"] for name in ATTRIBUTES], axis=0)
    assert np.array_equal(plain[~attributes], styled[~attributes])
    assert not np.array_equal(plain[attributes], styled[attributes])
    assert (styled[plain_truth["masks_hat"]] == attribute_colour(11, "hat")).all()
    assert plain[plain_truth["masks_hat"]].tolist()[0] == list(COLOURS[HAT])


def test_written_triplets_read_back_and_redraw_exactly(tmp_path: Path) -> None:
    specs = write_triplets(tmp_path, 2, seed=3, num_frames=3, width=32, height=32, fps=12.0)
    assert read_triplets(tmp_path) == specs
    for spec in specs:
        for role in ("a", "b", "truth"):
            assert probe_video(str(spec.path(tmp_path, role))).num_frames == 3
        truth = load_truth(spec.path(tmp_path, "truth"))
        assert np.array_equal(truth[f"masks_{spec.attribute}"], render_triplet(spec).region)


def test_make_videos_writes_triplets_beside_the_videos(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from flows.cli.app import app

    result = CliRunner().invoke(app, ["make-videos", str(tmp_path), "--count", "1", "--frames", "2", "--size", "32",
                                      "--triplets", "2", "--styled"])
    assert result.exit_code == 0, result.output
    specs = read_triplets(tmp_path / "triplets")
    assert [s.attribute for s in specs] == ["hair", "eyeglasses"]
    assert {s.seed_a for s in specs}.isdisjoint({0})  # not the dataset's own videos
    assert all(spec.path(tmp_path / "triplets", "truth").is_file() for spec in specs)
