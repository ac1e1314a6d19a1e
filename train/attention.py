"""Where a model looks when it answers a position question: at the last prompt position, the attention each LLM
layer gives (mean over heads) to the image token of the asked-about object's center patch, to each of its
horizontal neighbours (same row, one column off) and vertical neighbours (same column, one row off), and to all
image tokens together.

Shapes-world objects are as wide as they are tall, so a model that reads an object by its content attends to
both kinds of neighbour alike; image tokens are row-major, so horizontal neighbours are also neighbours in the
sequence. Session 20 found the shipped assistant's reading layers give horizontal neighbours 4-5x the attention
of vertical ones, and its position misses are column misses (train/release_notes.md).

    python -m train.attention --model default --data runs/release/data/test --questions 120
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from mllm.assistant import Assistant, load
from mllm.jsonl import read_jsonl
from train.clip_aux import patch_of

PARTS = ("center", "horizontal", "vertical", "image")  # per layer, in this order


def asked_object(question: str, scene: dict[str, Any]) -> dict[str, Any] | None:
    """The one object of the scene whose colour and shape the question names, or None if not exactly one."""
    words = question.lower()
    found = [
        o for o in scene["objects"] if o["shape"] in words and o["color"] is not None and o["color"] in words
    ]
    return found[0] if len(found) == 1 else None


@torch.no_grad()
def layer_attention(assistant: Assistant, question: str, image: Path, row: int, col: int) -> torch.Tensor:
    """[layers, 4]: the last prompt position's attention (mean over heads) to the patch at (row, col), the mean of
    its horizontal and of its vertical neighbours, and all the image's patches."""
    model = assistant.model
    ids, pixels = assistant.prepare([{"role": "user", "content": question}], [Image.open(image)])
    out = model.llm(
        inputs_embeds=model.embed(ids, pixels), position_ids=model.position_ids(ids), output_attentions=True
    )
    placeholders = (ids[0] == model.image_token_id).nonzero().flatten()
    patches = model.vision.num_patches
    grid = math.isqrt(patches)
    first = int(placeholders[len(placeholders) - patches])  # a kept class token comes before the patches
    weights = torch.stack([layer[0, :, -1].float().mean(0) for layer in out.attentions])
    cells = weights[:, first : first + patches].reshape(-1, grid, grid)
    horizontal = [cells[:, row, c] for c in (col - 1, col + 1) if 0 <= c < grid]
    vertical = [cells[:, r, col] for r in (row - 1, row + 1) if 0 <= r < grid]
    return torch.stack(
        [
            cells[:, row, col],
            sum(horizontal) / len(horizontal),
            sum(vertical) / len(vertical),
            cells.sum((1, 2)),
        ],
        dim=1,
    )


def position_attention(assistant: Assistant, data: Path, limit: int) -> dict[str, Any]:
    """Mean layer_attention over the first `limit` position questions of a shapes-world split folder (those
    naming exactly one object by colour and shape)."""
    assistant.model.llm.set_attn_implementation("eager")  # the other kernels do not return attention weights
    gold = {row["question_id"]: row for row in read_jsonl(data / "vqa_answers.jsonl")}
    scenes = {scene["image"]: scene for scene in read_jsonl(data / "scenes.jsonl")}
    grid = math.isqrt(assistant.model.vision.num_patches)
    total: torch.Tensor | None = None
    count = 0
    for question in read_jsonl(data / "vqa_questions.jsonl"):
        if count >= limit:
            break
        if gold[question["question_id"]]["type"] != "position":
            continue
        scene = scenes[question["image"]]
        obj = asked_object(question["text"], scene)
        if obj is None:
            continue
        row, col = patch_of(obj["center"], scene["image_size"], grid)
        text = "<image>\n" + question["text"]
        part = layer_attention(assistant, text, data / "images" / question["image"], row, col)
        total = part if total is None else total + part
        count += 1
    if total is None:
        raise ValueError(f"{data}: no position question names exactly one object")
    mean = total / count
    return {
        "questions": count,
        "parts": list(PARTS),
        "per_layer": [[round(v, 5) for v in r] for r in mean.tolist()],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.attention", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help="`default`, a checkpoint folder or a model YAML")
    parser.add_argument(
        "--data", type=Path, required=True, help="a split folder (vqa_questions.jsonl, scenes.jsonl)"
    )
    parser.add_argument("--questions", type=int, default=120, help="how many position questions")
    args = parser.parse_args(argv)
    assistant = load(args.model, precision="fp32")
    print(json.dumps(position_attention(assistant, args.data, args.questions), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
