"""Run logging: `metrics.jsonl` (one JSON object per logged step or evaluation), the loss-curve PNG, and the
progress bar with loss, learning rate and tokens/s."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"


class MetricsLog:
    """Appends rows to `metrics.jsonl`; on resume rows after the resumed step are dropped first."""

    def __init__(self, folder: Path, resume_step: int | None = None) -> None:
        self.path = folder / METRICS_FILE
        if resume_step is not None and self.path.is_file():
            kept = [
                line
                for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= resume_step
            ]
            self.path.write_text("".join(line + "\n" for line in kept))
        elif resume_step is None:
            self.path.write_text("")

    def write(self, row: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def rows(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def plot_loss(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Training loss per step, with the eval loss and VQA accuracy when present."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    train = [(r["step"], r["loss"]) for r in rows if r.get("kind") == "train"]
    evals = [(r["step"], r["eval_loss"]) for r in rows if r.get("kind") == "eval" and "eval_loss" in r]
    vqa = [(r["step"], r["vqa_accuracy"]) for r in rows if r.get("kind") == "eval" and "vqa_accuracy" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1)
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    if vqa:
        acc = ax.twinx()
        acc.plot(*zip(*vqa), "s--", color="tab:green", label="VQA accuracy")
        acc.set_ylim(0, 1)
        acc.set_ylabel("VQA accuracy")
        acc.legend(loc="upper center")
    ax.legend(loc="upper right")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


def progress_bar(total: int, initial: int, enabled: bool, desc: str) -> tqdm:
    """A tqdm bar on stderr counting optimizer steps."""
    return tqdm(
        total=total,
        initial=initial,
        disable=not enabled,
        file=sys.stderr,
        desc=desc,
        unit="step",
        dynamic_ncols=True,
    )
