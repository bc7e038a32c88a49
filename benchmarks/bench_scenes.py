"""What scenes cost: PySceneDetect on every decoded frame, and the scene pass that gives references from the scene.

1. Detection alone: CPU ms per frame of `tasks.scenes.split_scenes` (the analysis copy, then the detector) on
   frames of the sizes a unit decodes (512 x 512 squares; 1280 x 720 and 1920 x 1080 at source resolution),
   with the analysis copy at 128 px (the default) and 256 px (PySceneDetect's own width).
2. In the unit without perception: `run_unit` on generated 1280 x 720 videos decoded to 512 x 512, with scene
   detection (the default) and with `scenes.detector: none`; this process's CPU per frame (ffmpeg's own
   decoding runs in a child process and is the same in both).
3. References from the scene: `run_unit` with ground-truth perception and training pairs on generated videos,
   references from the clip (no scene pass) against references from the scene (a second decode of each video
   and the perception of its candidate frames).

    .venv/bin/python benchmarks/bench_scenes.py [--videos 3] [--markdown]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from report_table import format_table

from data_specs.config import parse_config
from data_specs.scenes import SceneConfig
from data_specs.units import WorkUnit
from tasks.media import Frame
from tasks.scenes import split_scenes
from tasks.sources import list_videos
from tasks.synthetic import write_portrait_video
from tasks.unit import run_unit

TRUTH = {"backend": "truth"}
PERCEPTION = {"detection": TRUTH, "keypoints": TRUTH, "crop": {"size": 256},
              "segmentation": {**TRUTH, "attributes": ["hair", "eyeglasses", "beard", "hat"]}}


def detection_ms(size: tuple[int, int], config: SceneConfig, frames: int = 300) -> float:
    """CPU ms per frame of scene detection over `frames` noise frames of `size` (height, width)."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (*size, 3), dtype=np.uint8) for _ in range(8)]
    stream = (Frame(i, i / 25, images[i % len(images)]) for i in range(frames))
    started = time.process_time()
    for _ in split_scenes(stream, config, 25.0):
        pass
    return (time.process_time() - started) / frames * 1000


def unit_run(videos: Path, output: Path, **overrides: object) -> tuple[float, float, int, int]:
    """(wall s, this process's CPU s, frames decoded, samples written) of one unit over every video."""
    config = parse_config({"inputs": {"source": str(videos)}, "output_dir": str(output), **overrides})
    unit = WorkUnit(unit_id="bench", fingerprint="0" * 16, videos=tuple(list_videos(config.inputs)))
    wall, cpu = time.perf_counter(), time.process_time()
    report = run_unit(unit, config)
    return time.perf_counter() - wall, time.process_time() - cpu, report.frames, report.samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=3, help="generated videos per unit run")
    parser.add_argument("--repeats", type=int, default=3, help="unit runs per setting, alternating; the best is kept")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    cv2.setNumThreads(1)  # as in a unit task: one core's worth of work

    rows = []
    for size in ((512, 512), (720, 1280), (1080, 1920)):
        for detector in ("adaptive", "content"):
            cost = [detection_ms(size, SceneConfig(detector=detector, analysis_side=side)) for side in (128, 256)]
            rows.append([f"{size[1]} x {size[0]}", detector, *(f"{ms:.2f}" for ms in cost)])
    print(format_table(["frame", "detector", "CPU ms/frame, 128 px", "CPU ms/frame, 256 px"], rows, args.markdown,
                       right={2, 3}))
    print()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        hd = root / "hd"
        for i in range(args.videos):
            write_portrait_video(hd / f"v{i}.mp4", seed=i, num_frames=150, width=1280, height=720, fps=25.0)
        base = {"decode": {"size": 512}, "clips": {"length": 16, "stride": 16}}
        settings = {"scenes: adaptive (default)": {}, "scenes: none": {"detector": "none"}}
        unit_run(hd, root / "warm", **base)  # page cache and imports
        best: dict[str, tuple[float, float, int, int]] = {}
        for repeat in range(args.repeats):
            for name, scenes in settings.items():
                run = unit_run(hd, root / f"{repeat}-{name.split()[1]}", **base, scenes=scenes)
                best[name] = min(best.get(name, run), run)
        rows = [[name, str(frames), f"{wall:.2f}", f"{frames / wall:.0f}", f"{cpu / frames * 1000:.2f}"]
                for name, (wall, cpu, frames, _) in best.items()]
        print(format_table([f"run_unit, 720p -> 512 x 512, no perception (best of {args.repeats})", "frames",
                            "wall s", "frames/s", "process CPU ms/frame"], rows, args.markdown, right={1, 2, 3, 4}))
        print()

        portraits = root / "portraits"
        for i in range(args.videos):
            write_portrait_video(portraits / f"p{i}.mp4", seed=i, num_frames=96, width=384, height=384, fps=24.0)
        base = {"decode": {"fps": 12}, "clips": {"length": 8, "stride": 8}, "perception": PERCEPTION}
        rows = []
        for scope in ("clip", "scene"):
            samples = {"pairs": {"pairs_per_clip": 2, "frames": 4, "min_ref_distance": 2,
                                 "references": {"scope": scope, "min_gap_s": 1.0, "candidates": 8}}}
            wall, cpu, frames, written = unit_run(portraits, root / scope, **base, training_samples=samples)
            rows.append([f"references from the {scope}", str(frames), str(written), f"{wall:.2f}",
                         f"{written / wall:.1f}"])
        print(format_table([f"run_unit, truth perception + pairs, {args.videos} videos",
                            "frames (clip pass)", "pairs", "wall s", "pairs/s"], rows, args.markdown,
                           right={1, 2, 3, 4}))


if __name__ == "__main__":
    main()
