"""Evaluation throughput: clips/s of the evaluation's own code path against bare generation of the same clips.

The evaluation runs here as each Ray actor of `durian evaluate` runs it, in this process (no Prefect, no Ray):
`training.evaluation.plan_evaluation`, `Evaluator(config, plan.index).evaluate(plan.items)`, then `summarise` and
`write_report`. The peer is the same pipeline alone generating the same clips with the same seeds
(`training.reconstruction.generate`, samples decoded beforehand; the script checks that its frames equal the
evaluation's), timed in the same run: each `evaluate` call (--clips-per-call clips) and the peer's generation of
the same clips run back to back, taking turns at going first. Evaluation clips/s over bare-generation clips/s says
what reading, measuring and saving cost on top of generating.

Inputs, all written into a temporary folder:
  * a random-weight DurianPipeline (`model.builders.random_components` of --flavour) saved with save_pretrained;
  * a dataset written by `tests.training.training_testing.write_pair_dataset`: --clips videos, all in the
    evaluation split, one stage-2 pair (hair) of --frames frames of --size pixels each, so the plan has --clips
    self-transfer and --clips cross-transfer clips;
  * --extractors random (default): every extractor with random weights in its official layout: torchvision's
    Inception-v3 (FID), R3D-18 (FVD-style) and AlexNet (LPIPS) at their real sizes; CLIP, DINOv2 and ArcFace in
    the tests' tiny configurations (`tests.evaluation.evaluation_testing`), or with --real-sizes at their released
    sizes: CLIP ViT-L/14 (sd-image-variations' image encoder), DINOv2-base and ArcFace r100.
    --extractors none: only the pixel metrics (L1, PSNR, SSIM).

Reported: clips/s and the ratio to bare generation, by wall time and by the process's CPU time (steadier when
other processes share the cores); the evaluation's wall time split into generating and measuring (the rows'
generate_s and measure_s; the rest is reading samples and saving the generated clips), measuring split per
extractor (timers wrapped around each extractor's call); summarise + write_report; the Evaluator's set-up
(pipeline and extractors loaded, once per worker). Every figure is the median over --repeats passes after
--warmup passes, ratios and shares computed within each pass.

--flavour sd15 (random SD 1.5-size weights, 512 px, 16 frames) is for --device cuda only: building and saving its
about 3.5 B random parameters (13 GiB in float32) and generating at 512 px would take hours on a CPU. On CUDA the
pipeline runs in bf16 and the extractors in fp32, as the Evaluator does.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_evaluation.py [--extractors none] [--real-sizes] [--markdown]
    PYTHONPATH=. python3 benchmarks/bench_evaluation.py --device cuda --flavour sd15 --real-sizes --markdown
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Self

import numpy as np
import torch
from diffusers.utils import logging as diffusers_logging
from report_table import format_table
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection, Dinov2Config, Dinov2Model
from transformers.utils import logging as transformers_logging

from data_specs.evaluation import CROSS, SELF, ClipResult, EvalClipRow, EvalConfig, ExtractorPaths
from data_specs.model import FLAVOURS, IdentityEncoderSpec, model_flavour
from data_specs.sample import PairSample
from model.builders import random_components
from model.encoders import IResNet
from model.pipeline import DurianPipeline
from tests.evaluation.evaluation_testing import TINY_ARCFACE, torchvision_checkpoint, write_extractor_checkpoints
from tests.training.training_testing import write_pair_dataset
from training.data import read_pairs
from training.evaluation.evaluator import Evaluator, generated_path
from training.evaluation.plan import EvalItem, plan_evaluation
from training.evaluation.report import summarise, write_report
from training.reconstruction import generate

DEFAULT_FRAMES = {"tiny": 8, "sd15": 16}
# DINOv2-base as released (facebook/dinov2-base's config.json).
DINOV2_BASE = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "mlp_ratio": 4,
               "patch_size": 14, "image_size": 518}
EXTRACTORS = ("inception", "video", "lpips", "clip", "dino", "identity")  # the Evaluator's attribute names


def log(message: str) -> None:
    """Progress on stderr, so that --markdown's stdout is the table alone."""
    print(message, file=sys.stderr, flush=True)


def save_random_pipeline(flavour: str, folder: Path, device: str) -> Path:
    """A random-weight DurianPipeline saved as `durian evaluate` expects it; built on `device` because SD 1.5 size
    initialises in seconds on a GPU and in minutes on a CPU."""
    with torch.device(device):
        random_components(model_flavour(flavour), seed=0).pipeline().save_pretrained(folder)
    return folder


def write_real_size_checkpoints(folder: Path) -> dict[str, Path]:
    """Like `write_extractor_checkpoints`, with CLIP, DINOv2 and ArcFace at their released sizes, so that the
    measuring cost is the real networks' (the torchvision ones are written at their real sizes either way)."""
    folder.mkdir(parents=True, exist_ok=True)
    arcface = IdentityEncoderSpec()  # r100, 512-d: insightface's glint360k backbone
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        clip = CLIPVisionConfig(**model_flavour("sd15").image_encoder.transformers_config())  # ViT-L/14, 224 px
        CLIPVisionModelWithProjection(clip).save_pretrained(folder / "clip")
        Dinov2Model(Dinov2Config(**DINOV2_BASE)).save_pretrained(folder / "dino")
        torch.save(IResNet(arcface.arch, arcface.embedding_dim, arcface.widths).state_dict(), folder / "backbone.pth")
    return {
        "alex": torchvision_checkpoint(folder, "alexnet"),
        "inception": torchvision_checkpoint(folder, "inception_v3", aux_logits=True, init_weights=False),
        "video": torchvision_checkpoint(folder, "r3d_18"),
        "clip": folder / "clip",
        "dino": folder / "dino",
        "arcface": folder / "backbone.pth",
    }


def extractor_paths(kind: str, real_sizes: bool, folder: Path) -> ExtractorPaths:
    """The config's extractor section: none, or random checkpoints written under `folder`."""
    if kind == "none":
        return ExtractorPaths()
    files = write_real_size_checkpoints(folder) if real_sizes else write_extractor_checkpoints(folder)
    return ExtractorPaths(inception=files["inception"], video=files["video"], lpips=files["alex"],
                          clip=str(files["clip"]), dino=str(files["dino"]), arcface=files["arcface"],
                          identity=IdentityEncoderSpec() if real_sizes else TINY_ARCFACE)


class Clock:
    """Wall and CPU seconds spent in the blocks it has timed, added up. The wall time is what a user waits for;
    the process's CPU time is what the work costs, and on a VM whose cores other processes share it moves far less
    than the wall time does."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.wall = self.cpu = 0.0
        self._started = (0.0, 0.0)

    def __enter__(self) -> Self:
        self._started = (time.perf_counter(), time.process_time())
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cuda:  # queued kernels belong to the block
            torch.cuda.synchronize()
        self.wall += time.perf_counter() - self._started[0]
        self.cpu += time.process_time() - self._started[1]


def time_extractors(evaluator: Evaluator) -> dict[str, Clock]:
    """Wrap each loaded extractor's entry point in a clock, so that its seconds add up per extractor (the rows only
    split generating from measuring); the returned dict, extractor name -> Clock, fills until cleared."""
    spent: dict[str, Clock] = {}

    def timed(name: str, fn: Callable) -> Callable:
        def wrapper(*args: object, **kwargs: object) -> object:
            with spent.setdefault(name, Clock(evaluator.device)):
                return fn(*args, **kwargs)
        return wrapper

    for name in EXTRACTORS:
        extractor = getattr(evaluator, name)
        if extractor is None:
            continue
        if name == "lpips":  # called as a module by torchmetrics' LPIPS update, not through `features`
            extractor.forward = timed(name, extractor.forward)
        else:
            extractor.features = timed(name, extractor.features)
    return spent


def bare_generation(pipeline: DurianPipeline, items: list[EvalItem], samples: dict[str, PairSample],
                    config: EvalConfig) -> list[np.ndarray]:
    """The peer: the same clips generated with the evaluation's arguments and seed, nothing read or measured."""
    return [generate(pipeline, samples[item.target.key],
                     None if item.transfer == SELF else samples[item.attribute_from.key],
                     frames=config.frames, steps=config.steps, guidance_scale=config.guidance_scale,
                     seed=config.seed)[0]
            for item in items]


def timed_pass(evaluator: Evaluator, chunks: list[list[EvalItem]], samples: dict[str, PairSample],
               flip: bool) -> tuple[list[ClipResult], list[np.ndarray], Clock, Clock]:
    """One pass over every chunk: the evaluation's call and the peer's generation of the same clips back to back,
    taking turns at going first, so that both see the same load of the shared machine (it changes within seconds)."""
    evaluation, peer = Clock(evaluator.device), Clock(evaluator.device)
    results: list[ClipResult] = []
    bare: list[np.ndarray] = []
    for number, chunk in enumerate(chunks):
        for side in ("peer", "evaluation") if (number + flip) % 2 else ("evaluation", "peer"):
            if side == "evaluation":
                with evaluation:
                    results += evaluator.evaluate(chunk)
            else:
                with peer:
                    bare += bare_generation(evaluator.pipeline, chunk, samples, evaluator.config)
    return results, bare, evaluation, peer


def pass_figures(rows: list[EvalClipRow], evaluation: Clock, peer: Clock, reporting: Clock,
                 spent: dict[str, Clock]) -> dict[str, float]:
    """One timed pass's figures, ratios and shares included: they are computed within the pass, because on a
    shared VM the load changes between passes and medians of separate quantities need not add up."""
    generate_s, measure_s = sum(r.generate_s for r in rows), sum(r.measure_s for r in rows)
    pixels = measure_s - sum(clock.wall for clock in spent.values())
    rest = evaluation.wall - generate_s - measure_s
    figures = {
        "evaluate": evaluation.wall, "evaluate_cpu": evaluation.cpu, "bare": peer.wall, "bare_cpu": peer.cpu,
        "report": reporting.wall, "report_cpu": reporting.cpu,
        "throughput_ratio": peer.wall / evaluation.wall, "cpu_ratio": peer.cpu / evaluation.cpu,
        "extra_cpu": evaluation.cpu - peer.cpu, "extra_cpu_share": (evaluation.cpu - peer.cpu) / evaluation.cpu,
        "generate": generate_s, "generate_share": generate_s / evaluation.wall,
        "generate_vs_bare": generate_s / peer.wall,
        "measure": measure_s, "measure_share": measure_s / evaluation.wall,
        "pixels": pixels, "pixels_share": pixels / evaluation.wall, "rest": rest, "rest_share": rest / evaluation.wall,
        **{f"measure_{transfer}": statistics.mean(r.measure_s for r in rows if r.transfer == transfer)
           for transfer in (SELF, CROSS)},
    }
    for name, clock in spent.items():
        figures.update({f"wall:{name}": clock.wall, f"cpu:{name}": clock.cpu,
                        f"share:{name}": clock.wall / evaluation.wall})
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="default: %(default)s")
    parser.add_argument("--flavour", choices=sorted(FLAVOURS), default="tiny",
                        help="model flavour with random weights; sd15 only with --device cuda (default: %(default)s)")
    parser.add_argument("--clips", type=int, default=3,
                        help="evaluation videos: as many self- and as many cross-transfer clips "
                             "(at least 2; default: %(default)s)")
    parser.add_argument("--frames", type=int, default=None, help="frames per clip (default: 8 tiny, 16 sd15)")
    parser.add_argument("--size", type=int, default=None, help="frame side in pixels (default: the flavour's)")
    parser.add_argument("--steps", type=int, default=EvalConfig.model_fields["steps"].default,
                        help="DDIM steps (default: EvalConfig's, %(default)s)")
    parser.add_argument("--extractors", choices=("random", "none"), default="random",
                        help="random-weight extractors in their official layouts, or none: pixel metrics only "
                             "(default: %(default)s)")
    parser.add_argument("--real-sizes", action="store_true",
                        help="CLIP ViT-L/14, DINOv2-base and ArcFace r100 instead of the tests' tiny ones")
    parser.add_argument("--clips-per-call", type=int, default=1,
                        help="clips per `Evaluator.evaluate` call, each call followed or preceded by the peer's "
                             "generation of the same clips (the flow's execution.clips_per_task, default 4, only "
                             "groups the samples' reading; default here: %(default)s, the tightest pairing)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed passes before timing (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes, medians reported (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU: torch threads (default: torch's). On a shared VM 1 thread avoids the stalls of "
                             "OpenMP threads waiting for each other when other processes hold the cores")
    parser.add_argument("--markdown", action="store_true", help="print the results as a Markdown table")
    args = parser.parse_args()
    if args.flavour == "sd15" and args.device != "cuda":
        parser.error("--flavour sd15 needs --device cuda (random SD 1.5 weights and 512 px generation are GPU work)")
    if args.clips < 2:
        parser.error("--clips must be at least 2: cross transfer borrows the attribute of another video")
    if args.threads:
        torch.set_num_threads(args.threads)
    diffusers_logging.disable_progress_bar()  # the saving and loading bars would bury the pass lines
    transformers_logging.disable_progress_bar()
    flavour = model_flavour(args.flavour)
    frames, size = args.frames or DEFAULT_FRAMES[args.flavour], args.size or flavour.resolution

    with tempfile.TemporaryDirectory(prefix="durian-bench-eval-") as tmp:
        root = Path(tmp)
        log(f"writing the random {args.flavour} pipeline, the dataset and the extractors under {root}")
        pipeline = save_random_pipeline(args.flavour, root / "pipeline", args.device)
        dataset = write_pair_dataset(root / "dataset", clips=args.clips, size=size, frames=frames, pairs_per_clip=1,
                                     stages=(2,), eval_clips=tuple(range(args.clips)))
        config = EvalConfig(model=str(pipeline), dataset=str(dataset), output_dir=str(root / "eval"),
                            steps=args.steps, extractors=extractor_paths(args.extractors, args.real_sizes,
                                                                         root / "extractors"))
        plan = plan_evaluation(config)
        with Clock(torch.device(args.device)) as setup:
            evaluator = Evaluator(config, plan.index, device=args.device)
        spent = time_extractors(evaluator)
        entries = {p.key: p for item in plan.items for p in (item.target, item.attribute_from)}
        samples = {s.key: s for s in read_pairs(plan.index, list(entries.values()))}

        chunks = [plan.items[i:i + args.clips_per_call] for i in range(0, len(plan.items), args.clips_per_call)]
        passes: list[dict[str, float]] = []
        for index in range(args.warmup + args.repeats):
            spent.clear()
            results, bare, evaluation, peer = timed_pass(evaluator, chunks, samples, flip=index % 2 == 1)
            failed = [r.row for r in results if r.row.status != "ok"]
            if failed:
                raise SystemExit(f"{len(failed)} clips failed, e.g. {failed[0].sample_key}: {failed[0].reason}")
            with Clock(evaluator.device) as reporting:
                write_report(config, summarise(config, plan, results))
            log(f"pass {index + 1} of {args.warmup + args.repeats}{' (warm-up)' if index < args.warmup else ''}: "
                f"evaluation {evaluation.wall:.2f} s ({evaluation.cpu:.2f} CPU s), "
                f"bare generation {peer.wall:.2f} s ({peer.cpu:.2f} CPU s)")
            if index >= args.warmup:
                passes.append(pass_figures([r.row for r in results], evaluation, peer, reporting, spent))
        identical = all(np.array_equal(clip, np.load(generated_path(config.output_dir, i.target.key,
                                                                    i.transfer))["generated"])
                        for i, clip in zip(plan.items, bare))

    t = {key: statistics.median(p[key] for p in passes) for key in passes[0]}
    n = len(plan.items)
    sizes = "real-size CLIP ViT-L/14, DINOv2-base, ArcFace r100" if args.real_sizes else "tiny CLIP, DINOv2, ArcFace"
    described = "none (pixel metrics only)" if args.extractors == "none" else f"random weights ({sizes})"
    header = (f"device {args.device} (torch threads: {torch.get_num_threads()}), torch {torch.__version__}, "
              f"{args.flavour} pipeline; {n} clips ({args.clips} self + {args.clips} cross transfer) of {frames} "
              f"frames at {size}x{size}, {config.steps} DDIM steps, guidance {config.guidance_scale}; extractors: "
              f"{described}; {args.clips_per_call} clip(s) per call; medians of {args.repeats} passes after "
              f"{args.warmup} warm-up")
    names = [key.removeprefix("wall:") for key in t if key.startswith("wall:")]
    lines = [
        ("evaluation (`Evaluator.evaluate`)",
         f"{t['evaluate']:.2f} s ({t['evaluate_cpu']:.2f} CPU s) = {n / t['evaluate']:.3g} clips/s",
         f"**{t['throughput_ratio']:.2f}x** bare generation's clips/s ({t['cpu_ratio']:.2f}x by CPU time)"),
        ("bare generation (`generate`, same clips)",
         f"{t['bare']:.2f} s ({t['bare_cpu']:.2f} CPU s) = {n / t['bare']:.3g} clips/s", "1.00x"),
        ("reading + measuring + saving, by CPU time (evaluation - bare)", f"{t['extra_cpu'] / n:.2f} CPU s per clip",
         f"{t['extra_cpu_share']:.0%} of the evaluation's CPU time"),
        ("generating (rows' generate_s)", f"{t['generate']:.2f} s",
         f"{t['generate_share']:.0%} of the evaluation; {t['generate_vs_bare']:.2f}x bare generation"),
        ("measuring (rows' measure_s)", f"{t['measure']:.2f} s", f"{t['measure_share']:.0%} of the evaluation"),
        *[(f"- of which {name}", f"{t['wall:' + name]:.2f} s ({t['cpu:' + name]:.2f} CPU s)",
           f"{t['share:' + name]:.0%} of the evaluation") for name in names],
        ("- of which pixel metrics and conversions", f"{t['pixels']:.2f} s",
         f"{t['pixels_share']:.0%} of the evaluation"),
        ("measuring per clip, self / cross", f"{t['measure_self'] * 1e3:.0f} / {t['measure_cross'] * 1e3:.0f} ms", ""),
        ("reading samples, saving clips, the rest", f"{t['rest']:.2f} s", f"{t['rest_share']:.0%} of the evaluation"),
        ("`summarise` + `write_report` (FID, FVD, Parquet, grid video)",
         f"{t['report']:.2f} s ({t['report_cpu']:.2f} CPU s)", "once per evaluation"),
        ("`Evaluator` set-up (pipeline + extractors loaded)", f"{setup.wall:.2f} s", "once per worker"),
        ("peer's frames identical to the evaluation's", "yes" if identical else "**no**", ""),
    ]
    print(header + ("\n" if args.markdown else ""))
    print(format_table(("what", "figure", "against"), lines, args.markdown, right={1}))


if __name__ == "__main__":
    main()
