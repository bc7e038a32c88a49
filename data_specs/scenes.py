"""Contracts of scene detection and of drawing a pair's references from across its scene.

Scenes (`SceneConfig`): every video is cut into shots once, by PySceneDetect's adaptive or content
detector run on small copies of the frames the build decodes anyway, and clips are cut inside
scenes only, so a clip never straddles a cut (a hard cut, or a zoom cut to the same person). Each
clip records the index of its scene within its video.

References (`ReferenceConfig`, in `training_samples.pairs.references`): the paper draws the two
reference frames of a self-reconstruction pair from the whole portrait video, so pose, expression
and lighting differ from the targets; references from the targets' own second invite the model to
copy. With scope `scene` (or `video`) a per-video pass keeps a bounded, seeded set of candidate
frames per scene, perceives them, and each pair draws its references among the candidates at least
`min_gap_s` from every target.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from data_specs.spec import Spec

SceneDetectorName = Literal["content", "adaptive", "none"]
ReferenceScope = Literal["clip", "scene", "video"]


class SceneConfig(Spec):
    """How a video is cut into scenes before it is cut into clips."""

    detector: SceneDetectorName = Field(
        "adaptive", description="'adaptive': PySceneDetect's AdaptiveDetector (a cut where the mean HSV change between "
        "consecutive frames is `adaptive_threshold` times its neighbours' and at least `min_content_val`: it finds "
        "zoom cuts on a steady background, and is steadier under camera motion); 'content': its ContentDetector (a "
        "cut where the change exceeds the fixed `threshold`); 'none': the whole video is one scene.")
    threshold: float = Field(27.0, gt=0, le=255, description="ContentDetector: the mean HSV change (0-255) that makes "
                             "a cut (PySceneDetect's default).")
    adaptive_threshold: float = Field(3.0, gt=0, description="AdaptiveDetector: how many times its neighbours' "
                                      "change a frame's change must be to make a cut.")
    min_content_val: float = Field(15.0, ge=0, le=255, description="AdaptiveDetector: the least mean HSV change of "
                                   "a cut.")
    min_scene_s: float = Field(0.5, ge=0, le=60, description="Shortest scene, in seconds: a cut closer than this to "
                               "the previous one is dropped (flashes). The content detector names a cut up to this "
                               "long after it, so it holds this many seconds of decoded frames; the adaptive "
                               "detector holds 2 frames.")
    analysis_side: int = Field(128, ge=16, le=4096, description="Frames are scaled down to this longer side for "
                               "detection, never up. The score is a mean over pixels, which barely depends on the "
                               "resolution; 128 px costs a quarter of PySceneDetect's 256 (BENCHMARKS.md).")


class ReferenceConfig(Spec):
    """Where a pair's attribute and portrait references come from."""

    scope: ReferenceScope = Field(
        "scene", description="'scene': any frame of the clip's scene; 'video': any frame of the video (references "
        "may then come from another shot); 'clip': frames of the clip itself, `min_ref_distance` apart (no scene "
        "pass, no gap to the targets).")
    min_gap_s: float = Field(1.0, ge=0, le=3600, description="Scopes 'scene' and 'video': least time, in seconds, "
                             "between a reference and every target frame of its pair.")
    candidates: int = Field(8, ge=1, le=256, description="Scopes 'scene' and 'video': reference candidates kept per "
                            "scene (per video for 'video'), drawn uniformly by a generator seeded with (seed, video, "
                            "scene) and perceived as one-frame clips. Memory: this many decoded frames and their "
                            "crops per video at a time.")
