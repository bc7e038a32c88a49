"""Does the recipe learn in the tiny world within the demo's time? A learning curve and the baselines it must beat.

The data is the demo's dataset (`durian demo`'s videos and build settings: 12 generated 256 px videos with styled
attributes and one cross-transfer triplet, 64 px face crops; 3 of the 12 and the triplet's 3 videos held out); build
it with `durian demo`. Then (with --model PIPELINE, only 3 and 4, on that saved pipeline):

1. the tiny world: the tiny VAE fitted to the training split's frames (`training.tiny_world`, cached beside the
   dataset), its reconstruction PSNR on training and held-out frames;
2. stage-1 training from it (`training.loop.train` in this process, one worker, --threads torch threads) for at
   most --minutes of wall time or --steps steps, validating every --validate-every steps: the curve of held-out
   L1/PSNR (self transfer, `training.validation`) and of the reference-reliance gaps against steps and seconds;
3. on every held-out stage-1 sample (the evaluation split), self transfer of the final weights (at each
   classifier-free guidance scale of --guidance) against two baselines: "copy the portrait reference" (the unmasked
   portrait frame shown for every target) and "references dropped" (the unconditional branch alone: guidance scale
   0), by L1 and PSNR;
4. with --triplets (the triplets folder whose videos the dataset holds out, as the demo's do): the evaluation's
   triplet-backed cross items (`training.evaluation`) on stage-1 samples: A's portrait wearing B's attribute against
   the exact truth, inside the attribute region and whole, beside the portrait-reference copy.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_learning.py --dataset out/demo/dataset --vae-steps 250 \
        --minutes 8 --guidance 1,3.5 --triplets out/demo/videos/triplets
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from data_specs.training import load_train_config
from model.pipeline import DurianPipeline
from training.data import DatasetIndex, read_pairs
from training.loop import train
from training.metrics import reconstruction_metrics
from training.monitoring import read_metrics
from training.ray_train import LocalSession
from training.reconstruction import generate, images
from training.tiny_world import FIT_FILE, tiny_world


class TimeLimit(LocalSession):
    """A local session that ends the run (at its next checkpoint report) once the wall-time budget is spent."""

    def __init__(self, config, seconds: float) -> None:  # noqa: ANN001 (a TrainConfig)
        super().__init__(config)
        self.deadline = time.monotonic() + seconds

    def report(self, metrics: dict, checkpoint: Path | None) -> None:
        if time.monotonic() > self.deadline:
            raise TimeoutError("training budget spent")


def baselines(pipeline: DurianPipeline, samples: list, steps: int,
              guidance_scales: tuple[float, ...] = (3.5,)) -> dict[str, dict[str, float]]:
    """Mean L1 and PSNR of self transfer (at each classifier-free guidance scale), the portrait copy and the
    references-dropped branch on `samples`."""
    scores: dict[str, list[dict[str, float]]] = defaultdict(list)
    for sample in samples:
        real = images(sample.targets)
        generated = [(f"self transfer, guidance {scale:g}", generate(pipeline, sample, steps=steps,
                                                                     guidance_scale=scale)[0])
                     for scale in guidance_scales]
        dropped, _ = generate(pipeline, sample, steps=steps, guidance_scale=0.0)
        copy = np.repeat(sample.portrait_image[None], len(sample.targets), axis=0)
        for name, frames in (*generated, ("copy portrait", copy), ("references dropped", dropped)):
            scores[name].append(reconstruction_metrics(images(frames), real))
    return {name: {metric: float(np.mean([s[metric] for s in values])) for metric in ("l1", "psnr")}
            for name, values in scores.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("out/bench_learning"))
    parser.add_argument("--vae-steps", type=int, default=300)
    parser.add_argument("--minutes", type=float, default=8.0)
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--schedule", choices=("constant", "cosine", "linear"), default="constant",
                        help="Learning-rate schedule over --steps.")
    parser.add_argument("--validate-every", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sample-steps", type=int, default=10)
    parser.add_argument("--guidance", type=lambda text: tuple(float(v) for v in text.split(",")), default=(3.5,),
                        help="Classifier-free guidance scales of self transfer, comma-separated (1: no guidance).")
    parser.add_argument("--reference-dropout", type=float, default=0.1)
    parser.add_argument("--min-snr-gamma", type=float, default=5.0, help="0: plain MSE.")
    parser.add_argument("--triplets", type=Path, help="The triplets folder the dataset's videos include (the demo's: "
                        "WORKDIR/videos/triplets): also compare, on its held-out triplets, the generated attribute "
                        "region against the exact truth beside the portrait copy.")
    parser.add_argument("--model", type=Path, help="Measure this saved pipeline (e.g. the demo's "
                        "WORKDIR/runs/demo/pipeline) instead of training one: steps 3 and 4 only.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.model:
        pipeline, model = DurianPipeline.from_pretrained(str(args.model)), args.model
    else:
        pipeline, model = train_from_tiny_world(args), args.out / "pipeline"
        pipeline.save_pretrained(str(model))
    pipeline.set_progress_bar_config(disable=True)
    index = DatasetIndex.open(args.dataset)
    held_out = read_pairs(index, index.validation_pairs(1))
    result = baselines(pipeline, held_out, args.sample_steps, args.guidance)
    print(f"\nheld-out stage-1 samples: {len(held_out)}\n| | L1 | PSNR (dB) |\n|---|---|---|")
    for name, values in result.items():
        print(f"| {name} | {values['l1']:.3f} | {values['psnr']:.2f} |")
    if args.triplets:
        triplet_comparison(model, args.dataset, args.triplets, args.out / "triplets", args.guidance, args.sample_steps)


def train_from_tiny_world(args: argparse.Namespace) -> DurianPipeline:
    """Steps 1 and 2: the tiny world, then stage 1 from it for the budget; prints the VAE fit and the curve and
    returns the pipeline with the last checkpoint's weights."""
    start = time.perf_counter()
    init = tiny_world(args.dataset, steps=args.vae_steps)
    fit = json.loads((init.parent / FIT_FILE).read_text())
    print(f"tiny VAE: {fit['frames']} training frames, {fit['steps']} steps, {fit['seconds']:.0f} s (0 if cached "
          f"now: {time.perf_counter() - start:.0f} s), PSNR {fit['train_psnr']:.1f} dB training / "
          f"{fit['heldout_psnr']:.1f} dB held out")

    config = load_train_config({
        "name": "run", "output_dir": str(args.out), "init_from": str(init),
        "data": {"dataset": str(args.dataset), "batch_size": args.batch},
        "stages": [{"stage": 1, "steps": args.steps}], "optim": {"learning_rate": args.lr, "schedule": args.schedule},
        "reference_dropout": args.reference_dropout, "min_snr_gamma": args.min_snr_gamma or None,
        "checkpoint_every": args.validate_every, "validate_every": args.validate_every, "validation_samples": 8,
        "sample_steps": args.sample_steps, "log_every": 10})
    run = config.run_dir
    began = time.perf_counter()
    try:
        train(config, TimeLimit(config, args.minutes * 60))
    except TimeoutError:
        pass
    seconds = time.perf_counter() - began
    records = read_metrics(run)
    first = next(r["time"] for r in records if r["kind"] == "train")
    curve = [r for r in records if r["kind"] == "validation"]
    print(f"\ntrained {max(r['step'] for r in records if r['kind'] == 'train')} steps of batch {args.batch} in "
          f"{seconds:.0f} s ({args.threads} thread(s))")
    print("| step | s | held-out L1 | PSNR (dB) | gap attr. swap, inside | gap portrait swap, outside | "
          "gap dropped, inside |\n|---|---|---|---|---|---|---|")
    for r in curve:
        print(f"| {r['step']} | {r['time'] - first:.0f} | {r['l1']:.3f} | {r['psnr']:.2f} | "
              f"{r.get('reliance/all/gap_attribute_swapped_inside', float('nan')):+.4f} | "
              f"{r.get('reliance/all/gap_portrait_swapped_outside', float('nan')):+.4f} | "
              f"{r.get('reliance/all/gap_dropped_inside', float('nan')):+.4f} |")

    # The last checkpoint's weights: a run stopped by the budget exported nothing, so load them into the init.
    from safetensors.torch import load_file

    from training.checkpoints import latest_checkpoint
    pipeline = DurianPipeline.from_pretrained(str(init))
    pipeline.model.load_state_dict(load_file(latest_checkpoint(run / "checkpoints") / "model.safetensors"))
    return pipeline


def triplet_comparison(model: Path, dataset: Path, triplets: Path, out: Path, guidance_scales: tuple[float, ...],
                       steps: int) -> None:
    """The evaluation's triplet-backed cross items on stage-1 samples (`training.evaluation`, held-out triplets
    only): A's portrait wearing B's attribute against the exact truth, whole and inside the attribute region,
    beside the portrait-reference copy, at each guidance scale."""
    from data_specs.evaluation import EvalConfig
    from training.evaluation.evaluator import Evaluator
    from training.evaluation.plan import plan_evaluation

    print("\n| guidance | triplet clips | region L1, generated / copy | region PSNR (dB), generated / copy | "
          "L1, generated / copy | PSNR (dB), generated / copy |\n|---|---|---|---|---|---|")
    planned = EvalConfig(model=str(model), dataset=str(dataset), output_dir=str(out), training_stage=1,
                         steps=steps, triplets=str(triplets))
    plan = plan_evaluation(planned)  # the guidance scale does not change what is planned
    backed = [item for item in plan.items if item.truth is not None]
    for scale in guidance_scales:
        config = planned.model_copy(update={"guidance_scale": max(scale, 1.0)})
        rows = [r.row for r in Evaluator(config, plan.index, device="cpu").evaluate(backed) if r.row.status == "ok"]
        if not rows:
            print(f"| {scale:g} | 0 | {'; '.join(plan.notes)} | | | |")
            continue

        def mean(name: str, rows: list = rows) -> float:
            return float(np.mean([getattr(row, name) for row in rows]))

        print(f"| {scale:g} | {len(rows)} | {mean('truth_region_l1'):.3f} / {mean('copy_region_l1'):.3f} | "
              f"{mean('truth_region_psnr'):.2f} / {mean('copy_region_psnr'):.2f} | "
              f"{mean('truth_l1'):.3f} / {mean('copy_l1'):.3f} | {mean('truth_psnr'):.2f} / {mean('copy_psnr'):.2f} |")


if __name__ == "__main__":
    main()
