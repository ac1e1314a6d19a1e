"""Stage `clip` on tiny data: contrastive + auxiliary training runs on DeepSpeed, and the vision tower it saves
(HF CLIP format) loads as the vision tower of a multimodal model; auxiliary targets mark patch contents."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tests.train_support import TINY_MODEL, make_data, run_training, write_config


def test_cell_targets_mark_the_patch_of_each_object_center() -> None:
    from train.clip import ATTRIBUTE_INDEX, cell_targets

    scene = {
        "image_size": 96,
        "background": "white",
        "objects": [
            {"shape": "star", "color": "red", "size": "small", "center": [10, 10]},
            {"shape": "circle", "color": "blue", "size": "large", "center": [80, 50]},
        ],
    }
    targets = cell_targets(scene, 3)
    assert targets.shape == (9, len(ATTRIBUTE_INDEX))
    occupied = targets[:, ATTRIBUTE_INDEX["occupied"]].nonzero().flatten().tolist()
    assert occupied == [0, 5]  # top left, and the right cell of the middle row
    assert targets[0, ATTRIBUTE_INDEX["red"]] == 1 and targets[0, ATTRIBUTE_INDEX["star"]] == 1
    assert targets[5, ATTRIBUTE_INDEX["large"]] == 1 and targets[5, ATTRIBUTE_INDEX["red"]] == 0


def test_clip_stage_saves_a_vision_tower_the_model_loads(tmp_path: Path) -> None:
    from mllm.config import load_model_config
    from mllm.model import MultimodalModel

    data = make_data(tmp_path / "data", num_images=16)
    config = write_config(
        tmp_path / "clip.yaml",
        data,
        tmp_path / "run",
        stage="clip",
        model=str(TINY_MODEL),
        data={
            "train": str(data / "pairs.jsonl"),
            "eval": str(data / "pairs.jsonl"),
            "image_folder": str(data / "images"),
        },
        clip={"text_hidden_size": 32, "text_layers": 1, "text_heads": 2, "projection_dim": 16},
        micro_batch_size=8,
        max_steps=3,
        eval_every=0,
    )
    result = run_training(config)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stage"] == "clip" and 0 <= summary["eval"]["retrieval_accuracy"] <= 1
    assert (run / "loss.png").is_file() and (run / "clip" / "vocab.json").is_file()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"contrastive", "aux"} <= set(rows[0])
    model_config = load_model_config(TINY_MODEL)
    model_config.vision.source = str(run / "vision")
    model = MultimodalModel.build(model_config)
    assert model.vision(torch.zeros(1, 3, 32, 32)).shape == (1, 16, 32)
