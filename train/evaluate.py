"""Evaluation during and after training: held-out loss on LLaVA records, and VQA accuracy (normalized exact
match, overall and per question type) on a question file answered with mllm's batched greedy generation.

Both shard their work across the ranks and sum the counts, so every rank gets the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mllm.assistant import Assistant
from mllm.batch import answer_batch
from mllm.errors import MllmError
from mllm.jsonl import read_jsonl
from mllm.model import MultimodalModel
from mllm.processor import IGNORE_INDEX
from mllm.scoring import OVERALL, score_counts
from train.data import Example
from train.engine import all_sum

ForwardFn = Callable[..., Any]


def supervised_logits(
    forward: ForwardFn, batch: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits [n, vocab] at the n positions whose next token is supervised, row by row (`logits_at`, which
    skips almost all of the LM head), their n target tokens, the [B, T] mask of those positions)."""
    labels: torch.Tensor = batch["labels"]
    shifted = labels[:, 1:]
    supervised = shifted != IGNORE_INDEX
    at = torch.cat([supervised, supervised.new_zeros(supervised.shape[0], 1)], dim=1)
    out = forward(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        pixel_values=batch["pixel_values"],
        logits_at=at,
    )
    return out.logits.float(), shifted[supervised].to(out.logits.device), at


def supervised_loss(forward: ForwardFn, batch: dict[str, Any]) -> tuple[torch.Tensor, int]:
    """(mean next-token loss over supervised tokens, their count)."""
    logits, target, _at = supervised_logits(forward, batch)
    count = int(target.numel())
    loss = F.cross_entropy(logits, target, reduction="sum")
    return loss / max(count, 1), count


@torch.no_grad()
def eval_loss(
    forward: ForwardFn,
    examples: Sequence[Example],
    collate: Callable[[list[Example]], dict[str, Any]],
    batch_size: int,
    rank: int,
    world: int,
) -> float:
    """Token-weighted mean loss over `examples` (this rank takes every world-th batch)."""
    total = tokens = 0.0
    batches = [list(examples[i : i + batch_size]) for i in range(0, len(examples), batch_size)]
    for batch_examples in batches[rank::world]:
        batch = collate(batch_examples)
        if batch["size"] == 0:
            continue
        loss, count = supervised_loss(forward, batch)
        total += float(loss) * count
        tokens += count
    total, tokens = all_sum([total, tokens])
    return total / tokens if tokens else float("nan")


@dataclass
class VQAItem:
    """One question with its gold answer."""

    question_id: str
    image: Path
    text: str
    answer: str
    type: str


def load_vqa(
    questions: str | Path, answers: str | Path, image_folder: str | Path | None, limit: int | None = None
) -> list[VQAItem]:
    """Questions joined with their gold answers (by question_id); images relative to `image_folder`
    (default: `images/` next to the question file)."""
    questions, answers = Path(questions), Path(answers)
    folder = Path(image_folder) if image_folder is not None else questions.parent / "images"
    gold: dict[str, dict[str, Any]] = {}
    for number, row in enumerate(read_jsonl(answers), 1):
        for key in ("question_id", "answer"):
            if key not in row:
                raise MllmError(f"{answers}: row {number}: field {key} is missing")
        gold[str(row["question_id"])] = row
    items = []
    for number, row in enumerate(read_jsonl(questions), 1):
        for key in ("question_id", "image", "text"):
            if key not in row:
                raise MllmError(f"{questions}: row {number}: field {key} is missing")
        qid = str(row["question_id"])
        if qid not in gold:
            raise MllmError(f"{questions}: row {number}: question {qid} has no gold answer in {answers}")
        items.append(
            VQAItem(
                qid,
                folder / row["image"],
                row["text"],
                str(gold[qid]["answer"]),
                str(gold[qid].get("type", "all")),
            )
        )
        if limit is not None and len(items) >= limit:
            break
    return items


def vqa_answers(
    model: MultimodalModel,
    items: Sequence[VQAItem],
    batch_size: int = 16,
    max_new_tokens: int = 10,
    merge_lora: bool = False,
) -> list[str]:
    """Greedy answers to `items`; the model is left in the mode it was in and never modified. `merge_lora`
    names a model whose LoRA is already merged (mllm's fast token loop); otherwise transformers' generate."""
    was_training = model.training
    try:
        return assistant_answers(Assistant(model, fast=merge_lora), items, batch_size, max_new_tokens)
    finally:
        model.train(was_training)


def assistant_answers(
    assistant: Assistant, items: Sequence[VQAItem], batch_size: int = 16, max_new_tokens: int = 10
) -> list[str]:
    """Greedy answers of a loaded Assistant (e.g. `mllm.load(..., precision=...)`) to `items`."""
    return answer_batch(
        assistant,
        [([item.image], item.text) for item in items],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
    )


def accuracy(
    items: Sequence[VQAItem], answers: Sequence[str], rank: int = 0, world: int = 1
) -> dict[str, float]:
    """Normalized exact match overall and per type of this rank's `answers` to `items` (counts summed across
    ranks; `items` is the full list, each rank answered items[rank::world])."""
    mine = list(items[rank::world])
    counts = score_counts(
        {i.question_id: a for i, a in zip(mine, answers)}, {i.question_id: (i.answer, i.type) for i in mine}
    )
    types = sorted({i.type for i in items})
    keys = [OVERALL, *types]
    flat = all_sum([float(v) for key in keys for v in counts.get(key, (0, 0))])
    return {key: flat[2 * k] / flat[2 * k + 1] if flat[2 * k + 1] else 0.0 for k, key in enumerate(keys)}


def vqa_accuracy(
    model: MultimodalModel,
    items: Sequence[VQAItem],
    rank: int = 0,
    world: int = 1,
    batch_size: int = 16,
    merge_lora: bool = False,
) -> dict[str, float]:
    """Accuracy overall and per type over `items` (sharded across ranks, counts summed)."""
    answers = vqa_answers(model, list(items[rank::world]), batch_size, merge_lora=merge_lora)
    return accuracy(items, answers, rank, world)
