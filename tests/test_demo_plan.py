"""The demo's video plan: its cross-transfer triplets are all held out (A, B and the truth in the evaluation split)
and back an evaluation clip; the split's `eval_groups` pin a group to the evaluation side whatever the draw."""

from __future__ import annotations

from pathlib import Path

from data_specs.config import BuildConfig
from data_specs.evaluation import EvalConfig
from data_specs.spec import load_spec
from data_specs.split import EVAL, TRAIN, SplitConfig, split_key, split_of
from flows.cli.demo import DEMO_CONFIGS, DEMO_TRIPLETS, TRIPLET_GROUP, triplet_seed, write_video_list
from tasks.sources import list_videos
from tasks.synthetic import plan_triplets


def test_eval_groups_are_held_out_whatever_the_draw_and_move_no_other_video():
    drawn = SplitConfig(eval_fraction=0.2, seed=0)
    pinned = SplitConfig(eval_fraction=0.2, seed=0, eval_groups=("triplets",))
    names = [f"person-{i}" for i in range(40)]
    assert {split_of(split_key(name, None, ""), drawn) for name in names} == {TRAIN, EVAL}
    for name in names:  # a group not pinned keeps its drawn side; so does a video without a group
        assert split_of(split_key(name, None, ""), pinned) == split_of(split_key(name, None, ""), drawn)
        assert split_of(split_key(None, name, ""), pinned) == split_of(split_key(None, name, ""), drawn)
    train_drawn = next(s for s in range(100) if split_of(split_key("triplets", None, ""),
                                                         SplitConfig(eval_fraction=0.2, seed=s)) == TRAIN)
    assert split_of(split_key("triplets", None, ""),
                    SplitConfig(eval_fraction=0.2, seed=train_drawn, eval_groups=("triplets",))) == EVAL
    # A video whose content hash spells the pinned name is not the group: only a group key is pinned.
    assert split_of(split_key(None, "triplets", ""), SplitConfig(eval_fraction=0.0, eval_groups=("triplets",))) == TRAIN


def test_the_demo_video_list_holds_out_every_triplet_video(tmp_path: Path):
    videos = tmp_path / "videos"
    triplet_files = [videos / "triplets" / f"triplet_0000_{role}.mp4" for role in ("a", "b", "truth")]
    others = [videos / "portrait_0000.mp4", videos / "edge_cases" / "spaces and ünïcode name.mp4"]
    for path in triplet_files + others:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"listed, not decoded")
    (videos / "triplets" / "triplets.json").write_text("{}")

    video_list = write_video_list(videos, tmp_path / "videos.csv")
    config = load_spec(BuildConfig, DEMO_CONFIGS / "demo_build.yaml",
                       options={"inputs.source": video_list, "output_dir": tmp_path / "dataset"})
    refs = list_videos(config.inputs)
    assert sorted(Path(ref.uri) for ref in refs) == sorted(p.resolve() for p in triplet_files + others)
    group_of = {Path(ref.uri).name: ref.group for ref in refs}
    assert group_of == {**{p.name: TRIPLET_GROUP for p in triplet_files}, **{p.name: None for p in others}}
    # The build's decision (tasks.unit): every triplet video on the evaluation side, whatever its content.
    for ref in refs:
        if ref.group:
            assert split_of(split_key(ref.group, "any content", ref.video_id), config.split) == EVAL
    # The same ids a folder listing gives: the list changes only the groups.
    folder = load_spec(BuildConfig, DEMO_CONFIGS / "demo_build.yaml",
                       options={"inputs.source": videos, "output_dir": tmp_path / "dataset"})
    assert sorted(ref.video_id for ref in list_videos(folder.inputs)) == sorted(ref.video_id for ref in refs)


def test_the_demo_triplets_back_an_evaluation_clip():
    seed = triplet_seed(DEMO_TRIPLETS, first=12)
    specs = plan_triplets(DEMO_TRIPLETS, seed)
    assert seed >= 12 and all(spec.attribute in spec.attributes_a for spec in specs)  # A has the clip to regenerate
    evaluation = load_spec(EvalConfig, DEMO_CONFIGS / "demo_evaluate.yaml",
                           options={"model": "m", "dataset": "d", "output_dir": "o"})
    assert evaluation.cross_transfer  # the triplet's item is a cross item
