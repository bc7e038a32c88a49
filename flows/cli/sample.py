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
    driving: np.ndarray  # (F, K, 2) or (F, K, 3) with a confidence
    fps: float


VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")


def driving_keypoints_from_video(video: Path, build_config: Path, max_frames: int | None = None
                                 ) -> tuple[np.ndarray, str, float]:
    """The main face's keypoints in a driving video, found as the dataset found its own: the perception of the
    dataset's build config (its decode settings, face detector, track and crop, and keypoint backend) run here,
    in-process, on the video as one clip.

    Returns (F, K, 3) keypoints (x, y, confidence in face-crop pixels, as the dataset's), the name of their
    layout, and the video's frame rate. A video the dataset would reject (no face, several faces...) is a
    `typer.BadParameter` saying why.
    """
    import itertools

    from data_specs.config import BuildConfig, ConfigError
    from data_specs.sample import ClipMeta, ClipSample
    from tasks.build_processors import LocalModel
    from tasks.errors import DataError
    from tasks.media import iter_frames, probe_video
    from tasks.perception.processor import PerceptionProcessor

    try:
        config = BuildConfig.from_yaml(build_config)
    except ConfigError as err:
        raise typer.BadParameter(str(err)) from err
    if config.perception is None:
        raise typer.BadParameter(f"{build_config} configures no perception: give the build config of the dataset "
                                 "the model was trained on")
    try:
        probe = probe_video(str(video))
        frames = list(itertools.islice(iter_frames(str(video), probe, config.decode, source_size=True), max_frames))
        fps = config.decode.fps or probe.fps
        meta = ClipMeta(video_id=video.stem, clip_index=0, frame_indices=[f.index for f in frames],
                        time_s=[f.time_s for f in frames], fps=fps, source_path=str(video),
                        content_sha256="0" * 64, config_hash="driving", code_version="driving",
                        source_size=(probe.width, probe.height))
        perception = PerceptionProcessor(config.perception, config.decode)
        perception.setup({spec.name: LocalModel(spec) for spec in perception.models})
        (perceived,) = perception(ClipSample(key=f"{video.stem}_driving", meta=meta,
                                             frames=np.stack([f.image for f in frames])))
    except DataError as err:
        raise typer.BadParameter(f"driving video {video}: {err}") from err
    return perceived.keypoints, perception.layout.name, fps


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
        help="Driving motion: keypoints in the model's trained layout, .npy (F, K, 2|3) or .npz with `keypoints`; "
             "or a video, whose keypoints --perception-config finds.")] = None,
    perception_config: Annotated[Path | None, typer.Option(
        help="With a --driving video: the build config (YAML) of the dataset the model was trained on; its "
             "perception (detector, crop, keypoint backend) finds the driving keypoints as it found the "
             "dataset's.")] = None,
    alpha: Annotated[float | None, typer.Option(
        help="Interpolate between exactly two attributes: 0 = first, 1 = second.")] = None,
    frames: Annotated[int | None, typer.Option(help="Frames to generate (default: all driving frames).")] = None,
    steps: Annotated[int, typer.Option(help="DDIM steps.")] = 25,
    guidance_scale: Annotated[float, typer.Option(help="Classifier-free guidance scale (1 disables).")] = 3.5,
    window: Annotated[int | None, typer.Option(
        help="Frames per denoiser call; longer clips use windows (default: the model's trained clip length).")] = None,
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
    --attribute/--attribute-mask/--attribute-keypoints and --driving (keypoints, or a video with
    --perception-config).
    """
    # 1. Inputs.
    driving_layout = None  # the layout of keypoints found in a driving video
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
        driving_fps = 25.0
        if driving.suffix.lower() in VIDEO_SUFFIXES:
            if perception_config is None:
                raise typer.BadParameter("a --driving video needs --perception-config (the dataset's build config)")
            driving_points, driving_layout, driving_fps = driving_keypoints_from_video(driving, perception_config,
                                                                                       frames)
        else:
            driving_points = load_keypoints(driving)
        inputs = SampleInputs(
            _load_image(portrait), _load_mask(portrait_mask), np.load(portrait_keypoints).astype(np.float32),
            [_load_image(p) for p in attribute], [_load_mask(p) for p in attribute_mask],
            [np.load(p).astype(np.float32) for p in attribute_keypoints], driving_points, driving_fps)

    # 2. Pipeline (torch and diffusers load here, not when the CLI starts).
    import torch

    from tasks.media import write_video

    torch_device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    pipe = load_pipeline(model, flavour, seed, torch_device)
    if driving_layout is not None and pipe.trained_layout is not None and pipe.trained_layout.name != driving_layout:
        raise typer.BadParameter(f"--perception-config finds {driving_layout!r} keypoints; the model was trained on "
                                 f"{pipe.trained_layout.name!r}: give the build config of its dataset")

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
