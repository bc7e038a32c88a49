"""Training-sample throughput, size and read speed, each against a peer measured in the same run.

On perceived 512 x 512 clips (generated videos, ground-truth perception, 16-frame clips):

1. CPU work: pair sampling + mask expansion (dilate) + augmentation (reflect fill) + encoding, in samples/s,
   against the floor of the same samples' JPEG/PNG encoding alone (`cv2.imencode` of every member image).
   The processor's models (generate, inpaint, latents) are not in this figure: they run in actors, measured apart.
2. Size on disk of a stage-1 and a stage-2 sample, in the shard (tar headers included).
3. Reading: `webdataset` + `data_specs.sample.decode_sample` over the shard, against reading the same
   tar's bytes raw (the disk/page-cache limit), iterating its members without decoding, and decoding
   every image member with OpenCV alone (the decode floor).
4. What a user waits for: `durian build-dataset` as a whole process on the same videos, with and without
   `training_samples` (ephemeral Prefect and local Ray included in both).

    .venv/bin/python benchmarks/bench_samples.py [--videos 2] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import webdataset as wds
from report_table import format_table

from data_specs.perception import PerceptionConfig
from data_specs.sample import PairSample, decode_sample, encode_sample
from data_specs.training_samples import TrainingSamplesConfig
from data_specs.video import DecodeConfig
from tasks.build_processors import LocalModel
from tasks.clips import cut_clips
from tasks.media import iter_frames, probe_video
from tasks.perception.processor import PerceptionProcessor
from tasks.samples.processor import TrainingSampleProcessor
from tasks.shards import RotatingShardWriter
from tasks.synthetic import write_portrait_video

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
TRUTH = {"backend": "truth"}
PERCEPTION = {"detection": TRUTH, "keypoints": TRUTH, "crop": {"size": 512},
              "segmentation": {**TRUTH, "attributes": ["hair", "eyeglasses", "beard", "hat"]}}
SAMPLES = {"pairs": {"pairs_per_clip": 2, "frames": 8}}
CLIP = 16
JPEG_QUALITY = 95


def perceived_clips(videos: list[Path], decode: DecodeConfig) -> list:
    """Clips of the videos through the real perception processor (truth backends, in this process)."""
    from data_specs.sample import ClipMeta, ClipSample

    perception = PerceptionProcessor(PerceptionConfig.model_validate(PERCEPTION), decode)
    perception.setup({spec.name: LocalModel(spec) for spec in perception.models})
    clips = []
    for video in videos:
        probe = probe_video(str(video))
        for index, clip in enumerate(cut_clips(iter_frames(str(video), probe, decode), CLIP, CLIP)):
            meta = ClipMeta(video_id=video.stem, clip_index=index, frame_indices=[f.index for f in clip],
                            time_s=[f.time_s for f in clip], fps=decode.fps, source_path=str(video),
                            content_sha256="0" * 64, config_hash="bench", code_version="bench")
            clips += perception(ClipSample(key=f"{video.stem}_c{index:05d}", meta=meta,
                                           frames=np.stack([f.image for f in clip])))
    return clips


def encode_floor(samples: list[PairSample]) -> float:
    """Seconds to encode every image of the samples with OpenCV alone, as the sample layout does."""
    started = time.perf_counter()
    jpeg = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
    for s in samples:
        for image in [*s.targets, s.attribute_ref, s.portrait_ref]:
            cv2.imencode(".jpg", image, jpeg)
        for image in s.pose_frames:
            cv2.imencode(".png", image)
        for mask in (s.attribute_mask, s.portrait_mask):
            cv2.imencode(".png", mask.astype(np.uint8) * 255, [cv2.IMWRITE_PNG_BILEVEL, 1])
    return time.perf_counter() - started


def decode_floor(shard: Path) -> float:
    """Seconds to decode every image member of the shard with OpenCV alone (no tar, no layout)."""
    with tarfile.open(shard) as tar:
        blobs = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    started = time.perf_counter()
    for name, blob in blobs:
        if name.endswith((".jpg", ".png")):
            flags = cv2.IMREAD_GRAYSCALE if "mask" in name else cv2.IMREAD_COLOR
            cv2.imdecode(np.frombuffer(blob, np.uint8), flags)
    return time.perf_counter() - started


def whole_command(videos: Path, work: Path, with_samples: bool) -> float:
    overrides = ["decode.fps=24", "decode.size=768", f"clips.length={CLIP}", f"clips.stride={CLIP}",
                 f"perception={json.dumps(PERCEPTION)}"]
    if with_samples:
        overrides.append(f"training_samples={json.dumps(SAMPLES)}")
    command = [str(Path(".venv/bin/durian")), "build-dataset", "-i", str(videos), "-o", str(work)]
    for item in overrides:
        command += ["--set", item]
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=2, help="generated 768 x 768 videos of 48 frames")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes of the CPU work; the best is kept")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    cv2.setNumThreads(1)  # as in a unit task: one core's worth of work

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        videos = [write_portrait_video(root / "videos" / f"v{i}.mp4", seed=i, num_frames=48, width=768, height=768)
                  for i in range(args.videos)]
        clips = perceived_clips(videos, DecodeConfig(fps=24, size=768))
        # Clip by clip, outside a unit: references from the clip itself (the unit's scene pass, which gives
        # references from the scene, is measured by bench_scenes.py).
        in_clip = {**SAMPLES, "pairs": {**SAMPLES["pairs"], "references": {"scope": "clip"}}}
        processor = TrainingSampleProcessor(TrainingSamplesConfig.model_validate(in_clip))
        processor.setup({})

        # 1. CPU work per sample, best of the repeats; the floor over the same samples.
        best_pairs = best_encode = float("inf")
        for _ in range(args.repeats):
            started = time.perf_counter()
            samples = [pair for clip in clips for pair in processor(clip)]
            middle = time.perf_counter()
            encoded = [encode_sample(s, JPEG_QUALITY) for s in samples]
            best_pairs, best_encode = min(best_pairs, middle - started), min(best_encode, time.perf_counter() - middle)
        floor = min(encode_floor(samples) for _ in range(args.repeats))
        work = best_pairs + best_encode

        # 2. Size on disk, by stage.
        shard_dir = root / "shards"
        shard_dir.mkdir()
        with RotatingShardWriter(shard_dir, "bench", samples_per_shard=10_000, max_shard_bytes=1 << 40) as writer:
            for sample in encoded:
                writer.write(sample)
        (shard,) = list(shard_dir.glob("*.tar"))
        sizes: dict[int, list[int]] = {1: [], 2: []}
        with tarfile.open(shard) as tar:
            members = tar.getmembers()
        for s in samples:
            own = [m for m in members if m.name.startswith(s.key + ".")]
            sizes[s.meta.training_stage].append(sum(512 + -(-m.size // 512) * 512 for m in own))

        # 3. Reading: raw bytes, tar members, decoded samples.
        def timed(fn) -> float:
            best = float("inf")
            for _ in range(args.repeats):
                started = time.perf_counter()
                fn()
                best = min(best, time.perf_counter() - started)
            return best

        raw_s = timed(lambda: shard.read_bytes())
        members_s = timed(lambda: sum(1 for _ in wds.WebDataset(str(shard), shardshuffle=False)))
        decode_s = timed(lambda: [decode_sample(r) for r in wds.WebDataset(str(shard), shardshuffle=False)])
        floor_decode_s = min(decode_floor(shard) for _ in range(args.repeats))
        mb = shard.stat().st_size / 1e6

        # 4. The whole command, with and without training samples.
        plain_s = whole_command(root / "videos", root / "plain", with_samples=False)
        pairs_s = whole_command(root / "videos", root / "pairs", with_samples=True)

    n = len(samples)
    rows = [
        ("clips (16 frames, 512 px crops)", f"{len(clips)}", ""),
        ("training samples (stage 1 + 2)", f"{n}", f"{len(sizes[1])} + {len(sizes[2])}"),
        ("pairs + expansion + augmentation", f"{n / best_pairs:.1f} samples/s", f"{best_pairs / n * 1e3:.1f} ms/sample"),
        ("encoding (data_specs.sample)", f"{n / best_encode:.1f} samples/s", f"{best_encode / n * 1e3:.1f} ms/sample"),
        ("CPU work in all", f"{n / work:.1f} samples/s", f"**{work / floor:.2f}x** the bare OpenCV encode "
                                                          f"({n / floor:.1f} samples/s)"),
        ("size of a stage-1 sample", f"{np.mean(sizes[1]) / 1e3:.0f} kB", ""),
        ("size of a stage-2 sample (8 frames)", f"{np.mean(sizes[2]) / 1e3:.0f} kB", ""),
        ("read raw shard bytes", f"{mb / raw_s:.0f} MB/s", ""),
        ("iterate members (webdataset)", f"{mb / members_s:.0f} MB/s", f"{raw_s / members_s:.2f}x raw speed"),
        ("read + decode samples", f"{n / decode_s:.1f} samples/s ({mb / decode_s:.0f} MB/s)",
         f"{raw_s / decode_s:.3f}x raw speed; **{decode_s / floor_decode_s:.2f}x** the bare OpenCV decode "
         f"({n / floor_decode_s:.1f} samples/s)"),
        ("`durian build-dataset`, clips only", f"{plain_s:.1f} s", ""),
        ("`durian build-dataset`, with training samples", f"{pairs_s:.1f} s", f"{pairs_s / plain_s:.2f}x"),
    ]
    print(format_table(("what", "figure", "against"), rows, args.markdown, right={1}))


if __name__ == "__main__":
    main()
