"""`durian sample`: animate a portrait with transferred attributes and write an mp4."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
import typer

from data_specs.model import FLAVOURS
from flows.cli.app import app

if TYPE_CHECKING:
    import torch

    from model.pipeline import DurianPipeline

logger = logging.getLogger(__name__)


class AttributeClass(str, Enum):
    """Attribute classes of the synthetic ground truth (`masks_<class>` arrays)."""

    hair = "hair"
    eyeglasses = "eyeglasses"
    hat = "hat"
    beard = "beard"


@dataclass
class SampleInputs:
    """Everything the pipeline needs, loaded from files."""

    portrait: np.ndarray  # (H, W, 3) uint8
    portrait_mask: np.ndarray  # (H, W)
    portrait_keypoints: np.ndarray  # (5, 2)
    attributes: list[np.ndarray]
    attribute_masks: list[np.ndarray]
    attribute_keypoints: list[np.ndarray]
    driving: np.ndarray  # (F, 5, 2)
    fps: float


def load_keypoints(path: Path) -> np.ndarray:
    """A .npy array, or the `keypoints` array of an .npz file."""
    if path.suffix == ".npz":
        with np.load(path) as data:
            return np.asarray(data["keypoints"], np.float32)
    return np.asarray(np.load(path), np.float32)


def _load_image(path: Path) -> np.ndarray:
    import PIL.Image

    return np.asarray(PIL.Image.open(path).convert("RGB"))


def _load_mask(path: Path) -> np.ndarray:
    import PIL.Image

    return np.asarray(PIL.Image.open(path).convert("L")) > 127


def read_video_frames(path: Path, indices: list[int]) -> list[np.ndarray]:
    """The frames `indices` of a square video, at its own size, as (H, W, 3) uint8."""
    from data_specs.video import DecodeConfig
    from tasks.media import iter_frames, probe_video

    probe = probe_video(str(path))
    frames: dict[int, np.ndarray] = {}
    for frame in iter_frames(str(path), probe, DecodeConfig(size=probe.width)):
        if frame.index in indices:
            frames[frame.index] = frame.image
        if frame.index >= max(indices):  # no need to decode the rest of the video
            break
    return [frames[i] for i in indices]


def inputs_from_truth(video: Path, attribute_class: AttributeClass, portrait_frame: int,
                      attribute_frame: int | None) -> SampleInputs:
    """Portrait and attribute frames, masks, keypoints and driving motion from a synthetic
    video and its ground truth (written by `durian make-videos`): a self-transfer demo."""
    from tasks.synthetic import load_truth

    try:
        truth = load_truth(video)
    except FileNotFoundError as err:
        raise typer.BadParameter(f"{video} has no ground truth beside it (make it with `durian make-videos`)") from err
    keypoints = np.asarray(truth["keypoints"], np.float32)
    masks = np.asarray(truth[f"masks_{attribute_class.value}"])
    attribute_frame = len(keypoints) // 2 if attribute_frame is None else attribute_frame
    portrait, attribute = read_video_frames(video, [portrait_frame, attribute_frame])
    return SampleInputs(portrait, masks[portrait_frame], keypoints[portrait_frame], [attribute],
                        [masks[attribute_frame]], [keypoints[attribute_frame]], keypoints, float(truth["fps"]))


def load_pipeline(model: Path | None, flavour: str, seed: int, device: torch.device) -> DurianPipeline:
    """A saved DurianPipeline folder, or an untrained one of `flavour` with random weights."""
    from data_specs.model import model_flavour
    from model.builders import random_components
    from model.pipeline import DurianPipeline

    if model is not None:
        return DurianPipeline.from_pretrained(str(model)).to(device)
    logger.warning("no --model given: using an UNTRAINED %s pipeline with random weights (seed %d); "
                   "the video only shows that the code path runs", flavour, seed)
    return random_components(model_flavour(flavour), seed=seed).pipeline().to(device)


@app.command("sample")
def sample(
    out: Annotated[Path, typer.Option(help="Output mp4 path.")] = Path("out.mp4"),
    model: Annotated[Path | None, typer.Option(
        help="A DurianPipeline.save_pretrained folder. Default: an untrained pipeline of --flavour.")] = None,
    flavour: Annotated[str, typer.Option(help=f"Flavour of the untrained default: {', '.join(FLAVOURS)}.")] = "tiny",
    from_truth: Annotated[Path | None, typer.Option(
        help="A synthetic video from `durian make-videos`: takes portrait, attribute, masks, keypoints and "
             "driving motion from it and its ground truth (replaces the inputs below).")] = None,
    attribute_class: Annotated[AttributeClass, typer.Option(
        help="With --from-truth: which attribute mask to use.")] = AttributeClass.hair,
    portrait_frame: Annotated[int, typer.Option(help="With --from-truth: the portrait frame.")] = 0,
    attribute_frame: Annotated[int | None, typer.Option(
        help="With --from-truth: the attribute frame (default: the middle one).")] = None,
    portrait: Annotated[Path | None, typer.Option(help="Portrait image.")] = None,
    portrait_mask: Annotated[Path | None, typer.Option(
        help="PNG mask of the portrait's own attribute region (white = attribute).")] = None,
    portrait_keypoints: Annotated[Path | None, typer.Option(
        help=".npy (5, 2) portrait keypoints: eyes, nose tip, mouth corners (ArcFace's order).")] = None,
    attribute: Annotated[list[Path] | None, typer.Option(
        help="Attribute image; repeat for composition (or two with --alpha).")] = None,
    attribute_mask: Annotated[list[Path] | None, typer.Option(help="PNG mask per --attribute.")] = None,
    attribute_keypoints: Annotated[list[Path] | None, typer.Option(
        help=".npy (5, 2) keypoints per --attribute, in the same order.")] = None,
    driving: Annotated[Path | None, typer.Option(
        help="Driving keypoints: .npy (F, 5, 2) or .npz with `keypoints` (F, 5, 2).")] = None,
    alpha: Annotated[float | None, typer.Option(
        help="Interpolate between exactly two attributes: 0 = first, 1 = second.")] = None,
    frames: Annotated[int | None, typer.Option(help="Frames to generate (default: all driving frames).")] = None,
    steps: Annotated[int, typer.Option(help="DDIM steps.")] = 25,
    guidance_scale: Annotated[float, typer.Option(help="Classifier-free guidance scale (1 disables).")] = 3.5,
    window: Annotated[int, typer.Option(help="Frames per denoiser call; longer clips use windows.")] = 16,
    overlap: Annotated[int, typer.Option(help="Frames shared by consecutive windows.")] = 4,
    size: Annotated[int | None, typer.Option(
        help="Square output size (default: the portrait's, rounded to the model's multiple).")] = None,
    fps: Annotated[float | None, typer.Option(help="Output frame rate (default: the truth's, else 25).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the noise (and of the untrained default model).")] = 0,
    device: Annotated[str | None, typer.Option(help="torch device (default: cuda if available).")] = None,
) -> None:
    """Animate a portrait wearing the attributes of other images, driven by keypoints; write an mp4.

    Either --from-truth VIDEO.truth.npz (synthetic demo: self-transfer within the
    video), or --portrait/--portrait-mask/--portrait-keypoints, one or more
    --attribute/--attribute-mask/--attribute-keypoints and --driving.
    """
    # 1. Inputs.
    if from_truth is not None:
        inputs = inputs_from_truth(from_truth, attribute_class, portrait_frame, attribute_frame)
    else:
        required = {"--portrait": portrait, "--portrait-mask": portrait_mask,
                    "--portrait-keypoints": portrait_keypoints, "--attribute": attribute,
                    "--attribute-mask": attribute_mask, "--attribute-keypoints": attribute_keypoints,
                    "--driving": driving}
        missing = [name for name, value in required.items() if not value]
        if missing:
            raise typer.BadParameter(f"missing {', '.join(missing)} (or use --from-truth)")
        if not len(attribute) == len(attribute_mask) == len(attribute_keypoints):
            raise typer.BadParameter("give one --attribute-mask and one --attribute-keypoints per --attribute")
        inputs = SampleInputs(
            _load_image(portrait), _load_mask(portrait_mask), np.load(portrait_keypoints).astype(np.float32),
            [_load_image(p) for p in attribute], [_load_mask(p) for p in attribute_mask],
            [np.load(p).astype(np.float32) for p in attribute_keypoints], load_keypoints(driving), 25.0)

    # 2. Pipeline (torch and diffusers load here, not when the CLI starts).
    import torch

    from tasks.media import write_video

    torch_device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    pipe = load_pipeline(model, flavour, seed, torch_device)

    # 3. Sample and write.
    result = pipe(
        inputs.portrait, inputs.portrait_mask, inputs.portrait_keypoints, inputs.attributes,
        inputs.attribute_masks, inputs.attribute_keypoints, inputs.driving, alpha=alpha, num_frames=frames,
        height=size, width=size, num_inference_steps=steps, guidance_scale=guidance_scale, window=window,
        overlap=overlap, generator=torch.Generator(device="cpu").manual_seed(seed),
    )
    frames = (np.clip(result.frames, 0, 1) * 255).round().astype(np.uint8)
    write_video(frames, out, fps or inputs.fps)
    typer.echo(f"wrote {len(result.frames)} frames to {out}")
