"""The dataset card: counts checked against the manifests, rebalance weights, plots, Markdown, edge cases."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import matplotlib.image
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from data_specs.layout import OutputLayout
from data_specs.schemas import ClipRow, FailureRow, SampleRow, ShardRow, VideoRow, to_table, write_table_atomic
from tasks.card import PLOT_FILES, DatasetCard, write_dataset_card
from tasks.errors import failure_kind

STAMP = {"config_hash": "c0ffee" * 4, "code_version": "0.1.0+test", "unit_id": "unit-0"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Skewed like the paper's data: many hair samples, few hat samples.
SKEW = {"hair": 40, "eyeglasses": 12, "beard": 8, "hat": 5}
FAILURES = [("v9", "decode", "cannot decode video: /data/v9.mp4"),
            ("v8", "decode", "cannot decode video: /data/v8.mp4"),
            ("v7-clip-0", "perception", "no face found (3 of 4 frames)"),
            ("v6", "probe", "not a video file")]


def lineage(video_id: str) -> dict[str, str]:
    return {"source_path": f"/data/{video_id}.mp4", "content_sha256": "ab" * 32, **STAMP}


def write_build(root: Path, pairs: dict[str, int], failures: list[tuple[str, str, str]],
                videos: int = 4, crop_scales: tuple[float, ...] | None = None) -> None:
    """Manifests of a build with `videos` ok videos (one clip and clip sample each) plus the given pair samples,
    spread over the videos (unevenly) and both training stages, and two failed/partial videos; `crop_scales`:
    each clip's `source_px_per_output_px` (None: a build without perception)."""
    layout = OutputLayout(root)
    ids = [f"v{i}" for i in range(videos)]
    video_rows = [VideoRow(video_id=v, status="ok", num_clips=1, **lineage(v)) for v in ids]
    video_rows += [VideoRow(video_id="v9", status="failed", **lineage("v9")),
                   VideoRow(video_id="v5", status="partial", num_clips=0, **lineage("v5"))]
    scales = crop_scales or (None,) * videos
    clips = [ClipRow(clip_id=f"{v}-clip-0", video_id=v, clip_index=0, frame_indices=[0, 1, 2, 3],
                     time_start_s=0.0, time_end_s=0.33, fps=12.0, scene_index=0, source_px_per_output_px=scale,
                     **lineage(v))
             for v, scale in zip(ids, scales, strict=True)]
    samples = [SampleRow(sample_key=f"{v}-clip-0", clip_id=f"{v}-clip-0", video_id=v, shard="s-00000.tar",
                         fields=["frames.npy"], frame_indices=[0, 1, 2, 3], **lineage(v)) for v in ids]
    n = 0
    for attribute, count in pairs.items():
        for i in range(count):
            video = ids[0 if n % 2 == 0 or videos == 1 else 1 + n % (videos - 1)]  # v0 gets half of them
            samples.append(SampleRow(
                sample_key=f"{video}-{attribute}-{i}", clip_id=f"{video}-clip-0", video_id=video,
                shard=f"s-{n // 20:05d}.tar", fields=["reference.png", "target.png"], frame_indices=[i % 4],
                kind="pair", training_stage=1 + i % 3 // 2, attribute=attribute, pair_index=i,
                attribute_mask_area=0.05 + 0.4 * ((i * 7) % 10) / 10,
                expanded_mask_area=0.2 + 0.5 * ((i * 3) % 10) / 10,
                expansion=("none", "dilate", "generate")[i % 3], face_size=60.0 + (i * 13) % 90,
                reference_gap_s=1.0 + (i % 5) / 4, **lineage(video)))
            n += 1
    failure_rows = [FailureRow(item_id=item, failed_in=failed_in, reason=reason, **lineage(item.split("-")[0]))
                    for item, failed_in, reason in failures]
    tables = {"videos": video_rows, "clips": clips, "samples": samples, "failures": failure_rows,
              "shards": [ShardRow(shard="s-00000.tar", sha256="0" * 64, size_bytes=1, num_samples=len(samples),
                                  **STAMP)]}
    for name, rows in tables.items():
        write_table_atomic(to_table(name, rows), layout.manifest(name))


def assert_valid_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] >= 200 and image.shape[1] >= 300
    assert image[..., :3].std() > 0.01  # not a blank canvas


def assert_no_temporaries(card: Path) -> None:
    leftovers = [p.name for p in card.iterdir() if p.name.startswith(".") or "partial" in p.name]
    assert not leftovers


@pytest.fixture(scope="module")
def skewed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DatasetCard]:
    """A skewed build and its card, written once for the module."""
    root = tmp_path_factory.mktemp("skewed")
    write_build(root, SKEW, FAILURES, crop_scales=(0.8, 1.2, 2.0, 3.1))
    return root, write_dataset_card(root)


def test_counts_match_the_manifests(skewed: tuple[Path, DatasetCard]) -> None:
    root, card = skewed
    layout = OutputLayout(root)
    samples = pq.read_table(layout.manifest("samples"))
    pairs = samples.filter(pc.equal(samples["kind"], "pair"))

    def tally(column: str) -> dict:
        return {row["values"]: row["counts"] for row in pc.value_counts(pairs[column]).to_pylist()}

    assert card.samples_per_attribute == tally("attribute") == SKEW
    assert card.samples_per_stage == tally("training_stage")
    assert set(card.samples_per_stage) == {1, 2}
    assert card.samples_per_video == tally("video_id")
    assert len(set(card.samples_per_video.values())) > 1  # the spread really is uneven
    assert list(card.samples_per_attribute) == ["hair", "eyeglasses", "beard", "hat"]  # largest first
    failures = pq.read_table(layout.manifest("failures")).to_pylist()
    assert card.rejections == dict(Counter(failure_kind(f["failed_in"], f["reason"]) for f in failures))
    assert card.rejections["decode: cannot decode video"] == 2


def test_rebalance_weights_equalise_the_attributes(skewed: tuple[Path, DatasetCard]) -> None:
    _, card = skewed
    counts, weights = card.samples_per_attribute, card.rebalance_weights
    assert set(weights) == set(counts)
    mass = {name: counts[name] * weights[name] for name in counts}
    assert max(mass.values()) == pytest.approx(min(mass.values()))
    assert sum(mass.values()) == pytest.approx(sum(counts.values()))  # mean weight per sample is 1
    assert weights["hat"] / weights["hair"] == pytest.approx(SKEW["hair"] / SKEW["hat"])


def test_plots_and_markdown(skewed: tuple[Path, DatasetCard]) -> None:
    root, card = skewed
    card_dir = OutputLayout(root).card
    assert set(card.plots) == set(PLOT_FILES)
    for path in card.plots.values():
        assert path.parent == card_dir
        assert_valid_png(path)
    assert card.markdown_path == card_dir / "README.md"
    assert card.markdown_path.read_text() == card.markdown
    text = card.markdown
    for attribute in SKEW:
        assert attribute in text
    assert "hair has 8.0x the samples of hat" in text
    for kind in card.rejections:
        assert kind in text
    assert "`attribute` column" in text and "samples.parquet" in text
    assert "ok 4, partial 1, failed 1" in text
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert sorted(links) == sorted(p.name for p in card.plots.values())
    assert all((card_dir / link).is_file() for link in links)
    assert f"{len(card.samples_per_video)} of the build's 6 videos" in text
    # The crops' scale from source pixels: median (p10-p90) of the clips' values, and how many are enlarged.
    assert "## Crop resolution" in text and "1.60 (0.92–2.77). 1 of 4 clips are enlarged" in text
    # Scenes, and the references' time to the targets: per stage and over all pairs (1.0 to 2.0 s here).
    assert "| scenes with clips | 4 |" in text
    assert "## References" in text and f"| **all** | {sum(SKEW.values())} | 1.50 (1.00–2.00) | 1.00 |" in text
    assert_no_temporaries(card_dir)


def test_no_pair_samples_and_no_failures(tmp_path: Path) -> None:
    write_build(tmp_path, {}, [FAILURES[0]])
    first = write_dataset_card(tmp_path)
    assert set(first.plots) == {"videos", "rejections"}

    write_build(tmp_path, {}, [])  # rebuilt without failures: the old rejections plot must go
    card = write_dataset_card(tmp_path)
    card_dir = OutputLayout(tmp_path).card
    assert card.samples_per_attribute == {} and card.samples_per_stage == {} and card.rebalance_weights == {}
    assert card.rejections == {}
    assert card.samples_per_video == {f"v{i}": 1 for i in range(4)}  # clip samples
    assert set(card.plots) == {"videos"}
    assert sorted(p.name for p in card_dir.iterdir()) == ["README.md", PLOT_FILES["videos"]]
    assert_valid_png(card.plots["videos"])
    assert "no training samples" in card.markdown and "No rejections." in card.markdown
    assert_no_temporaries(card_dir)


def test_single_attribute_and_other_files_in_card_survive(tmp_path: Path) -> None:
    write_build(tmp_path, {"hat": 3}, [], videos=1)
    card_dir = OutputLayout(tmp_path).card
    card_dir.mkdir(parents=True)
    (card_dir / "contact_sheet.png").write_bytes(PNG_MAGIC)  # written by another task: not the card's to delete
    card = write_dataset_card(tmp_path)
    assert card.samples_per_attribute == {"hat": 3}
    assert card.rebalance_weights == {"hat": pytest.approx(1.0)}
    assert "only one attribute (hat)" in card.markdown
    assert (card_dir / "contact_sheet.png").is_file()
    assert_no_temporaries(card_dir)
