"""`mllm data stats`: record, image and turn counts of a LLaVA file and a histogram of record lengths, as text
and optionally as a PNG plot (matplotlib's Agg canvas, no display needed)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from data_tools.llava import HUMAN, Record
from data_tools.tokens import Lengths


@dataclass(frozen=True)
class DataStats:
    """Counts over a file's records plus their lengths."""

    records: int
    with_images: int
    multi_image: int
    images: int
    turns: int
    exchanges: int  # human turns
    lengths: Lengths


def compute_stats(records: Sequence[Record], lengths: Lengths) -> DataStats:
    """Counts of `records`; `lengths` holds one value per record."""
    return DataStats(
        records=len(records),
        with_images=sum(1 for r in records if r.images),
        multi_image=sum(1 for r in records if len(r.images) > 1),
        images=sum(len(r.images) for r in records),
        turns=sum(len(r.turns) for r in records),
        exchanges=sum(1 for r in records for t in r.turns if t.role == HUMAN),
        lengths=lengths,
    )


def histogram(values: Sequence[int], bins: int = 10) -> list[tuple[int, int, int]]:
    """(low, high, count) for `bins` equal-width integer ranges covering min..max (inclusive bounds)."""
    if not values:
        return []
    low, high = min(values), max(values)
    width = max(1, math.ceil((high - low + 1) / bins))
    edges = list(range(low, high + 1, width))
    counts = [0] * len(edges)
    for value in values:
        counts[(value - low) // width] += 1
    return [(edge, edge + width - 1, count) for edge, count in zip(edges, counts)]


def percentile(values: Sequence[int], q: float) -> int:
    """Nearest-rank percentile (q in 0..100) of non-empty `values`."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def format_stats(stats: DataStats, name: str, bins: int = 10, bar_width: int = 40) -> str:
    """The text report."""
    n = stats.records
    lines = [
        f"{name}: {n} records ({stats.with_images} with images, {n - stats.with_images} text-only, "
        f"{stats.multi_image} multi-image)",
        f"images: {stats.images}",
        f"turns: {stats.turns} ({stats.exchanges} exchanges, {stats.exchanges / n if n else 0:.2f} per record)",
        f"lengths in {stats.lengths.source}",
    ]
    values = stats.lengths.known
    if stats.lengths.failures:
        lines.append(
            f"  {len(stats.lengths.failures)} records could not be encoded (see mllm data validate --model)"
        )
    if not values:
        return "\n".join(lines)
    lines.append(
        f"  min {min(values)}, median {percentile(values, 50)}, mean {sum(values) / len(values):.1f}, "
        f"p95 {percentile(values, 95)}, max {max(values)}"
    )
    if stats.lengths.context is not None:
        over = sum(1 for v in values if v > stats.lengths.context)
        lines.append(f"  context {stats.lengths.context}: {over} records longer")
    rows = histogram(values, bins)
    peak = max(count for _, _, count in rows)
    span = len(str(rows[-1][1]))
    for low, high, count in rows:
        bar = "#" * (round(count / peak * bar_width) if peak else 0)
        lines.append(f"  {low:>{span}}-{high:<{span}} {count:>7} {bar}")
    return "\n".join(lines)


def plot_histogram(lengths: Lengths, out: str | Path, title: str, bins: int = 30) -> None:
    """Save a histogram of the lengths as a PNG (object-oriented matplotlib, Agg canvas; no global backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.hist(lengths.known, bins=bins, color="#4878d0", edgecolor="white")
    if lengths.context is not None:
        axes.axvline(lengths.context, color="#d65f5f", linestyle="--", label=f"context {lengths.context}")
        axes.legend()
    axes.set_xlabel(f"record length ({lengths.unit})")
    axes.set_ylabel("records")
    axes.set_title(title)
    figure.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, format="png")
