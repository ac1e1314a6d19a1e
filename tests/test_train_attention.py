"""`train.attention`: on a tiny random model and tiny shapes-world data, the attention to the asked-about object's
patch, its neighbours and the whole image is read per layer from the right image tokens (also with the class token
kept first), and the patch / object lookups name the right cell and object."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import mllm
from mllm.config import load_model_config, save_model_config
from tests.train_support import TINY_MODEL, make_data
from train.attention import asked_object, layer_attention, position_attention
from train.clip_aux import patch_of


def test_patch_and_object_lookup() -> None:
    assert patch_of((0, 0), 96, 6) == (0, 0)
    assert patch_of((95, 20), 96, 6) == (1, 5)
    assert patch_of((40, 70), 64, 4) == (3, 2)
    scene = {
        "objects": [
            {"shape": "star", "color": "red", "center": [5, 5]},
            {"shape": "circle", "color": "red", "center": [9, 9]},
            {"shape": "star", "color": None, "center": [20, 20]},
        ]
    }
    assert asked_object("Where is the red star?", scene)["center"] == [5, 5]
    assert asked_object("Where is the blue star?", scene) is None


@pytest.mark.parametrize("feature_select", ["default", "full"])
def test_attention_parts_come_from_the_image_tokens(tmp_path: Path, feature_select: str) -> None:
    config = load_model_config(TINY_MODEL)
    config.vision.feature_select = feature_select
    path = tmp_path / "model.yaml"
    save_model_config(config, path)
    assistant = mllm.load(str(path), precision="fp32")
    data = make_data(tmp_path / "data", num_images=16)
    result = position_attention(assistant, data, limit=3)
    layers = assistant.model.llm.config.num_hidden_layers
    assert result["questions"] >= 1 and result["parts"] == ["center", "horizontal", "vertical", "image"]
    assert len(result["per_layer"]) == layers
    for center, horizontal, vertical, image in result["per_layer"]:
        assert 0 < center <= image <= 1 and 0 < horizontal <= image and 0 < vertical <= image

    # the parts are the image tokens' weights: the patch at (0, 0) has one neighbour of each kind
    image = next((data / "images").iterdir())
    parts = layer_attention(assistant, "<image>\nWhere is it?", image, 0, 0)
    model = assistant.model
    ids, pixels = assistant.prepare([{"role": "user", "content": "<image>\nWhere is it?"}], [image])
    with torch.no_grad():
        out = model.llm(inputs_embeds=model.embed(ids, pixels), output_attentions=True)
    first = int((ids[0] == model.image_token_id).nonzero()[0]) + (1 if feature_select == "full" else 0)
    last = out.attentions[-1][0, :, -1].mean(0)
    grid = 4  # the tiny tower: 32 px images, 8 px patches
    torch.testing.assert_close(parts[-1, 0], last[first])
    torch.testing.assert_close(parts[-1, 1], last[first + 1])
    torch.testing.assert_close(parts[-1, 2], last[first + grid])
    torch.testing.assert_close(parts[-1, 3], last[first : first + grid * grid].sum())
