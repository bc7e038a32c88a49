"""Generating and measuring: an `Evaluator` holds the pipeline and the configured extractors (one per Ray actor)
and turns planned items into `ClipResult`s (`data_specs.evaluation`): a typed `EvalClipRow` each, plus the
features the distribution metrics pool in `training.evaluation.report`.

Self transfer reconstructs each clip with `training.reconstruction` (the code path of the validation pass); its
pixel metrics are `training.metrics`', the network-based ones `training.evaluation.metrics`'. A clip that fails
becomes a row with status "failed" and its reason; the others are evaluated. The generated frames of each clip are
kept under `output_dir/generated/` for the report's video grid.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from data_specs.evaluation import SELF, ClipResult, EvalClipRow, EvalConfig, Transfer
from data_specs.files import publishing
from data_specs.perception import KEYPOINT_LAYOUTS, arcface_points
from data_specs.sample import PairSample
from training.data import DatasetIndex, read_pairs
from training.evaluation.metrics import cosine_similarity_per_pair, lpips_per_sample, region_metrics_per_sample
from training.evaluation.plan import EvalItem
from training.metrics import reconstruction_metrics_per_sample
from training.reconstruction import generate, images

__all__ = ["GENERATED_DIR", "Evaluator", "failed", "generated_path"]

log = logging.getLogger(__name__)

GENERATED_DIR = "generated"


def generated_path(output_dir: str | Path, sample_key: str, transfer: Transfer) -> Path:
    """Where the generated frames and region of a clip are kept (an .npz of `generated`, `region`)."""
    return Path(output_dir) / GENERATED_DIR / f"{sample_key}.{transfer}.npz"


def _row(item: EvalItem) -> EvalClipRow:
    """The item's row before it is measured: its samples, status "failed" until it is."""
    return EvalClipRow(sample_key=item.target.key, video_id=item.target.video_id, attribute=item.target.attribute,
                       transfer=item.transfer, attribute_sample_key=item.attribute_from.key,
                       attribute_video_id=item.attribute_from.video_id,
                       truth_sample_key=item.truth.key if item.truth else None,
                       truth_video_id=item.truth.video_id if item.truth else None)


def failed(item: EvalItem, reason: str) -> ClipResult:
    """The result of an item that could not be evaluated: a failure row with its reason."""
    return ClipResult(row=replace(_row(item), reason=reason))


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(np.mean(cosine_similarity_per_pair(a, b.expand_as(a))))


def _means(scores: dict[str, list[float]], prefix: str = "") -> dict[str, float]:
    return {f"{prefix}{name}": float(np.mean(values)) for name, values in scores.items()}


class Evaluator:
    """The pipeline and the configured extractors, loaded once (a Ray actor holds one), generating and measuring
    clips. On CUDA the pipeline runs in bf16 and the extractors in fp32."""

    def __init__(self, config: EvalConfig, index: DatasetIndex, device: str | None = None) -> None:
        from model.pipeline import DurianPipeline
        from training.evaluation import extractors as ex

        self.config, self.index = config, index
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.pipeline = DurianPipeline.from_pretrained(config.model, dtype=dtype).to(self.device)
        self.pipeline.set_progress_bar_config(disable=True)
        paths, dev = config.extractors, self.device
        self.lpips = ex.LpipsNet.load(paths.lpips, paths.lpips_net, device=dev) if paths.lpips else None
        self.inception = ex.InceptionFeatures.load(paths.inception, device=dev) if paths.inception else None
        self.video = ex.VideoFeatures.load(paths.video, paths.video_arch, device=dev) if paths.video else None
        self.clip = ex.ClipImageFeatures.load(paths.clip, device=dev) if paths.clip else None
        self.dino = ex.DinoFeatures.load(paths.dino, device=dev) if paths.dino else None
        self.identity = (ex.IdentityFeatures.load(paths.arcface, paths.identity, device=dev)
                         if paths.arcface else None)

    def evaluate(self, items: list[EvalItem]) -> list[ClipResult]:
        """Generate and measure each item; a failure is the item's row with its reason."""
        needed = {p.key: p for i in items for p in (i.target, i.attribute_from, i.truth) if p is not None}
        samples = {s.key: s for s in read_pairs(self.index, list(needed.values()))}
        results = []
        for item in items:
            try:
                keys = [p.key for p in (item.target, item.attribute_from, item.truth) if p is not None]
                missing = [k for k in keys if k not in samples]
                if missing:
                    raise ValueError(f"sample {missing[0]} could not be read (its shard is missing or corrupt)")
                results.append(self._measure(item, samples[item.target.key], samples[item.attribute_from.key],
                                             samples[item.truth.key] if item.truth else None))
            except Exception as err:  # noqa: BLE001 - one clip's failure is its row; the others go on
                log.warning("evaluation of %s (%s) failed: %s", item.target.key, item.transfer, err)
                results.append(failed(item, f"{type(err).__name__}: {err}"))
        return results

    def _measure(self, item: EvalItem, sample: PairSample, donor: PairSample, truth: PairSample | None
                 ) -> ClipResult:
        config = self.config
        if truth is not None:  # A's portrait following the truth video's motion: its frames are the answer
            sample = replace(sample, targets=truth.targets, pose_frames=truth.pose_frames, keypoints=truth.keypoints,
                             landmarks=truth.landmarks)
        started = time.perf_counter()
        generated, region = generate(self.pipeline, sample, None if item.transfer == SELF else donor,
                                     frames=config.frames, steps=config.steps, guidance_scale=config.guidance_scale,
                                     seed=config.seed)
        measured = time.perf_counter()
        fake, real = images(generated), images(sample.targets[:len(generated)])
        result = ClipResult(row=_row(item))
        metrics: dict[str, float] = {}
        if item.transfer == SELF:
            metrics |= _means(reconstruction_metrics_per_sample(fake, real))
            if self.lpips is not None:
                metrics["lpips"] = float(np.mean(lpips_per_sample(fake, real, self.lpips)))
            if self.inception is not None:
                result.inception_generated = self.inception.features(fake).cpu().numpy()
                result.inception_real = self.inception.features(real).cpu().numpy()
        else:
            reference = images(donor.attribute_ref[None])
            masked = fake * torch.from_numpy(np.asarray(region, np.float32))[None, None]
            if self.clip is not None:
                metrics["clip_i"] = _cosine(self.clip.features(masked), self.clip.features(reference))
            if self.dino is not None:
                metrics["dino"] = _cosine(self.dino.features(masked), self.dino.features(reference))
            if self.identity is not None and sample.keypoints is not None:
                if sample.landmarks is not None:  # the detector's five points, which ArcFace aligns with
                    points = sample.landmarks[:len(generated)]
                else:  # a dataset written before samples carried landmarks
                    layout = KEYPOINT_LAYOUTS[sample.meta.keypoint_layout]
                    points = np.stack([arcface_points(k, layout) for k in sample.keypoints[:len(generated)]])
                portrait = self.identity.features(images(sample.portrait_image[None]),
                                                  keypoints=sample.portrait_keypoints[None])
                metrics["id_similarity"] = _cosine(self.identity.features(fake, keypoints=points), portrait)
            if truth is not None:
                metrics |= self._against_truth(fake, real, sample.portrait_image, truth.portrait_mask)
            if self.video is not None:
                result.video_generated = self.video.features(fake.transpose(0, 1)[None]).cpu().numpy()
                result.video_real = self.video.features(real.transpose(0, 1)[None]).cpu().numpy()
        result.row = replace(result.row, **metrics, frames=len(generated), status="ok", generate_s=measured - started,
                             measure_s=time.perf_counter() - measured)
        path = generated_path(config.output_dir, item.target.key, item.transfer)
        path.parent.mkdir(parents=True, exist_ok=True)
        with publishing(path) as partial:
            with open(partial, "wb") as handle:
                np.savez_compressed(handle, generated=generated, region=np.asarray(region, np.float32))
        return result

    def _against_truth(self, generated: torch.Tensor, truth: torch.Tensor, portrait: np.ndarray,
                       region: np.ndarray) -> dict[str, float]:
        """The truth_* and copy_* columns: the generated frames and the portrait-reference copy (the portrait
        frame shown for every target) against the truth frames, whole and inside the truth's attribute region."""
        copy = images(np.repeat(portrait[None], len(truth), axis=0))
        columns = {}
        for who, frames in (("truth", generated), ("copy", copy)):
            scores = reconstruction_metrics_per_sample(frames, truth)
            if self.lpips is not None:
                scores["lpips"] = lpips_per_sample(frames, truth, self.lpips)
            if region.any():
                scores |= region_metrics_per_sample(frames, truth, torch.from_numpy(np.asarray(region)))
            columns |= _means(scores, f"{who}_")
        return columns
