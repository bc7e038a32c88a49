"""The split by identity: a manifest's `group` column keeps every video of a person or take on one side."""

from __future__ import annotations

import hashlib
import random
import re
from pathlib import Path

from data_specs.schemas import read_table
from data_specs.split import EVAL, TRAIN, SplitConfig, split_key, split_of
from tasks.card import write_dataset_card
from tasks.manifests import publish_manifests
from tasks.sources import list_videos, plan_units
from tasks.unit import run_unit
from tests.conftest import small_config


def _sides(videos: list[tuple[str, str]], config: SplitConfig) -> dict[str, str]:
    """video content hash -> side, for (group, content hash) pairs."""
    return {sha: split_of(split_key(group, sha, sha), config) for group, sha in videos}


def test_no_group_straddles_the_split_and_adding_videos_moves_none():
    rng = random.Random(0)
    config = SplitConfig(eval_fraction=0.2, seed=3)

    def video() -> str:
        return hashlib.sha256(rng.randbytes(16)).hexdigest()

    # Like NeRSemble: 16 cameras per take; like VFHQ: a varying number of clips per person.
    videos = [(f"person-{p}", video()) for p in range(300) for _ in range(rng.choice((1, 3, 16)))]
    sides = _sides(videos, config)
    by_group: dict[str, set[str]] = {}
    for group, sha in videos:
        by_group.setdefault(group, set()).add(sides[sha])
    assert all(len(group_sides) == 1 for group_sides in by_group.values())
    held_out = sum(group_sides == {EVAL} for group_sides in by_group.values()) / len(by_group)
    assert 0.13 < held_out < 0.27  # the fraction is drawn per group, not per file
    # Split by file instead, most multi-file people would straddle: what the groups prevent.
    by_file = {group: {split_of(sha, config) for g, sha in videos if g == group} for group in list(by_group)[:60]}
    assert sum(len(group_sides) == 2 for group_sides in by_file.values()) >= 5

    # More takes of known people and new people: no video already listed changes side.
    grown = videos + [(f"person-{rng.randrange(400)}", video()) for _ in range(500)]
    assert {sha: side for sha, side in _sides(grown, config).items() if sha in sides} == sides


def test_a_manifest_group_decides_the_split_and_the_card_counts_groups_per_side(videos: Path, tmp_path: Path):
    good = sorted((videos / "good").glob("*.mp4"))
    groups = {path: ("alice" if index < 3 else "bob") for index, path in enumerate(good)}
    # A seed that puts the two people on different sides, found the way the build decides it.
    seed = next(s for s in range(100) if {split_of(split_key(g, None, ""), SplitConfig(eval_fraction=0.5, seed=s))
                                          for g in ("alice", "bob")} == {TRAIN, EVAL})
    manifest = tmp_path / "list.csv"
    manifest.write_text("path,group\n" + "".join(f"{path},{group}\n" for path, group in groups.items()))
    config = small_config(manifest, tmp_path / "out", split={"eval_fraction": 0.5, "seed": seed},
                          execution={"videos_per_unit": 100})
    refs = list_videos(config.inputs)
    assert [ref.group for ref in refs] == [groups[Path(ref.uri)] for ref in refs]
    reports = [run_unit(unit, config) for unit in plan_units(refs, config)]
    publish_manifests(config, reports, [])

    samples = read_table("samples", config.output_path / "manifests" / "samples.parquet").to_pylist()
    side_of = {row["group"]: set() for row in samples}
    for row in samples:
        side_of[row["group"]].add(row["split"])
    assert side_of == {"alice": {split_of(split_key("alice", None, ""), config.split)},
                       "bob": {split_of(split_key("bob", None, ""), config.split)}}
    counts = {side: sum(row["split"] == side for row in samples) for side in (TRAIN, EVAL)}
    card = write_dataset_card(config.output_path).markdown
    for side in (TRAIN, EVAL):
        assert re.search(rf"\| {side} split: samples / groups [^|]*\| {counts[side]} / 1 \|", card), card
