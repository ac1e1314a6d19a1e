"""Benchmark of `mllm data synth` on one core: images per second for the whole data set (images and every
record file), against two references measured in the same run: the issue's budget (10,000 images in 2
minutes, 83.3 images/s) and the floor cost of only drawing and saving the same scenes as PNG.

    .venv/bin/python bench/bench_synth.py [--num-images 10000] [--image-size 128] [--keep DIR]

Writes into a temporary folder (removed afterwards) unless --keep names one. Exit status 1 when the
budget is missed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from data_tools.synth.world import draw_scene, sample_scene
from data_tools.synth.writer import SynthConfig, image_name, rng_for, synthesize

BUDGET_IMAGES, BUDGET_SECONDS = 10_000, 120.0


def draw_only(out: Path, count: int, seed: int, image_size: int) -> float:
    """Seconds to sample, draw and save `count` scenes with no record files: the floor of synth's cost."""
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for index in range(1, count + 1):
        name = image_name(index, count)
        scene = sample_scene(rng_for("train", seed, index, "scene"), name, image_size, "train")
        draw_scene(scene).save(out / name, format="PNG")
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--num-images", type=int, default=BUDGET_IMAGES)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument(
        "--reference-images", type=int, default=2000, help="images of the draw-only reference"
    )
    parser.add_argument("--keep", type=Path, help="write here and keep the output")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core, as the issue asks
    root = Path(tempfile.mkdtemp(prefix="bench-synth-"))
    try:
        out = args.keep or root / "synth"
        config = SynthConfig(
            out=out,
            num_images=args.num_images,
            seed=0,
            image_size=args.image_size,
            overwrite=True,
            progress=False,
        )
        summary = synthesize(config)
        floor = draw_only(root / "draw-only", args.reference_images, 0, args.image_size)
    finally:
        shutil.rmtree(root)
    rate = summary.images / summary.seconds
    floor_rate = args.reference_images / floor
    budget_rate = BUDGET_IMAGES / BUDGET_SECONDS
    print(
        f"synth: {summary.images} images ({args.image_size}px) + {summary.instruct_records} instruction records "
        f"+ {summary.vqa_questions} VQA questions in {summary.seconds:.1f} s = {rate:.0f} images/s"
    )
    print(
        f"reference, draw + save PNG only: {floor_rate:.0f} images/s (synth runs at {rate / floor_rate:.0%} of it)"
    )
    print(
        f"reference, budget of {BUDGET_IMAGES} images in {BUDGET_SECONDS:.0f} s: {budget_rate:.1f} images/s "
        f"(synth is {rate / budget_rate:.1f}x faster; {BUDGET_IMAGES / rate:.1f} s for {BUDGET_IMAGES})"
    )
    return 0 if rate >= budget_rate else 1


if __name__ == "__main__":
    sys.exit(main())
