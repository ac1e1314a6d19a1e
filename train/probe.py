"""Linear probes of a vision tower's patch features: can a colour or a shape be read off the features of the
patch that holds an object's center, and does that reading carry over to colour-shape pairs never trained on?

A logistic regression per attribute is fitted on the occupied patches of the `train` split (standardized
features of `vision.feature_layer`) and scored on the `compositional` split, separately on objects of seen and of
held-out (colour, shape) pairs. A tower whose shape features do not depend on colour reads held-out pairs as well
as seen ones; the gap is what the multimodal model's compositional accuracy has to work against.

The same patches are also probed for the counts a question about their object needs: how many objects there
are in all, of its colour and of its shape (`object_counts`; a tower trained with `clip.object_counts` writes
them there). With `--counts`, also: how well the total object count is read from the mean patch feature, from the
class token (`clip.image_heads: cls` trains the counts into it) and from the feature of one patch alone (a tower trained with `clip.patch_counts` writes the counts into every patch).

    python -m train.probe runs/release/clip/vision --data runs/release/data
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import torch
from transformers import CLIPVisionModel

from data_tools.synth.world import HELD_OUT_PAIRS
from mllm.config import load_model_config
from mllm.images import ImagePreprocessor
from mllm.jsonl import read_jsonl
from train.clip_aux import (
    IGNORE,
    MAX_COUNT,
    OBJECT_COUNT_COLUMN,
    OBJECT_COUNT_KEYS,
    PATCH_GROUPS,
    cell_targets,
    count_targets,
)

REPO = Path(__file__).resolve().parent.parent


@torch.no_grad()
def patch_features(
    tower: CLIPVisionModel, preprocess: ImagePreprocessor, folder: Path, feature_layer: int, limit: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features [N, H], targets [N, 1 + groups]) of the patches holding an object center, first `limit` images."""
    scenes = read_jsonl(folder / "scenes.jsonl")[:limit]
    features, targets = [], []
    for start in range(0, len(scenes), 64):
        batch = scenes[start : start + 64]
        pixels = preprocess([folder / "images" / s["image"] for s in batch])
        hidden = tower(pixel_values=pixels, output_hidden_states=True).hidden_states[feature_layer][:, 1:]
        cells = torch.stack([cell_targets(s, math.isqrt(hidden.shape[1])) for s in batch])
        occupied = cells[..., 0] > 0
        features.append(hidden[occupied])
        targets.append(cells[occupied])
    return torch.cat(features), torch.cat(targets)


def fit_probe(
    features: torch.Tensor, labels: torch.Tensor, classes: int, steps: int = 300
) -> torch.nn.Linear:
    """A logistic regression (Adam, full batch) of `labels` on `features`."""
    torch.manual_seed(0)
    probe = torch.nn.Linear(features.shape[1], classes)
    optimizer = torch.optim.Adam(probe.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(probe(features), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return probe


def probe_tower(
    vision: Path, data: Path, model_config: Path, train_images: int, eval_images: int
) -> dict[str, Any]:
    """Accuracy of a colour probe and a shape probe on `compositional` objects of seen and held-out pairs (and how
    many objects of each held-out pair it got right), and of probes of each object's counts (OBJECT_COUNT_KEYS) on
    all `compositional` objects."""
    config = load_model_config(str(model_config)).vision
    preprocess = ImagePreprocessor(config.image_size, config.image_mean, config.image_std)
    tower = CLIPVisionModel.from_pretrained(vision, dtype=torch.float32).eval()
    x_train, y_train = patch_features(tower, preprocess, data / "train", config.feature_layer, train_images)
    x_eval, y_eval = patch_features(
        tower, preprocess, data / "compositional", config.feature_layer, eval_images
    )
    mean, std = x_train.mean(0), x_train.std(0) + 1e-5
    x_train, x_eval = (x_train - mean) / std, (x_eval - mean) / std
    colors, shapes = PATCH_GROUPS["color"], PATCH_GROUPS["shape"]
    held = torch.tensor([(colors[c], shapes[s]) in HELD_OUT_PAIRS for c, s in y_eval[:, 1:3].tolist()])
    result: dict[str, Any] = {"train_objects": len(y_train), "seen_objects": int((~held).sum())}
    result["held_out_objects"] = int(held.sum())
    for column, name in ((1, "color"), (2, "shape")):
        probe = fit_probe(x_train, y_train[:, column], len(PATCH_GROUPS[name]))
        with torch.no_grad():
            right = probe(x_eval).argmax(-1) == y_eval[:, column]
            result[name] = {
                "train": float((probe(x_train).argmax(-1) == y_train[:, column]).float().mean()),
                "seen": float(right[~held].float().mean()),
                "held_out": float(right[held].float().mean()),
                "held_out_by_pair": {},
            }
            for color, shape in HELD_OUT_PAIRS:
                pair = (y_eval[:, 1] == colors.index(color)) & (y_eval[:, 2] == shapes.index(shape))
                if pair.any():
                    counted = {"objects": int(pair.sum()), "right": int(right[pair].sum())}
                    result[name]["held_out_by_pair"][f"{color} {shape}"] = counted
    result["object_counts"] = {}
    for k, key in enumerate(OBJECT_COUNT_KEYS):
        column = OBJECT_COUNT_COLUMN + k
        fit, scored = y_train[:, column] != IGNORE, y_eval[:, column] != IGNORE
        probe = fit_probe(x_train[fit], y_train[fit, column], MAX_COUNT + 1)
        with torch.no_grad():
            right = probe(x_eval[scored]).argmax(-1) == y_eval[scored, column]
        result["object_counts"][key] = float(right.float().mean())
    return result


@torch.no_grad()
def image_features(
    tower: CLIPVisionModel, preprocess: ImagePreprocessor, folder: Path, feature_layer: int, images: range
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features [N, 1 + P, H]: the class token, then the patches; total object counts [N]) of the scenes at
    `images` of the folder."""
    scenes = read_jsonl(folder / "scenes.jsonl")[images.start : images.stop]
    features = []
    for start in range(0, len(scenes), 64):
        pixels = preprocess([folder / "images" / s["image"] for s in scenes[start : start + 64]])
        features.append(tower(pixel_values=pixels, output_hidden_states=True).hidden_states[feature_layer])
    return torch.cat(features), torch.stack([count_targets(s)[0] for s in scenes])


def probe_counts(
    tower: CLIPVisionModel,
    preprocess: ImagePreprocessor,
    data: Path,
    feature_layer: int,
    train_images: int,
    eval_images: int,
) -> dict[str, float]:
    """Accuracy of total-count probes (fitted on the first `train_images` train scenes, scored on the next
    `eval_images`) that read the mean patch feature, the class token (the image-level token of `clip.image_heads:
    cls`), and the first, a middle and the last patch alone."""
    x_train, y_train = image_features(tower, preprocess, data / "train", feature_layer, range(train_images))
    x_eval, y_eval = image_features(
        tower, preprocess, data / "train", feature_layer, range(train_images, train_images + eval_images)
    )
    patches = x_train.shape[1] - 1
    views = {"mean": (x_train[:, 1:].mean(1), x_eval[:, 1:].mean(1)), "cls": (x_train[:, 0], x_eval[:, 0])}
    for cell in (0, patches // 2 - 1, patches - 1):
        views[f"patch_{cell}"] = (x_train[:, 1 + cell], x_eval[:, 1 + cell])
    result = {}
    for name, (train, held) in views.items():
        mean, std = train.mean(0), train.std(0) + 1e-5
        probe = fit_probe((train - mean) / std, y_train, MAX_COUNT + 1, steps=1000)
        with torch.no_grad():
            result[name] = float((probe((held - mean) / std).argmax(-1) == y_eval).float().mean())
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.probe", description=__doc__.split("\n\n")[0])
    parser.add_argument("vision", type=Path, help="a vision tower folder (HF CLIP format)")
    parser.add_argument(
        "--data", type=Path, required=True, help="a release data folder (train/, compositional/)"
    )
    parser.add_argument("--model", type=Path, default=REPO / "configs" / "model" / "smollm2.yaml")
    parser.add_argument("--train-images", type=int, default=3000)
    parser.add_argument("--eval-images", type=int, default=800)
    parser.add_argument("--counts", action="store_true", help="also probe the total count (see above)")
    args = parser.parse_args(argv)
    result = probe_tower(args.vision, args.data, args.model, args.train_images, args.eval_images)
    if args.counts:
        config = load_model_config(str(args.model)).vision
        preprocess = ImagePreprocessor(config.image_size, config.image_mean, config.image_std)
        tower = CLIPVisionModel.from_pretrained(args.vision, dtype=torch.float32).eval()
        result["total_count"] = probe_counts(
            tower, preprocess, args.data, config.feature_layer, args.train_images, args.eval_images
        )
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
