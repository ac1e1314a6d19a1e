"""Tests of `mllm data stats`: counts, the whitespace-word histogram (and that it says so), the PNG plot."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from data_tools.schema import load_records
from data_tools.stats import compute_stats, format_stats, histogram, percentile, plot_histogram
from data_tools.tokens import whitespace_lengths


def _data(tmp_path: Path) -> Path:
    records = [
        {
            "id": "a",
            "image": "x.png",
            "conversations": [
                {"from": "human", "value": "<image>\nWhat is it?"},
                {"from": "gpt", "value": "A red square."},
            ],
        },
        {
            "id": "b",
            "image": ["x.png", "y.png"],
            "conversations": [
                {"from": "human", "value": "<image> <image> Compare them."},
                {"from": "gpt", "value": "Same."},
                {"from": "human", "value": "Sure?"},
                {"from": "gpt", "value": "Yes."},
            ],
        },
        {
            "id": "c",
            "conversations": [
                {"from": "system", "value": "Be brief."},
                {"from": "human", "value": "Hi"},
                {"from": "gpt", "value": "Hello"},
            ],
        },
    ]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_counts_and_word_lengths(tmp_path: Path) -> None:
    records = load_records(_data(tmp_path))
    lengths = whitespace_lengths(records)
    assert lengths.values == [7, 7, 4]
    stats = compute_stats(records, lengths)
    assert (
        stats.records,
        stats.with_images,
        stats.multi_image,
        stats.images,
        stats.turns,
        stats.exchanges,
    ) == (3, 2, 1, 3, 9, 4)
    text = format_stats(stats, "d.jsonl", bins=4)
    assert "d.jsonl: 3 records (2 with images, 1 text-only, 1 multi-image)" in text
    assert "lengths in whitespace words (no --model)" in text
    assert "min 4, median 7, mean 6.0, p95 7, max 7" in text
    assert "images: 3" in text and "turns: 9 (4 exchanges, 1.33 per record)" in text


def test_histogram_and_percentile() -> None:
    assert histogram([]) == []
    assert histogram([5, 5, 5]) == [(5, 5, 3)]
    rows = histogram([1, 2, 3, 10], bins=3)
    assert rows == [(1, 4, 3), (5, 8, 0), (9, 12, 1)]
    assert sum(c for _, _, c in histogram(list(range(1000)), bins=7)) == 1000
    assert percentile([3, 1, 2, 4], 50) == 2 and percentile([3, 1, 2, 4], 100) == 4


def test_plot_is_a_png(tmp_path: Path) -> None:
    records = load_records(_data(tmp_path))
    out = tmp_path / "plots" / "lengths.png"
    plot_histogram(whitespace_lengths(records), out, "lengths")
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (700, 400)
