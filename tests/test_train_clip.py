"""Stage `clip` on tiny data: contrastive + auxiliary training runs on DeepSpeed, and the vision tower it saves
(HF CLIP format) loads as the vision tower of a multimodal model; auxiliary targets mark patch contents."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.train_support import TINY_MODEL, make_data, run_training, write_clip_config


def test_aux_targets_name_the_object_of_each_patch_and_the_counts() -> None:
    from train.clip_aux import (
        COUNT_KEYS,
        IGNORE,
        OBJECT_COUNT_COLUMN,
        OBJECT_COUNT_KEYS,
        PATCH_GROUPS,
        cell_targets,
        count_targets,
    )

    scene = {
        "image_size": 96,
        "background": "white",
        "objects": [
            {"shape": "star", "color": "red", "size": "small", "center": [10, 10]},
            {"shape": "circle", "color": "blue", "size": "large", "center": [80, 50]},
            {"shape": "circle", "color": "red", "size": "small", "center": [40, 90]},
        ],
    }
    targets = cell_targets(scene, 6)  # 16 px patches
    assert targets.shape == (36, 1 + len(PATCH_GROUPS) + len(OBJECT_COUNT_KEYS))
    assert targets[:, 0].nonzero().flatten().tolist() == [0, 3 * 6 + 5, 5 * 6 + 2]
    colors, shapes, sizes = PATCH_GROUPS["color"], PATCH_GROUPS["shape"], PATCH_GROUPS["size"]
    assert (colors[targets[0, 1]], shapes[targets[0, 2]], sizes[targets[0, 3]]) == ("red", "star", "small")
    assert (colors[targets[23, 1]], shapes[targets[23, 2]], sizes[targets[23, 3]]) == (
        "blue",
        "circle",
        "large",
    )
    assert targets[1].tolist() == [0] + [IGNORE] * 6  # no object center: attributes and counts are not scored
    # each object's counts: all objects, those of its colour, those of its shape
    assert targets[0, OBJECT_COUNT_COLUMN:].tolist() == [3, 2, 1]  # red star
    assert targets[23, OBJECT_COUNT_COLUMN:].tolist() == [3, 1, 2]  # blue circle
    assert targets[32, OBJECT_COUNT_COLUMN:].tolist() == [3, 2, 2]  # red circle
    counts = dict(zip(COUNT_KEYS, count_targets(scene).tolist()))
    assert counts["all"] == 3 and counts["red"] == 2 and counts["circle"] == 2 and counts["green"] == 0
    scene["objects"][0]["color"] = None  # repainted off-palette: its colour and colour count are unknown
    repainted = cell_targets(scene, 6)
    assert repainted[0, 1] == IGNORE and repainted[0, OBJECT_COUNT_COLUMN:].tolist() == [3, IGNORE, 1]
    assert repainted[32, OBJECT_COUNT_COLUMN:].tolist() == [3, 1, 2]  # one red object is left


def tiny_clip() -> torch.nn.Module:
    """A random CLIPModel with a 2 x 2 patch grid."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={
            "vocab_size": 20,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 8,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 16,
        },
        projection_dim=8,
    )
    return CLIPModel(config).eval()


def tiny_batch() -> dict[str, torch.Tensor]:
    """Two images for `tiny_clip`, one object each, in their first patch, with counts of its kind 1, 2 and 3."""
    from train.clip_aux import COUNT_KEYS, IGNORE, MAX_COUNT, OBJECT_COUNT_COLUMN, OBJECT_COUNT_KEYS

    cells = torch.full((2, 4, OBJECT_COUNT_COLUMN + len(OBJECT_COUNT_KEYS)), IGNORE)
    cells[..., 0] = 0
    cells[:, 0, :OBJECT_COUNT_COLUMN] = torch.tensor([1, 0, 0, 0])  # all-ignored attributes would be NaN
    cells[:, 0, OBJECT_COUNT_COLUMN:] = torch.tensor([1, 2, 3])
    torch.manual_seed(1)
    return {
        "input_ids": torch.randint(0, 20, (2, 5)),
        "attention_mask": torch.ones(2, 5, dtype=torch.long),
        "pixel_values": torch.randn(2, 3, 32, 32),
        "cells": cells,
        "counts": torch.randint(0, MAX_COUNT + 1, (2, len(COUNT_KEYS))),
        "background": torch.tensor([0, 1]),
    }


def test_patch_counts_add_the_count_loss_of_every_patch() -> None:
    """With `patch_counts` the auxiliary loss gains, on top of the mean feature's, the count head's
    cross-entropy on each patch feature against the image's counts at that weight (every token learns them)."""
    from train.clip_aux import COUNT_KEYS, MAX_COUNT, ClipWithAux

    clip = tiny_clip()
    plain, counted = ClipWithAux(clip, -2), ClipWithAux(clip, -2, patch_counts=0.5)
    counted.load_state_dict(plain.state_dict())
    batch = tiny_batch()
    with torch.no_grad():
        base, more = plain(**batch, aux_weight=1.0), counted(**batch, aux_weight=1.0)
        patches = clip.vision_model(batch["pixel_values"], output_hidden_states=True).hidden_states[-2][:, 1:]
        logits = plain.count_head(patches).view(2, 4, len(COUNT_KEYS), MAX_COUNT + 1)
        expected = (
            sum(
                torch.nn.functional.cross_entropy(logits[:, p].flatten(0, 1), batch["counts"].flatten())
                for p in range(4)
            )
            / 4
        )
    assert float(more["aux"] - base["aux"]) == pytest.approx(0.5 * float(expected), rel=1e-4)
    assert float(expected) > 0.5


def test_object_counts_add_the_count_loss_of_object_patches_only() -> None:
    """With `object_counts` the auxiliary loss gains, at that weight, the object-count head's cross-entropy on
    the patches that hold an object center against that object's counts; empty patches add nothing."""
    from train.clip_aux import MAX_COUNT, OBJECT_COUNT_COLUMN, OBJECT_COUNT_KEYS, ClipWithAux

    clip = tiny_clip()
    plain, counted = ClipWithAux(clip, -2), ClipWithAux(clip, -2, object_counts=0.5)
    assert plain.object_count_head is None
    counted.load_state_dict(plain.state_dict(), strict=False)  # the same towers and other heads
    batch = tiny_batch()
    with torch.no_grad():
        base, more = plain(**batch, aux_weight=1.0), counted(**batch, aux_weight=1.0)
        patches = clip.vision_model(batch["pixel_values"], output_hidden_states=True).hidden_states[-2][:, 1:]
        logits = counted.object_count_head(patches[:, 0]).view(2, len(OBJECT_COUNT_KEYS), MAX_COUNT + 1)
        expected = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), batch["cells"][:, 0, OBJECT_COUNT_COLUMN:].flatten()
        )
    assert base["object_count_logits"] is None
    assert more["object_count_logits"].shape == (2, 4, len(OBJECT_COUNT_KEYS), MAX_COUNT + 1)
    assert float(more["aux"] - base["aux"]) == pytest.approx(0.5 * float(expected), rel=1e-4)
    assert float(expected) > 0.5


def test_object_count_keys_train_only_the_chosen_counts() -> None:
    """With `object_count_keys` ["color", "shape"] the object-count head predicts only those two of the object's
    counts (its loss is against their columns), leaving the image-wide total to the other heads; an unknown key
    is refused."""
    from train.clip_aux import MAX_COUNT, OBJECT_COUNT_COLUMN, ClipWithAux

    clip = tiny_clip()
    model = ClipWithAux(clip, -2, object_counts=1.0, object_count_keys=["shape", "color"])
    assert model.object_count_columns == [OBJECT_COUNT_COLUMN + 1, OBJECT_COUNT_COLUMN + 2]
    batch = tiny_batch()
    total, color = batch["cells"].clone(), batch["cells"].clone()
    total[:, 0, OBJECT_COUNT_COLUMN] = 4  # the object's total count, which this head is not asked
    color[:, 0, OBJECT_COUNT_COLUMN + 1] = 4  # the count of its colour, which it is
    with torch.no_grad():
        out = model(**batch, aux_weight=1.0)
        patches = clip.vision_model(batch["pixel_values"], output_hidden_states=True).hidden_states[-2][:, 1:]
        expected = model.object_count_head(patches).view(2, 4, 2, MAX_COUNT + 1)
        changed_total = model(**{**batch, "cells": total}, aux_weight=1.0)
        changed_color = model(**{**batch, "cells": color}, aux_weight=1.0)
    torch.testing.assert_close(out["object_count_logits"], expected)
    assert float(changed_total["aux"]) == pytest.approx(float(out["aux"]), rel=1e-6)
    assert float(changed_color["aux"]) != pytest.approx(float(out["aux"]), rel=1e-3)
    with pytest.raises(ValueError, match="object_count_keys"):
        ClipWithAux(clip, -2, object_counts=1.0, object_count_keys=["size"])


def test_image_heads_cls_read_the_class_token() -> None:
    """With `image_heads="cls"` the count and background heads read the feature layer's class token instead of
    the mean patch feature, so their loss trains that token; an unknown choice is refused."""
    import pytest

    from train.clip_aux import COUNT_KEYS, MAX_COUNT, ClipWithAux

    clip = tiny_clip()
    mean, cls = ClipWithAux(clip, -2), ClipWithAux(clip, -2, image_heads="cls")
    cls.load_state_dict(mean.state_dict())
    batch = tiny_batch()
    with torch.no_grad():
        tokens = clip.vision_model(batch["pixel_values"], output_hidden_states=True).hidden_states[-2]
        for model, pooled in ((mean, tokens[:, 1:].mean(1)), (cls, tokens[:, 0])):
            expected = model.count_head(pooled).view(2, len(COUNT_KEYS), MAX_COUNT + 1)
            torch.testing.assert_close(model(**batch, aux_weight=1.0)["count_logits"], expected)
    assert not torch.allclose(tokens[:, 0], tokens[:, 1:].mean(1))
    with pytest.raises(ValueError, match="image_heads 'max'"):
        ClipWithAux(clip, -2, image_heads="max")


def test_region_targets_match_the_world_position_of_a_center_in_the_patch() -> None:
    """Each patch's region target is the shapes world's own position name for a center in that patch."""
    from data_tools.synth.world import position_of
    from train.clip_aux import REGIONS, region_targets

    for grid, size in ((6, 96), (4, 32)):
        regions = region_targets(grid)
        patch = size // grid
        for row in range(grid):
            for col in range(grid):
                center = (col * patch + patch // 2, row * patch + patch // 2)
                assert REGIONS[regions[row * grid + col]] == position_of(center, size), (grid, row, col)


@pytest.mark.parametrize(
    ("precision", "patch_counts", "object_counts", "image_heads"),
    [("fp32", 0.0, 0.0, "mean"), ("bf16", 0.5, 0.5, "cls")],
)
def test_clip_stage_saves_a_vision_tower_the_model_loads(
    tmp_path: Path, precision: str, patch_counts: float, object_counts: float, image_heads: str
) -> None:
    from mllm.config import load_model_config
    from mllm.model import MultimodalModel

    data = make_data(tmp_path / "data", num_images=16)
    config = write_clip_config(
        tmp_path / "clip.yaml",
        data,
        tmp_path / "run",
        {
            "recolor_prob": 0.5,
            "patch_counts": patch_counts,
            "object_counts": object_counts,
            "object_count_keys": ["color", "shape"] if object_counts else ["all", "color", "shape"],
            "image_heads": image_heads,
        },
        precision=precision,
    )
    result = run_training(config)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stage"] == "clip" and 0 <= summary["eval"]["retrieval_accuracy"] <= 1
    assert {"color_accuracy", "shape_accuracy", "size_accuracy", "count_accuracy", "region_accuracy"} <= set(
        summary["eval"]
    )
    assert ("object_count_accuracy" in summary["eval"]) == (object_counts > 0)
    assert (run / "loss.png").is_file() and (run / "clip" / "vocab.json").is_file()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"contrastive", "aux"} <= set(rows[0])
    model_config = load_model_config(TINY_MODEL)
    model_config.vision.source = str(run / "vision")
    model = MultimodalModel.build(model_config)
    assert model.vision(torch.zeros(1, 3, 32, 32)).shape == (1, 16, 32)


def test_recolor_repaints_objects_off_palette_and_drops_only_their_colour(tmp_path: Path) -> None:
    """A repainted object keeps its shape, size and place but loses every pixel of its palette colour, its colour
    target, its colour count and the colour word of the caption; the new colour is none of the world's."""
    import math
    import random

    from data_tools.synth.world import BACKGROUNDS, COLORS
    from mllm.images import ImagePreprocessor
    from train.clip_aux import COUNT_KEYS, IGNORE, OBJECT_COUNT_COLUMN
    from train.clip_data import OFF_PALETTE_DISTANCE, load_samples, recolor

    data = make_data(tmp_path / "data", num_images=8)
    preprocess = ImagePreprocessor(
        64, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    )  # the data's own size: no resampling
    captions: list[str] = []

    def encode(text: str) -> list[int]:
        captions.append(text)
        return [len(captions)]

    samples = load_samples(
        data / "pairs.jsonl", data / "scenes.jsonl", data / "images", encode, 4, preprocess, keep_pixels=True
    )
    rng = random.Random(0)
    assert all(recolor(s, rng, 0.0, preprocess, encode) is s for s in samples)
    for sample in samples:
        out = recolor(sample, rng, 1.0, preprocess, encode)
        pixels = (out.image * 0.25 + 0.5) * 255
        rgb = {tuple(round(float(v)) for v in pixels[:, y, x]) for y in range(64) for x in range(64)}
        assert not rgb & set(COLORS.values()), "a palette colour is left"
        for color in rgb - set(BACKGROUNDS.values()):
            assert min(math.dist(color, c) for c in COLORS.values()) >= OFF_PALETTE_DISTANCE
        assert len(rgb - set(BACKGROUNDS.values())) >= 1
        text = captions[out.tokens[0] - 1]
        assert not any(f" {c} " in text for c in COLORS) and text.count(" at ") + text.count(
            " on "
        ) + text.count(" in ") >= len(sample.scene["objects"])
        occupied = sample.cells[:, 0] > 0
        assert (out.cells[occupied, 1] == IGNORE).all()  # colour
        assert torch.equal(out.cells[:, [0, 2, 3]], sample.cells[:, [0, 2, 3]])  # occupancy, shape, size
        # each object's counts: all and of its shape as before, of its colour unknown
        assert (out.cells[occupied, OBJECT_COUNT_COLUMN + 1] == IGNORE).all()
        others = [OBJECT_COUNT_COLUMN, OBJECT_COUNT_COLUMN + 2]
        assert torch.equal(out.cells[:, others], sample.cells[:, others])
        counts = dict(zip(COUNT_KEYS, out.counts.tolist()))
        assert counts["all"] == len(sample.scene["objects"]) and all(counts[c] == 0 for c in COLORS)
        assert torch.equal(out.counts[len(COLORS) + 1 :], sample.counts[len(COLORS) + 1 :])  # shape counts


def test_probe_reads_colour_off_a_tower_on_seen_and_held_out_pairs(tmp_path: Path) -> None:
    """`train.probe` fits colour and shape probes on train-split patches and scores compositional objects of
    seen and held-out pairs apart: colour is in any tower's features (even a random one's), on both kinds."""
    from transformers import CLIPVisionModel

    from data_tools.synth.writer import SynthConfig, synthesize
    from mllm.config import load_model_config
    from mllm.images import ImagePreprocessor
    from mllm.vision import build_vision_model
    from train.probe import probe_counts, probe_tower

    for split, count in (("train", 72), ("compositional", 24)):
        synthesize(
            SynthConfig(
                out=tmp_path / split, num_images=count, seed=0, image_size=64, split=split, progress=False
            )
        )
    build_vision_model(load_model_config(TINY_MODEL).vision).save_pretrained(tmp_path / "vision")
    result = probe_tower(tmp_path / "vision", tmp_path, Path(TINY_MODEL), 48, 24)
    assert result["held_out_objects"] >= 24 and result["seen_objects"] > 0
    color = result["color"]  # chance is 1/6
    assert color["train"] > 0.9 and color["seen"] > 0.5 and color["held_out"] > 0.5, result
    assert all(0 <= result["shape"][k] <= 1 for k in ("train", "seen", "held_out"))
    for name in ("color", "shape"):  # the held-out pairs' objects, pair by pair, add up to the held-out score
        pairs = result[name]["held_out_by_pair"].values()
        assert sum(p["objects"] for p in pairs) == result["held_out_objects"]
        assert sum(p["right"] for p in pairs) / result["held_out_objects"] == pytest.approx(
            result[name]["held_out"]
        )
    assert set(result["object_counts"]) == {"all", "color", "shape"}
    assert all(0 <= v <= 1 for v in result["object_counts"].values())
    vision = load_model_config(TINY_MODEL).vision
    preprocess = ImagePreprocessor(vision.image_size, vision.image_mean, vision.image_std)
    tower = CLIPVisionModel.from_pretrained(tmp_path / "vision").eval()
    counts = probe_counts(tower, preprocess, tmp_path, vision.feature_layer, 48, 24)
    assert set(counts) == {"mean", "cls", "patch_0", "patch_7", "patch_15"}  # the tiny tower's 4x4 patches
    assert all(0 <= v <= 1 for v in counts.values())


def test_recolor_until_ends_repainting_after_its_fraction_of_the_steps(tmp_path: Path) -> None:
    from mllm.errors import MllmError
    from train.clip import repaints
    from train.config import load_train_config

    data = make_data(tmp_path / "data", num_images=4)
    path = write_clip_config(tmp_path / "clip.yaml", data, tmp_path / "run", {"recolor_prob": 0.5})
    config = load_train_config(path, ["max_steps=10", "clip.recolor_until=0.4"])
    assert [repaints(config, step) for step in range(1, 11)] == [True] * 4 + [False] * 6
    assert all(repaints(load_train_config(path, ["max_steps=10"]), step) for step in range(1, 11))
    assert not any(repaints(load_train_config(path, ["clip.recolor_prob=0"]), step) for step in range(1, 11))
    with pytest.raises(
        MllmError, match="clip.yaml: field clip.recolor_until: must be in \\[0, 1\\], got 1.5"
    ):
        load_train_config(path, ["clip.recolor_until=1.5"])
