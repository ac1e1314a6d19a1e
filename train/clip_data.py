"""The samples of stage `clip`: images (preprocessed once) joined with their captions and auxiliary targets,
batching, and the colour augmentation that keeps the vision tower's shape features apart from colour.

Colour augmentation: the shapes world holds five (colour, shape) pairs out of training, and a tower that only
ever sees the other pairs can encode shape and colour as one code (a linear probe of the shipped tower's patch
features read the shape of held-out pairs right 63% of the time, seen pairs 98%). So each object of a training
image is, with probability `recolor_prob`, repainted in a random colour far from every palette and background
colour: its colour target is dropped, the colour counts and the caption leave it out ("a small star at the top
left"), and its shape, size and position targets stay. No held-out pair is ever shown: the new colours are
none of the palette's.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from data_tools.synth.questions import caption
from data_tools.synth.world import BACKGROUNDS, COLORS, Scene
from mllm.errors import MllmError
from mllm.images import ImagePreprocessor, load_image
from mllm.jsonl import read_jsonl
from train.clip_aux import BACKGROUND_INDEX, cell_targets, count_targets

# A repainted object's colour keeps at least this RGB distance from every palette and background colour, so it
# is never one of the world's colour names (the nearest palette colours are about 150 apart).
OFF_PALETTE_DISTANCE = 100.0
_RESERVED = (*COLORS.values(), *BACKGROUNDS.values())
EOS_ID = 0  # ends (and pads) every caption; the text tower pools at its first position


@dataclass
class ClipSample:
    """One image (normalized pixels, preprocessed once) with its caption tokens and auxiliary targets."""

    image: torch.Tensor
    tokens: list[int]
    cells: (
        torch.Tensor
    )  # [P, columns]: occupied, class per group, counts of its object (clip_aux.cell_targets)
    counts: torch.Tensor  # [len(COUNT_KEYS)] object counts
    background: int
    scene: dict[str, Any]
    pixels: np.ndarray | None  # [H, W, 3] uint8 as read, kept when the samples are to be recoloured


def read_pairs(pairs: Path, limit: int | None = None) -> list[dict[str, Any]]:
    rows = read_jsonl(pairs)
    return rows[:limit] if limit else rows


def load_samples(
    pairs: Path,
    scenes: Path,
    image_folder: Path,
    encode: Callable[[str], list[int]],
    grid: int,
    preprocess: ImagePreprocessor,
    limit: int | None = None,
    keep_pixels: bool = False,
) -> list[ClipSample]:
    """Pairs joined with their scenes (by image name), images preprocessed once (and kept as read with
    `keep_pixels`, for `recolor`); `encode(caption)` gives the caption's token ids."""
    by_image = {row["image"]: row for row in read_jsonl(scenes)}
    samples = []
    for number, row in enumerate(read_pairs(pairs, limit), 1):
        for key in ("image", "caption"):
            if key not in row:
                raise MllmError(f"{pairs}:{number}: field {key} is missing")
        scene = by_image.get(row["image"])
        if scene is None:
            raise MllmError(f"{pairs}:{number}: image {row['image']} has no scene in {scenes}")
        image = load_image(image_folder / row["image"])
        samples.append(
            ClipSample(
                preprocess([image])[0],
                encode(row["caption"]),
                cell_targets(scene, grid),
                count_targets(scene),
                BACKGROUND_INDEX[scene["background"]],
                scene,
                np.array(image) if keep_pixels else None,
            )
        )
    return samples


def off_palette_color(rng: random.Random) -> tuple[int, int, int]:
    """A random RGB colour at least OFF_PALETTE_DISTANCE from every palette and background colour."""
    while True:
        rgb = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        if all(math.dist(rgb, reserved) >= OFF_PALETTE_DISTANCE for reserved in _RESERVED):
            return rgb


def recolor(
    sample: ClipSample,
    rng: random.Random,
    prob: float,
    preprocess: ImagePreprocessor,
    encode: Callable[[str], list[int]],
) -> ClipSample:
    """`sample` with each object repainted, with probability `prob`, in an off-palette colour (see the module
    docstring), repainted in its pixels as read (where every object pixel has its colour exactly) and then
    preprocessed; the sample itself when no object is picked."""
    picked = [k for k in range(len(sample.scene["objects"])) if rng.random() < prob]
    if not picked:
        return sample
    if sample.pixels is None:
        raise ValueError("recolor needs samples loaded with keep_pixels=True")
    pixels = sample.pixels.copy()
    objects = [dict(obj) for obj in sample.scene["objects"]]
    for k in picked:
        obj = objects[k]
        x0, y0, x1, y1 = obj["bbox"]
        box = pixels[y0 : y1 + 1, x0 : x1 + 1]
        painted = (box == np.array(COLORS[obj["color"]], dtype=np.uint8)).all(-1)
        if not painted.any():
            raise MllmError(
                f"{sample.scene['image']}: object {k} ({obj['color']} {obj['shape']}) has no pixel of its colour in its bbox"
            )
        box[painted] = off_palette_color(rng)
        obj["color"] = None
    text = caption(Scene.from_json(sample.scene), uncolored=frozenset(picked))
    scene = {**sample.scene, "objects": objects}
    grid = math.isqrt(sample.cells.shape[0])
    return replace(
        sample,
        image=preprocess([Image.fromarray(pixels)])[0],
        tokens=encode(text),
        cells=cell_targets(scene, grid),
        counts=count_targets(scene),
        scene=scene,
    )


def collate(
    samples: list[ClipSample], dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> dict[str, torch.Tensor]:
    """A batch for ClipWithAux on `device`: captions padded with EOS_ID, pixels in `dtype` (the towers' own)."""
    width = max(len(s.tokens) for s in samples)
    input_ids = torch.full((len(samples), width), EOS_ID, dtype=torch.long)
    attention_mask = torch.zeros((len(samples), width), dtype=torch.long)
    for row, sample in enumerate(samples):
        input_ids[row, : len(sample.tokens)] = torch.tensor(sample.tokens)
        attention_mask[row, : len(sample.tokens)] = 1
    batch = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "pixel_values": torch.stack([s.image for s in samples]).to(dtype),
        "cells": torch.stack([s.cells for s in samples]),
        "counts": torch.stack([s.counts for s in samples]),
        "background": torch.tensor([s.background for s in samples]),
    }
    return {name: tensor.to(device) for name, tensor in batch.items()}
