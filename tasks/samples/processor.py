"""The training-sample processor: one annotated clip in, its self-reconstruction pairs out.

Per clip and training stage it plans K pairs (`pairs.plan_pairs`), grows each portrait mask
(`expansion`, or a ControlNet image segmented by the perception segmenter), augments both
references (`augment`), masks them complementarily and, when asked, encodes VAE latents. The
models run in the flow's actors and are called once per clip with every pair's images, so a
GPU sees batches. No torch here: the data workers stay light.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from data_specs.perception import PerceptionMeta
from data_specs.sample import GENERATED, ClipMeta, ClipSample, PairSample
from data_specs.training_samples import (
    AugmentParams,
    ExpansionMeta,
    GenerateConfig,
    InpaintConfig,
    LatentConfig,
    PairMeta,
    ReferenceMeta,
    TrainingSamplesConfig,
)
from tasks.base import ModelSpec, Resources, VideoScan
from tasks.perception import Segmenter
from tasks.perception.processor import SEGMENTER
from tasks.samples import augment
from tasks.samples.expansion import condition_images, dilate_erode, draw_dilation, expand
from tasks.samples.pairs import PairPlan, clip_rng, plan_pairs
from tasks.samples.scene_references import ReferencePool, ReferencePools, plan_pool_pairs, with_references
from tasks.scenes import sample_scene_frames

if TYPE_CHECKING:  # the models' classes import torch, which the data workers never load
    from tasks.samples.diffusion import Inpainter, LatentEncoder, MaskGenerator

MASK_GENERATOR, INPAINTER, LATENT_ENCODER = "mask_generator", "inpainter", "latent_encoder"


def build_mask_generator(config: GenerateConfig) -> Any:
    from tasks.samples.diffusion import MaskGenerator

    return MaskGenerator(config)


def build_inpainter(config: InpaintConfig) -> Any:
    from tasks.samples.diffusion import Inpainter

    return Inpainter(config)


def build_latent_encoder(config: LatentConfig) -> Any:
    from tasks.samples.diffusion import LatentEncoder

    return LatentEncoder(config)


def pair_key(clip_key: str, stage: int, pair_index: int) -> str:
    return f"{clip_key}_s{stage}_p{pair_index:02d}"


@dataclass
class _Draft:
    """A pair while it is being built: what was drawn, and the images so far."""

    stage: int
    plan: PairPlan
    expansion: ExpansionMeta
    extra_mask: np.ndarray  # what the expansion adds to M_attr of the portrait reference
    attribute_params: AugmentParams
    portrait_params: AugmentParams


class TrainingSampleProcessor:
    """Turns a perceived clip (crops, pose frames, masks) into `PairSample`s.

    A clip that cannot give the requested pairs (too short, the attribute visible nowhere, no
    two frames far enough apart) is a `DataError`: a failure row, and the build goes on.
    With `pairs.references.scope` 'scene' or 'video', references come from the scene's (or video's)
    pool of perceived candidates, which `for_video` draws in a second pass over the video.
    """

    name = "training-samples"
    resources = Resources(cpus=1)

    def __init__(self, config: TrainingSamplesConfig) -> None:
        self.config = config
        models = []
        requires: tuple[str, ...] = ()
        if config.expansion.mode == "generate":  # the generated image's masks come from perception's segmenter
            generate = config.expansion.generate
            models.append(ModelSpec(MASK_GENERATOR, functools.partial(build_mask_generator, generate),
                                    generate.runtime.resources, generate.runtime.replicas))
            requires = (SEGMENTER,)
        if config.augment.enabled and config.augment.fill == "inpaint":
            inpaint = config.augment.inpaint
            models.append(ModelSpec(INPAINTER, functools.partial(build_inpainter, inpaint),
                                    inpaint.runtime.resources, inpaint.runtime.replicas))
        if config.latents is not None:
            models.append(ModelSpec(LATENT_ENCODER, functools.partial(build_latent_encoder, config.latents),
                                    config.latents.runtime.resources, config.latents.runtime.replicas))
        self.models = tuple(models)
        self.requires = requires
        self._provenance: dict[str, str] = {}
        self._vae_weights: str | None = None

    def setup(self, models: Mapping[str, Any]) -> None:
        self.generator: MaskGenerator | None = models.get(MASK_GENERATOR)
        self.segmenter: Segmenter | None = models.get(SEGMENTER)
        self.inpainter: Inpainter | None = models.get(INPAINTER)
        self.encoder: LatentEncoder | None = models.get(LATENT_ENCODER)
        self._provenance = {name: model.provenance for name, model in models.items()}
        self._vae_weights = self.encoder.weights_fingerprint if self.encoder is not None else None

    @contextlib.contextmanager
    def for_video(self, video: VideoScan) -> Iterator[Callable[[ClipSample], list[PairSample]]]:
        """The processor for one video's clips; with references from the scene or video, each clip is given its
        scene's pool (`ReferencePools`: candidates drawn in a second pass, perceived on first use)."""
        pairs = self.config.pairs
        if pairs.references.scope == "clip":
            yield self
            return
        scenes = video.scenes()
        candidates = sample_scene_frames(
            scenes, pairs.references.candidates,
            lambda scene: clip_rng(pairs.seed, video.video_id, 0 if scene is None else scene + 1),
            whole_video=pairs.references.scope == "video")
        with ReferencePools(candidates, video.through_earlier_processors, close=scenes.close) as pools:
            yield lambda sample: self(sample, pools.for_scene(sample.meta.scene_index))

    def __call__(self, sample: ClipSample, references: ReferencePool | None = None) -> list[PairSample]:
        """The clip's pairs; `references`: the pool of its scene (or video), which scopes other than 'clip' need."""
        perception = sample.meta.perception
        if perception is None or sample.pose_frames is None or not sample.masks or sample.landmarks is None:
            raise ValueError("training samples need perception's crops, pose frames, masks and landmarks "
                             "(set `perception` in the build config)")
        presence = {attribute: np.asarray(flags, bool) for attribute, flags in perception.presence.items()}
        pairs, clip = self.config.pairs, sample
        if pairs.references.scope != "clip":
            if references is None:
                raise ValueError(f"pairs.references.scope {pairs.references.scope!r} draws references from the "
                                 "scene's pool, which the unit's scene pass gives")
            # Pool positions follow the clip's: the steps below index references and targets alike.
            sample = with_references(clip, references)
        drafts = []
        for stage in pairs.stages:
            rng = clip_rng(pairs.seed, clip.key, stage)
            plans = (plan_pairs(len(clip.frames), presence, pairs, stage, rng) if pairs.references.scope == "clip"
                     else plan_pool_pairs(clip, references, pairs, stage, rng))
            for plan in plans:
                drafts.append(self._draw(sample, stage, plan, rng))
        generated = self._generate(sample, drafts)
        references = self._references(sample, drafts)
        latents = self._latents(sample, drafts, references)
        return [self._pair(sample, len(clip.frames), perception, draft, refs, generated.get(i), latents[i])
                for i, (draft, refs) in enumerate(zip(drafts, references))]

    # -------------------------------------------------------------- steps

    def _draw(self, sample: ClipSample, stage: int, plan: PairPlan, rng: np.random.Generator) -> _Draft:
        """Every random choice of one pair, in a fixed order."""
        mask = sample.masks[plan.attribute][plan.portrait_ref]
        side = sample.frames.shape[1]
        expansion = self.config.expansion
        extra = np.zeros_like(mask)
        meta: dict[str, Any] = {"mode": expansion.mode}
        if expansion.mode == "dilate":
            meta["dilate_px"], meta["erode_px"] = draw_dilation(rng, expansion.dilate, side)
            extra = dilate_erode(mask, meta["dilate_px"], meta["erode_px"])
        elif expansion.mode == "generate":
            templates = expansion.generate.prompts[plan.attribute]
            meta["prompt"] = templates[int(rng.integers(len(templates)))]
            meta["seed"] = int(rng.integers(2**31))
            meta["condition"] = expansion.generate.condition
        config = self.config.augment
        draw = (lambda: augment.draw(rng, config, side)) if config.enabled else augment.identity_params
        attribute_params, portrait_params = draw(), draw()
        area = float(mask.mean())
        return _Draft(stage, plan, ExpansionMeta(attribute_area=area, expanded_area=area, **meta), extra,
                      attribute_params, portrait_params)

    def _generate(self, sample: ClipSample, drafts: list[_Draft]) -> dict[int, np.ndarray]:
        """ControlNet images of the portrait references' keypoints; their attribute masks join the expansion."""
        if self.config.expansion.mode != "generate":
            return {}
        conditions = condition_images(self.config.expansion.generate, sample, [d.plan.portrait_ref for d in drafts])
        images = self.generator.generate(conditions, [d.expansion.prompt for d in drafts],
                                         [d.expansion.seed for d in drafts])
        masks = self.segmenter(np.asarray(images, np.uint8))
        for i, draft in enumerate(drafts):
            draft.extra_mask = masks[draft.plan.attribute][i]
        return {i: np.asarray(image, np.uint8) for i, image in enumerate(images)}

    def _references(self, sample: ClipSample, drafts: list[_Draft]) -> list[tuple[np.ndarray, ...]]:
        """Per pair: (attribute ref, M_attr, portrait ref, M_port_train, portrait unmasked), augmented.

        The steps of `augment.apply`, with the inpainting fill batched over the clip's portrait references.
        """
        warped, params = [], []  # attribute then portrait reference of each pair
        for draft in drafts:
            plan = draft.plan
            portrait_mask = expand(sample.masks[plan.attribute][plan.portrait_ref], draft.extra_mask)
            draft.expansion = draft.expansion.model_copy(update={"expanded_area": float(portrait_mask.mean())})
            for role, position, mask, drawn in (
                    (augment.ATTRIBUTE, plan.attribute_ref, sample.masks[plan.attribute][plan.attribute_ref],
                     draft.attribute_params),
                    (augment.PORTRAIT, plan.portrait_ref, portrait_mask, draft.portrait_params)):
                reference = augment.warp_reference(sample.frames[position], mask, drawn, role)
                warped.append(reference)
                params.append(drawn.model_copy(update={"exposed_area": float(reference.exposed.mean())}))
        regions = [w.paint_region() if p.fill == "inpaint" else None for w, p in zip(warped, params)]
        to_paint = [i for i, region in enumerate(regions) if region is not None]
        painted: dict[int, np.ndarray] = {}
        if to_paint:
            images = self.inpainter.inpaint(np.stack([warped[i].kept for i in to_paint]),
                                            np.stack([regions[i] for i in to_paint]),
                                            [params[i].inpaint_seed or 0 for i in to_paint])
            painted = dict(zip(to_paint, images))
        out = []
        for k, draft in enumerate(drafts):
            a, p = 2 * k, 2 * k + 1
            draft.attribute_params, draft.portrait_params = params[a], params[p]
            attribute = augment.finish(warped[a], params[a], painted.get(a))
            portrait = augment.finish(warped[p], params[p], painted.get(p))
            out.append((attribute.image, attribute.mask, portrait.image, portrait.mask, portrait.unmasked))
        return out

    def _latents(self, sample: ClipSample, drafts: list[_Draft],
                 references: list[tuple[np.ndarray, ...]]) -> list[dict[str, np.ndarray]]:
        """VAE latents of every pair's targets and masked references, in one call per clip."""
        if self.config.latents is None:
            return [{} for _ in drafts]
        images = [sample.frames[list(d.plan.targets)] for d in drafts]
        images += [np.stack([refs[0], refs[2]]) for refs in references]
        encoded = self.encoder.encode(np.concatenate(images))
        out, start = [], 0
        for draft in drafts:
            out.append({"target": encoded[start:start + len(draft.plan.targets)]})
            start += len(draft.plan.targets)
        for latents in out:
            latents["attr_ref"], latents["port_ref"] = encoded[start], encoded[start + 1]
            start += 2
        return out

    def _pair(self, sample: ClipSample, clip_frames: int, perception: PerceptionMeta, draft: _Draft,
              refs: tuple[np.ndarray, ...], generated: np.ndarray | None, latents: dict[str, np.ndarray]) -> PairSample:
        plan, meta = draft.plan, sample.meta
        attribute_ref, attribute_mask, portrait_ref, portrait_mask, portrait_image = refs
        # ArcFace points (the face detector's five, which ArcFace aligns with) where each reference's
        # augmentation warp moved them.
        portrait_keypoints, attribute_keypoints = (
            augment.warp_points(sample.landmarks[position], params, portrait_image.shape[:2])
            for position, params in ((plan.portrait_ref, draft.portrait_params),
                                     (plan.attribute_ref, draft.attribute_params)))
        expansion = draft.expansion
        if generated is not None:
            expansion = expansion.model_copy(update={"generated_image": GENERATED,
                                                     "generator": self._provenance.get(MASK_GENERATOR)})
        targets = list(plan.targets)
        sides = [box[2] - box[0] for box in perception.crop_boxes]
        pair_meta = PairMeta(
            video_id=meta.video_id, clip_key=sample.key, clip_index=meta.clip_index, source_path=meta.source_path,
            content_sha256=meta.content_sha256, config_hash=meta.config_hash, code_version=meta.code_version,
            fps=meta.fps, scene_index=meta.scene_index, reference_scope=self.config.pairs.references.scope,
            training_stage=draft.stage, pair_index=plan.pair_index, attribute=plan.attribute,
            target_positions=targets, target_frame_indices=[meta.frame_indices[t] for t in targets],
            attribute_ref=_reference_meta(meta, clip_frames, plan.attribute_ref, targets, attribute_mask,
                                          draft.attribute_params),
            portrait_ref=_reference_meta(meta, clip_frames, plan.portrait_ref, targets, portrait_mask,
                                         draft.portrait_params),
            expansion=expansion,
            keypoint_layout=perception.keypoint_layout,
            pose_render=perception.pose_render,
            face_size=float(np.median(sides)),
            seed=self.config.pairs.seed,
            provenance={**perception.provenance, **self._provenance},
            latents_vae=self._provenance.get(LATENT_ENCODER) if latents else None,
            latents_vae_weights=self._vae_weights if latents else None,
        )
        return PairSample(
            key=pair_key(sample.key, draft.stage, plan.pair_index),
            meta=pair_meta,
            targets=sample.frames[targets],
            pose_frames=sample.pose_frames[targets],
            keypoints=sample.keypoints[targets] if sample.keypoints is not None else None,
            landmarks=sample.landmarks[targets],
            attribute_ref=attribute_ref.astype(np.uint8),
            attribute_mask=attribute_mask,
            portrait_ref=portrait_ref.astype(np.uint8),
            portrait_mask=portrait_mask,
            portrait_image=portrait_image,
            portrait_keypoints=portrait_keypoints.astype(np.float32),
            attribute_keypoints=attribute_keypoints.astype(np.float32),
            generated=generated,
            latents=latents,
        )


def _reference_meta(meta: ClipMeta, clip_frames: int, position: int, targets: list[int], mask: np.ndarray,
                    params: AugmentParams) -> ReferenceMeta:
    """What a pair records of one reference: where it comes from, and how far it is from the targets."""
    time_s = meta.time_s[position]
    return ReferenceMeta(position=position if position < clip_frames else None,
                         frame_index=meta.frame_indices[position], time_s=time_s,
                         gap_s=min(abs(time_s - meta.time_s[t]) for t in targets), mask_area=float(mask.mean()),
                         augmentation=params)
