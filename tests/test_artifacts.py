"""What the flows show in the Prefect UI, rendered without Prefect: tables of strings, Markdown with images inside."""

from __future__ import annotations

import base64
import math
from pathlib import Path

import numpy as np

from data_specs.layout import BuildSummary
from flows.artifacts import (
    build_counts_table,
    build_rejections_table,
    build_summary_markdown,
    image_markdown,
    table_rows,
)


def test_table_cells_are_strings_with_floats_shortened_and_none_empty():
    rows = table_rows([{"attribute": "hair", "clips": 3, "l1": 0.123456, "fid": None, "psnr": math.inf}])
    assert rows == [{"attribute": "hair", "clips": "3", "l1": "0.1235", "fid": "", "psnr": "inf"}]


def test_a_builds_rejections_are_counted_per_place_they_failed_in():
    summary = BuildSummary(output_dir="/data/ds", config_hash="c0ffee", code_version="v1", units=3, units_skipped=1,
                           units_failed=0, videos=5, videos_failed=2, videos_partial=1, clips=9, samples=7,
                           frames=120, shards=2, shard_bytes=3_500_000,
                           failures_by_reason={"perception: face too small": 4, "perception: no face": 1,
                                               "probe: not a video": 2})
    assert build_rejections_table(summary) == [
        {"failed_in": "perception", "rejected": "5", "reasons": "face too small (4); no face (1)"},
        {"failed_in": "probe", "rejected": "2", "reasons": "not a video (2)"},
        {"failed_in": "none (written)", "rejected": "", "reasons": "7 samples of 9 clips"}]
    counts = {row["what"]: row["count"] for row in build_counts_table(summary)}
    assert counts["videos (failed / partial)"] == "5 (2 / 1)" and counts["shards"] == "2 (3.5 MB)"
    assert counts["failed - probe: not a video"] == "2"
    markdown = build_summary_markdown(summary)
    assert "- 7 samples from 3 of 5 videos (1 only partly decodable), in 2 shards (3.5 MB)" in markdown
    assert "| perception: face too small | 4 |" in markdown
    assert "No failures." in build_summary_markdown(summary.model_copy(update={"failures_by_reason": {}}))


def test_an_image_is_embedded_in_the_markdown(tmp_path: Path):
    import cv2

    plot = tmp_path / "loss.png"
    cv2.imwrite(str(plot), np.zeros((4, 4, 3), np.uint8))
    markdown = image_markdown("Training loss", plot)
    assert markdown.startswith("# Training loss\n\n![training loss](data:image/png;base64,")
    assert base64.b64encode(plot.read_bytes()).decode() in markdown
