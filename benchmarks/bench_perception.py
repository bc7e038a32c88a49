"""Perception throughput: each model and CPU step of the perception processor alone, and the build with it on and off.

Measured in one run, on the same generated portrait videos decoded as the build decodes them
(512 x 512 at `--fps`), with random weights written in the official file layouts and loaded
by the pipeline's own components (`tasks.perception.build_*`): the smallest real architectures
at their real input sizes.

1. Each step of `PerceptionProcessor` timed alone, after one warm-up batch, in frames/s:
   - detection: RetinaFace mobile0.25 on the 512 x 512 frames (`detect`: facexlib's
     pre-processing, network, box decoding and NMS);
   - track + crop: `track_main_face`, `crop_boxes`, `crop_clip` and `to_crop_coords`, clip by
     clip, on the ground-truth detections (random detector weights find no trackable face);
   - keypoints: Sapiens 0.3b pose on the 512 x 512 face crops, warped to the network's
     1024 x 768 input (warp, network, DARK heatmap decoding), from an mmpose-style `.pth` whose
     keys are the official mmpretrain names, read by `load_sapiens`;
   - pose render: `render_pose_frames` of the 238 Goliath face points, all confident (every
     point drawn: the slowest case);
   - masks: BiSeNet on the crops at 512 x 512 (resize, network, upsampling, argmax, masks).
   For a model also: its FLOPs per frame (`torch.utils.flop_counter.FlopCounterMode` over the
   warm-up call), the GFLOP/s it achieves, their ratio to the physical limit (the GFLOP/s of a
   large `torch.matmul`, measured just before and just after the timed call, since a shared
   machine's speed drifts within a run) and the share of the call spent in the network's forward.
2. The build, `python -m flows.cli build-dataset` (its own ephemeral Prefect and local Ray), over
   the same videos with perception off and on: frames/s over the whole process and over the
   unit work (`work_span_s` of the summary the command prints), and the time the model actors
   took to set up. Perception on uses the ground-truth detector (random detector weights find
   no trackable face), ground-truth keypoints (Sapiens takes tens of seconds a frame on a CPU)
   and BiSeNet masks with random weights (`--flow-masks truth`: ground-truth masks).

3. Cropping from the source picture (issue 17, `--source-crop-only` runs this part alone): one
   generated 1920 x 1080 talking head, decoded as a build without perception does (the 512 x 512
   centre square) and as perception does (the source's 1920 x 1080), then the CPU steps between
   decoding and the models: the detector's bounded copy (`detector_view`, 640 px; source path
   only) and the face crop to 512 x 512 (`crop_boxes` + `crop_clip` on the truth track). In
   frames/s and ms per frame (fastest of 3 runs), with the bytes a 16-frame clip holds and the
   crop's side in the pixels of the frame it is cut from per output pixel (below 1: enlarged).

`--device cuda` measures the GPU goals of issue 8 on one GPU: the models run batched on the
GPU, Sapiens in bfloat16 from a `torch.export` `.pt2` (its released bfloat16 format; written
from the same random weights), RetinaFace and BiSeNet in float32 (the pipeline has no other
precision for them), the matmul peer in bfloat16; the build runs Sapiens keypoints and BiSeNet
masks on the GPU (detection stays ground truth) while nvidia-smi is sampled, and reports how
busy the GPU was during the unit work. Goals: Sapiens 0.3b bf16 at 1024 x 768 >= 150 frames/s
on one H200; GPU busy >= 80 %.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_perception.py --markdown
    PYTHONPATH=. .venv/bin/python benchmarks/bench_perception.py --device cuda --markdown
    PYTHONPATH=. .venv/bin/python benchmarks/bench_perception.py --source-crop-only --markdown
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from report_table import format_table
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from data_specs.perception import (
    GOLIATH_FACE,
    GOLIATH_NUM_KEYPOINTS,
    FaceCropConfig,
    FaceDetectionConfig,
    KeypointConfig,
    PoseRenderSpec,
    RuntimeConfig,
    SegmentationConfig,
)
from data_specs.pose_frames import render_pose_frames
from data_specs.video import DecodeConfig
from tasks.media import iter_frames, probe_video
from tasks.perception import build_face_detector, build_keypoint_estimator, build_segmenter
from tasks.perception.face_track import (
    crop_boxes,
    crop_clip,
    detector_view,
    source_px_per_output_px,
    to_crop_coords,
    track_main_face,
)
from tasks.perception.runtime import FACEXLIB_WEIGHTS
from tasks.perception.sapiens import build_sapiens, load_sapiens, sapiens_key
from tasks.perception.truth import frame_refs
from tasks.synthetic import write_dataset, write_portrait_video

FRAME_SIZE = 512  # decoded frames, and the face crops (FaceCropConfig's default size)
SAPIENS_ARCH = "0.3b"
SAPIENS_INPUT = (1024, 768)  # (height, width) of Sapiens pose
MASK_ATTRIBUTES = ("hair", "eyeglasses", "hat")  # what BiSeNet's label map has

# Per device: batch sizes and frames timed per model, and the number of videos.
DEFAULTS: dict[str, dict[str, int]] = {
    "cpu": {"detect_batch": 8, "pose_batch": 1, "mask_batch": 8,
            "detect_frames": 32, "pose_frames": 2, "mask_frames": 16, "videos": 2},
    "cuda": {"detect_batch": 32, "pose_batch": 32, "mask_batch": 32,
             "detect_frames": 512, "pose_frames": 512, "mask_frames": 512, "videos": 16},
}

# This module's Sapiens backbone names -> the official mmpretrain names: `sapiens.BACKBONE_KEY_RENAMES` reversed.
OFFICIAL_BACKBONE_NAMES: tuple[tuple[str, str], ...] = (
    (r"^patch_embed\.proj\.", "patch_embed.projection."),
    (r"^blocks\.(\d+)\.norm1\.", r"layers.\1.ln1."),
    (r"^blocks\.(\d+)\.norm2\.", r"layers.\1.ln2."),
    (r"^blocks\.(\d+)\.mlp\.fc1\.", r"layers.\1.ffn.layers.0.0."),
    (r"^blocks\.(\d+)\.mlp\.fc2\.", r"layers.\1.ffn.layers.1."),
    (r"^blocks\.(\d+)\.attn\.", r"layers.\1.attn."),
    (r"^norm\.", "ln1."),
)


STARTED = time.perf_counter()


def log(message: str) -> None:
    """Progress on stderr, stamped with the seconds since the start."""
    print(f"[{time.perf_counter() - STARTED:6.1f} s] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Inputs: videos, decoded clips, weight files


@dataclass(frozen=True)
class Clip:
    """`clip_length` decoded frames of one video and their ground-truth detections."""

    frames: np.ndarray  # (F, 512, 512, 3) uint8
    detections: list[np.ndarray]  # one (k, 15) array per frame, as detectors return them


def decode_clips(videos: list[Path], decode: DecodeConfig, clip_length: int) -> list[Clip]:
    """The videos decoded as the build decodes them, cut into clips, with the truth backend's detections."""
    detector = build_face_detector(FaceDetectionConfig(backend="truth"))
    detector.setup()
    clips = []
    for video in videos:
        frames = list(iter_frames(str(video), probe_video(str(video)), decode))
        for start in range(0, len(frames) - clip_length + 1, clip_length):
            part = frames[start : start + clip_length]
            images = np.stack([frame.image for frame in part])
            times = [frame.time_s for frame in part]
            refs = frame_refs(str(video), times, (decode.size, decode.size), decode.crop)
            clips.append(Clip(images, detector.detect(images, refs)))
    return clips


def official_key(key: str) -> str:
    """The official (mmpretrain/mmpose) checkpoint name of one of this module's Sapiens keys."""
    if not key.startswith("backbone."):
        return key
    name = key.removeprefix("backbone.")
    for pattern, replacement in OFFICIAL_BACKBONE_NAMES:
        name = re.sub(pattern, replacement, name)
    return f"backbone.{name}"


def write_sapiens_pth(path: Path) -> None:
    """A random Sapiens 0.3b pose checkpoint as mmpose saves it: {"meta", "state_dict"} under official keys.

    ViT-style initialisation (normal(0, 0.02) matrices, zero biases, unit LayerNorm scales), drawn
    directly rather than by timm's slower initialisers.
    """
    with torch.device("meta"):
        shapes = {key: value.shape for key, value in
                  build_sapiens("pose", SAPIENS_ARCH, SAPIENS_INPUT, GOLIATH_NUM_KEYPOINTS).state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    state = {}
    for key, shape in shapes.items():
        official = official_key(key)
        if sapiens_key(official) != key:
            raise RuntimeError(f"{official} (written for {key}) is read back as {sapiens_key(official)}")
        if len(shape) > 1:
            state[official] = torch.randn(shape, generator=generator) * 0.02
        else:
            state[official] = torch.ones(shape) if key.endswith("weight") else torch.zeros(shape)
    torch.save({"meta": {"epoch": 210}, "state_dict": state}, path)


def write_sapiens_bfloat16_export(pth: Path, path: Path, batch: int, device: torch.device) -> None:
    """The `.pth` network in bfloat16 as a `torch.export` `.pt2` with a fixed batch, traced on `device`."""
    network = load_sapiens(pth, "pose", SAPIENS_ARCH, SAPIENS_INPUT, GOLIATH_NUM_KEYPOINTS, device)
    module = network.module.to(torch.bfloat16)
    example = torch.zeros(batch, 3, *SAPIENS_INPUT, dtype=torch.bfloat16, device=device)
    torch.export.save(torch.export.export(module, (example,)), path)


def write_facexlib_weights(folder: Path) -> None:
    """Random RetinaFace mobile0.25 and BiSeNet weights under their official file names (RetinaFace's keys
    prefixed `module.`, as saved from DataParallel)."""
    from facexlib.detection.retinaface import RetinaFace
    from facexlib.parsing.bisenet import BiSeNet

    torch.manual_seed(0)
    with warnings.catch_warnings():  # torchvision's `pretrained` deprecation inside facexlib
        warnings.simplefilter("ignore")
        detector = RetinaFace("mobile0.25", device="cpu")
    state = {f"module.{key}": value for key, value in detector.state_dict().items()}
    torch.save(state, folder / FACEXLIB_WEIGHTS["retinaface_mobile0.25"][0])
    torch.save(BiSeNet(num_class=19).state_dict(), folder / FACEXLIB_WEIGHTS["bisenet"][0])


# ---------------------------------------------------------------------------------------------
# 1. Each step alone


@dataclass(frozen=True)
class StepTiming:
    """One step timed alone; the model fields are None for the CPU-only steps."""

    name: str
    input: str
    batch: int | None
    frames: int
    seconds: float
    flops_per_frame: float | None = None
    network_s: float | None = None
    matmul_gflops: tuple[float, float] | None = None  # the peer, measured just before and just after

    @property
    def fps(self) -> float:
        return self.frames / self.seconds

    @property
    def gflops(self) -> float | None:
        """Achieved GFLOP/s over the whole call."""
        return None if self.flops_per_frame is None else self.flops_per_frame * self.fps / 1e9

    @property
    def of_matmul(self) -> float | None:
        """Achieved GFLOP/s as a fraction of the peer's (the mean of its two measurements)."""
        return None if self.matmul_gflops is None else 2 * self.gflops / sum(self.matmul_gflops)


def synchronize(device: torch.device) -> None:
    """Wait for the GPU's queued work (nothing to wait for on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class ForwardTimer:
    """Wall time spent inside a module's forward calls, from hooks on the module (GPU work synchronised)."""

    def __init__(self, module: nn.Module, device: torch.device) -> None:
        self.module, self.device = module, device
        self.seconds = 0.0
        self._started = 0.0

    def __enter__(self) -> ForwardTimer:
        self._handles = [self.module.register_forward_pre_hook(self._start),
                         self.module.register_forward_hook(self._stop)]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()

    def _start(self, *args: object) -> None:
        synchronize(self.device)
        self._started = time.perf_counter()

    def _stop(self, *args: object) -> None:
        synchronize(self.device)
        self.seconds += time.perf_counter() - self._started


def cycled(images: np.ndarray, frames: int, batch: int) -> np.ndarray:
    """Enough images for `frames` timed and one warm-up batch, repeating `images` as often as needed."""
    return images[np.arange(max(frames, batch)) % len(images)]


def cpu_attention_flops(query_shape: torch.Size, key_shape: torch.Size, value_shape: torch.Size, *args: object,
                        out_shape: object = None, **kwargs: object) -> int:
    """FLOPs of PyTorch's CPU flash attention, which `FlopCounterMode` does not count by itself."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


ATTENTION_FLOPS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_attention_flops}


def time_model(name: str, description: str, call: Callable[[int], object], network: nn.Module, batch: int,
               frames: int, device: torch.device) -> StepTiming:
    """Warm up with one batch, counting its FLOPs, then time `call(frames)` and the network's share of it,
    between two measurements of the matmul peer (the speed of a shared machine drifts).

    `call(n)` runs the component on its first `n` inputs; it batches them itself.
    """
    with FlopCounterMode(display=False, custom_mapping=ATTENTION_FLOPS) as counter:
        call(batch)
    before = matmul_gflops(device)
    with ForwardTimer(network, device) as forward:
        started = time.perf_counter()
        call(frames)
        seconds = time.perf_counter() - started
    return StepTiming(name, description, batch, frames, seconds, counter.get_total_flops() / batch, forward.seconds,
                       (before, matmul_gflops(device)))


def time_step(name: str, description: str, run: Callable[[], object], frames: int) -> StepTiming:
    """Time a CPU-only step over all clips once, after one warm-up pass."""
    run()
    started = time.perf_counter()
    run()
    return StepTiming(name, description, None, frames, time.perf_counter() - started)


def matmul_gflops(device: torch.device, repeats: int = 3) -> float:
    """The best GFLOP/s of a large square matrix product (float32 4096^2 on the CPU, bfloat16 8192^2 on CUDA):
    the physical limit the models are compared to."""
    dtype, size = (torch.bfloat16, 8192) if device.type == "cuda" else (torch.float32, 4096)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    torch.matmul(a, b)
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        torch.matmul(a, b)
        synchronize(device)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9


def runtime(device: torch.device, batch: int) -> RuntimeConfig:
    """A component's runtime section: `device`, in batches of `batch`."""
    if device.type == "cuda":
        return RuntimeConfig(device="cuda", gpus=1, batch_size=batch)
    return RuntimeConfig(device="cpu", batch_size=batch)


def random_keypoints(face_boxes: np.ndarray, seed: int = 0) -> np.ndarray:
    """(N, 238, 3) Goliath face points spread over each face box, all with confidence 1."""
    rng = np.random.default_rng(seed)
    unit = rng.random((len(face_boxes), GOLIATH_FACE.num_points, 2), dtype=np.float32)
    corner, size = face_boxes[:, None, :2], face_boxes[:, None, 2:] - face_boxes[:, None, :2]
    return np.concatenate([corner + unit * size, np.ones((*unit.shape[:2], 1), np.float32)], axis=2)


def step_timings(clips: list[Clip], weights: Path, pose_checkpoint: Path, args: argparse.Namespace,
                 device: torch.device) -> list[StepTiming]:
    """Every step of the perception processor, each alone, on the same decoded frames."""
    crop = FaceCropConfig(size=FRAME_SIZE)
    frames = np.concatenate([clip.frames for clip in clips])
    size = f"{FRAME_SIZE}x{FRAME_SIZE}"

    detector = build_face_detector(FaceDetectionConfig(backend="retinaface_mobile0.25", weights_dir=str(weights),
                                                       runtime=runtime(device, args.detect_batch)))
    detector.setup()
    log("detection")
    detect_frames = cycled(frames, args.detect_frames, args.detect_batch)
    timings = [time_model("detection: RetinaFace mobile0.25", f"{size} frames",
                          lambda n: detector.detect(detect_frames[:n]), detector.model, args.detect_batch,
                          args.detect_frames, device)]

    def track_and_crop() -> list[tuple[np.ndarray, np.ndarray]]:
        crops = []
        for clip in clips:
            track = track_main_face(clip.detections, (FRAME_SIZE, FRAME_SIZE), crop)
            boxes = crop_boxes(track, crop)
            face_boxes = to_crop_coords(track.boxes.reshape(-1, 2, 2), boxes, crop.size).reshape(-1, 4)
            crops.append((crop_clip(clip.frames, boxes, crop.size), face_boxes))
        return crops

    log("track + crop")
    timings.append(time_step("track + crop", f"{size} frames -> {size} crops", track_and_crop, len(frames)))
    cropped = track_and_crop()
    crops = np.concatenate([images for images, _ in cropped])
    face_boxes = np.concatenate([boxes for _, boxes in cropped])

    keypoint_config = KeypointConfig(backend="sapiens", checkpoint=str(pose_checkpoint), arch=SAPIENS_ARCH,
                                     trust_code=True,  # the .pt2 this script exported itself
                                     image_size=SAPIENS_INPUT, runtime=runtime(device, args.pose_batch))
    estimator = build_keypoint_estimator(keypoint_config)
    estimator.setup()
    log(f"keypoints: {args.pose_frames} frames after a warm-up of {args.pose_batch}")
    pose_crops = cycled(crops, args.pose_frames, args.pose_batch)
    pose_boxes = cycled(face_boxes, args.pose_frames, args.pose_batch)
    dtype = "bf16" if device.type == "cuda" else "fp32"
    timings.append(time_model(f"keypoints: Sapiens {SAPIENS_ARCH} pose ({dtype})",
                              f"{size} crops -> {SAPIENS_INPUT[0]}x{SAPIENS_INPUT[1]}",
                              lambda n: estimator(pose_crops[:n], pose_boxes[:n]), estimator.model.module,
                              args.pose_batch, args.pose_frames, device))

    keypoints = random_keypoints(face_boxes)
    spec = PoseRenderSpec()
    log("pose render")
    timings.append(time_step("pose render", f"238 points -> {size}", lambda: [
        render_pose_frames(points, GOLIATH_FACE, crop.size, spec) for points in np.split(keypoints, len(clips))],
        len(keypoints)))

    segmenter = build_segmenter(SegmentationConfig(backend="bisenet", attributes=MASK_ATTRIBUTES,
                                                   weights_dir=str(weights), runtime=runtime(device, args.mask_batch)))
    segmenter.setup()
    log("masks")
    mask_crops = cycled(crops, args.mask_frames, args.mask_batch)
    timings.append(time_model("masks: BiSeNet", f"{size} crops", lambda n: segmenter(mask_crops[:n]),
                              segmenter.model, args.mask_batch, args.mask_frames, device))
    return timings


# ---------------------------------------------------------------------------------------------
# 2. The whole build, perception off and on


@dataclass(frozen=True)
class BuildRun:
    """One `build-dataset` process: its wall time and what its summary says."""

    name: str
    wall_s: float
    frames: int
    work_span_s: float
    models_s: float  # setting up the model actors (Ray ready -> models ready)
    gpu_busy: float | None = None  # mean nvidia-smi utilisation during the unit work, 0..1


class GpuSampler:
    """nvidia-smi's utilization.gpu of GPU 0 every 100 ms, each reading stamped with the time it arrived."""

    def __enter__(self) -> GpuSampler:
        self.samples: list[tuple[float, float]] = []
        self._process = subprocess.Popen(
            ["nvidia-smi", "--id=0", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "100"],
            stdout=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        for line in self._process.stdout:
            self.samples.append((time.time(), float(line) / 100))

    def __exit__(self, *exc: object) -> None:
        self._process.terminate()
        self._process.wait()
        self._reader.join()

    def mean(self, start: float, end: float) -> float:
        inside = [busy for stamp, busy in self.samples if start <= stamp <= end]
        if not inside:
            raise RuntimeError("nvidia-smi gave no reading during the unit work")
        return sum(inside) / len(inside)


def run_build(name: str, videos: Path, output: Path, overrides: list[str], env: dict[str, str],
              sampler: GpuSampler | None = None) -> BuildRun:
    """Run `build-dataset` as a user does, in its own process; stop if it rejected any video or clip."""
    command = [sys.executable, "-m", "flows.cli", "build-dataset", "-i", str(videos), "-o", str(output)]
    for override in overrides:
        command += ["--set", override]
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"build-dataset ({name}) failed:\n{done.stderr[-3000:]}")
    summary, _ = json.JSONDecoder().raw_decode(done.stdout[done.stdout.index("{"):])
    if summary["videos_failed"] or summary["failures_by_reason"]:
        raise SystemExit(f"build-dataset ({name}) rejected inputs: {summary['failures_by_reason']}")
    timeline = summary["timeline"]
    busy = None if sampler is None else sampler.mean(timeline["first_unit_started"], timeline["last_unit_ended"])
    return BuildRun(name, wall, summary["frames"], summary["work_span_s"],
                    timeline["models_ready"] - timeline["ray_ready"], busy)


def flow_perception(weights: Path, pose_checkpoint: Path, args: argparse.Namespace) -> dict:
    """The `perception` section of the build: truth detection; keypoints truth on the CPU, Sapiens on CUDA."""
    truth = {"backend": "truth"}
    if args.device == "cuda":
        gpu = {"device": "cuda", "gpus": 0.5}
        keypoints = {"backend": "sapiens", "checkpoint": str(pose_checkpoint), "arch": SAPIENS_ARCH, "trust_code": True,
                     "image_size": list(SAPIENS_INPUT), "runtime": {**gpu, "batch_size": args.pose_batch}}
        runtime_section = {**gpu, "batch_size": args.mask_batch}
    else:
        keypoints = truth
        runtime_section = {"device": "cpu", "batch_size": args.mask_batch}
    if args.flow_masks == "bisenet":
        masks = {"backend": "bisenet", "weights_dir": str(weights), "attributes": list(MASK_ATTRIBUTES),
                 "runtime": runtime_section}
    else:
        masks = {"backend": "truth", "attributes": list(MASK_ATTRIBUTES)}
    return {"detection": truth, "keypoints": keypoints, "crop": {"size": FRAME_SIZE}, "segmentation": masks}


def build_runs(videos: Path, work: Path, weights: Path, pose_checkpoint: Path,
               args: argparse.Namespace) -> list[BuildRun]:
    """Perception off, then on, each build in its own process with a private Prefect home whose database is
    created first, untimed (neither run pays the first run's migrations)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
           "PREFECT_HOME": str(work / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    subprocess.run([sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"], env=env, check=True,
                   capture_output=True)
    common = [f"decode.size={FRAME_SIZE}", f"decode.fps={args.fps:g}", f"clips.length={args.clip_length}",
              f"clips.stride={args.clip_length}"]
    perception = f"perception={json.dumps(flow_perception(weights, pose_checkpoint, args))}"
    log("build-dataset, perception off")
    runs = [run_build("perception off", videos, work / "build_off", common, env)]
    log("build-dataset, perception on")
    sampler = GpuSampler() if args.device == "cuda" else None
    with sampler or contextlib.nullcontext():
        runs.append(run_build("perception on", videos, work / "build_on", [*common, perception], env, sampler))
    return runs


# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CropPath:
    """Decoding and cropping one video one way: square thumbnail or source picture."""

    name: str
    frame_size: tuple[int, int]
    frames: int
    decode_s: float
    view_s: float | None  # the detector's bounded copy (source path only)
    crop_s: float
    clip_bytes: int  # a 16-frame clip of decoded frames
    frame_px_per_output_px: float  # the crop side in the pixels it is cut from / the crop size


def source_crop_paths(work: Path, args: argparse.Namespace) -> list[CropPath]:
    """Section 3: the square-thumbnail path against the source-picture path on one HD talking head."""
    video = write_portrait_video(work / "talking_head_1080p.mp4", seed=11, num_frames=args.source_frames,
                                 width=1920, height=1080, head_centre=(0.5, 0.4), head_size=0.22, attributes=("hair",))
    probe = probe_video(str(video))
    detector = build_face_detector(FaceDetectionConfig(backend="truth"))
    detector.setup()
    crop = FaceCropConfig(size=FRAME_SIZE)
    cv2.setNumThreads(1)  # as a unit runs its CPU steps (tasks.unit)
    paths = []
    for name, source_size in (("512 square (no perception)", False), ("source 1920x1080 (perception)", True)):
        log(f"source crop: {name}")
        decode = DecodeConfig(size=FRAME_SIZE)
        decode_s = best_of(lambda: list(iter_frames(str(video), probe, decode, source_size=source_size)))
        decoded = list(iter_frames(str(video), probe, decode, source_size=source_size))
        frames = np.stack([frame.image for frame in decoded])
        height, width = frames.shape[1:3]
        fit = "source" if source_size else decode.crop
        refs = frame_refs(str(video), [frame.time_s for frame in decoded], (width, height), fit)
        track = track_main_face(detector.detect(frames, refs), (width, height), crop)
        boxes = crop_boxes(track, crop)
        view_s = best_of(lambda: detector_view(frames, FaceDetectionConfig().max_side)) if source_size else None
        crop_s = best_of(lambda: crop_clip(frames, crop_boxes(track, crop), crop.size))
        paths.append(CropPath(name, (width, height), len(frames), decode_s, view_s, crop_s,
                              16 * frames[0].nbytes, source_px_per_output_px(boxes, crop.size)))
    return paths


def best_of(run: Callable[[], object], repeats: int = 3) -> float:
    """The fastest of `repeats` timed runs after a warm-up (a shared machine only ever slows a run down)."""
    run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def print_source_crop(paths: list[CropPath], args: argparse.Namespace) -> None:
    header = ("path", "frame", "frames", "decode frames/s", "detector copy frames/s", "crop frames/s",
              "CPU ms/frame", "MB per 16-frame clip", "frame px per crop px")
    rows = []
    for path in paths:
        per_frame_ms = 1000 * (path.decode_s + (path.view_s or 0) + path.crop_s) / path.frames
        rows.append((path.name, "{}x{}".format(*path.frame_size), str(path.frames),
                     f"{path.frames / path.decode_s:.1f}",
                     "-" if path.view_s is None else f"{path.frames / path.view_s:.1f}",
                     f"{path.frames / path.crop_s:.1f}", f"{per_frame_ms:.1f}", f"{path.clip_bytes / 2**20:.1f}",
                     f"{path.frame_px_per_output_px:.2f}"))
    for markdown in (False, True) if args.markdown else (False,):
        print()
        print(format_table(header, rows, markdown))


def print_results(timings: list[StepTiming], runs: list[BuildRun], args: argparse.Namespace) -> None:
    """The step table and the build table; with `--markdown` both again as Markdown."""
    header = ("step", "input", "batch", "frames", "frames/s", "GFLOP/frame", "GFLOP/s", "matmul GFLOP/s, before/after",
              "x matmul", "in network")
    rows = []
    for t in timings:
        if t.flops_per_frame is None:
            model = ("-",) * 5
        else:
            model = (f"{t.flops_per_frame / 1e9:.1f}", f"{t.gflops:.1f}",
                     "{:.0f} / {:.0f}".format(*t.matmul_gflops), f"{t.of_matmul:.2f}", f"{t.network_s / t.seconds:.0%}")
        rows.append((t.name, t.input, str(t.batch or "clip"), str(t.frames), f"{t.fps:.3g}", *model))
    tables = [(header, rows)]
    if runs:
        off, on = runs
        build_header = ("build-dataset", "frames", "whole process s", "frames/s", "model set-up s", "unit work s",
                        "frames/s", "GPU busy")
        build_rows = [(run.name, str(run.frames), f"{run.wall_s:.1f}", f"{run.frames / run.wall_s:.2f}",
                       f"{run.models_s:.1f}", f"{run.work_span_s:.1f}", f"{run.frames / run.work_span_s:.2f}",
                       "-" if run.gpu_busy is None else f"{run.gpu_busy:.0%}") for run in runs]
        build_rows.append(("on / off", "", "", f"x{off.wall_s / on.wall_s:.2f}", "", "",
                           f"x{off.work_span_s / on.work_span_s:.2f}", ""))
        tables.append((build_header, build_rows))
    for markdown in (False, True) if args.markdown else (False,):
        for table_header, table_rows in tables:
            print()
            print(format_table(table_header, table_rows, markdown))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--videos", type=int, help="generated videos (default: 2 on the CPU, 16 on CUDA)")
    parser.add_argument("--video-frames", type=int, default=48, help="frames per generated video, at 24 fps")
    parser.add_argument("--fps", type=float, default=8.0, help="decode rate (default 8: 16 frames per video)")
    parser.add_argument("--clip-length", type=int, default=16, help="frames per clip (the build's clips.length)")
    for name, what in (("detect", "RetinaFace"), ("pose", "Sapiens"), ("mask", "BiSeNet")):
        parser.add_argument(f"--{name}-batch", type=int, help=f"{what} batch size (default: per device)")
        parser.add_argument(f"--{name}-frames", type=int, help=f"{what} frames timed (default: per device)")
    parser.add_argument("--flow-masks", choices=("bisenet", "truth"), default="bisenet",
                        help="masks in the build with perception on (default bisenet, random weights)")
    parser.add_argument("--skip-flow", action="store_true", help="skip the two build-dataset runs")
    parser.add_argument("--source-frames", type=int, default=48, help="frames of the 1080p video (section 3)")
    parser.add_argument("--source-crop-only", action="store_true", help="run section 3 only")
    parser.add_argument("--markdown", action="store_true", help="also print Markdown tables")
    args = parser.parse_args()
    for key, value in DEFAULTS[args.device].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: this machine sees no CUDA device")

    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="durian-perception-"))
    if args.source_crop_only:
        try:
            paths = source_crop_paths(work, args)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(f"\nsource-resolution cropping on {os.cpu_count()} CPU cores, one thread (as a unit); 1-minute load "
              f"average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")
        print_source_crop(paths, args)
        return
    try:
        log(f"videos and weights in {work}")
        videos, weights = work / "videos", work / "weights"
        weights.mkdir()
        write_dataset(videos, count=args.videos, num_frames=args.video_frames, width=FRAME_SIZE,
                      height=FRAME_SIZE, fps=24.0)
        clips = decode_clips(sorted(videos.glob("*.mp4")), DecodeConfig(size=FRAME_SIZE, fps=args.fps),
                             args.clip_length)
        write_facexlib_weights(weights)
        pose_checkpoint = weights / "sapiens_0.3b_goliath_random.pth"
        write_sapiens_pth(pose_checkpoint)
        if device.type == "cuda":
            exported = weights / "sapiens_0.3b_goliath_random_bfloat16.pt2"
            write_sapiens_bfloat16_export(pose_checkpoint, exported, args.pose_batch, device)
            pose_checkpoint = exported

        timings = step_timings(clips, weights, pose_checkpoint, args, device)
        paths = source_crop_paths(work, args)
        runs = [] if args.skip_flow else build_runs(videos, work, weights, pose_checkpoint, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{os.cpu_count()} CPU cores"
    print(f"\nperception on {name}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{len(clips)} clips of {args.clip_length} frames from {args.videos} generated videos; "
          f"1-minute load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")
    print_results(timings, runs, args)
    print_source_crop(paths, args)


if __name__ == "__main__":
    main()
