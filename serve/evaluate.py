"""`mllm eval`: score an answers file (LLaVA model_vqa output) against gold answers
`{"question_id", "answer", "type"}` by normalized exact match (mllm.scoring), overall and per type."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from mllm.errors import MllmError
from mllm.jsonl import read_jsonl_numbered
from mllm.scoring import OVERALL, score_counts

log = logging.getLogger(__name__)


def _records(path: Path, flag: str) -> list[tuple[int, dict[str, Any]]]:
    records = read_jsonl_numbered(path, flag)
    for n, record in records:
        if not isinstance(record.get("question_id"), (str, int)) and not record.get("error"):
            raise MllmError(f"{path}:{n}: field question_id: expected a string or integer")
    return records


def read_gold(path: Path) -> dict[str, tuple[str, str]]:
    """question_id (as string) -> (answer, type); `type` defaults to "other"."""
    gold: dict[str, tuple[str, str]] = {}
    for n, record in _records(path, "--gold"):
        answer, qtype = record.get("answer"), record.get("type", "other")
        if not isinstance(answer, (str, int, float)) or isinstance(answer, bool):
            raise MllmError(f"{path}:{n}: field answer: expected a string or number")
        if not isinstance(qtype, str) or not qtype or qtype == OVERALL:
            raise MllmError(f"{path}:{n}: field type: expected a non-empty string other than {OVERALL!r}")
        qid = str(record["question_id"])
        if qid in gold:
            raise MllmError(f"{path}:{n}: question_id {record['question_id']!r} appears twice")
        gold[qid] = (str(answer), qtype)
    if not gold:
        raise MllmError(f"{path}: no gold answers")
    return gold


def read_answers(path: Path) -> dict[str, str]:
    """question_id (as string) -> answer text; error records count as unanswered, a later answer wins."""
    answers: dict[str, str] = {}
    for n, record in _records(path, "--answers"):
        if record.get("error"):
            continue
        text = record.get("text")
        if not isinstance(text, str):
            raise MllmError(f"{path}:{n}: field text: expected a string")
        answers[str(record["question_id"])] = text
    return answers


def evaluate(answers_path: Path, gold_path: Path) -> dict[str, tuple[int, int]]:
    """(correct, total) overall and per type; missing answers count as wrong and are reported."""
    gold = read_gold(gold_path)
    answers = read_answers(answers_path)
    missing = sum(qid not in answers for qid in gold)
    if missing:
        log.warning(
            "%d of %d gold question(s) have no answer in %s; counted as wrong",
            missing,
            len(gold),
            answers_path,
        )
    extra = sum(qid not in gold for qid in answers)
    if extra:
        log.warning("%d answer(s) in %s have no gold answer; ignored", extra, answers_path)
    return score_counts(answers, gold)


def format_table(counts: dict[str, tuple[int, int]]) -> str:
    """A plain-text table: one row per type (sorted), then the overall row."""
    rows = [(key, *counts[key]) for key in sorted(k for k in counts if k != OVERALL)] + [
        (OVERALL, *counts[OVERALL])
    ]
    width = max(len("type"), *(len(r[0]) for r in rows))
    lines = [f"{'type':<{width}}  {'correct':>7}  {'total':>6}  {'accuracy':>8}"]
    for key, correct, total in rows:
        lines.append(f"{key:<{width}}  {correct:>7}  {total:>6}  {100 * correct / max(total, 1):>7.1f}%")
    return "\n".join(lines)


def format_json(counts: dict[str, tuple[int, int]]) -> str:
    """One JSON line {"overall": accuracy, "<type>": accuracy, ...}, accuracies in [0, 1]."""
    ordered = [OVERALL, *sorted(k for k in counts if k != OVERALL)]
    return json.dumps({key: round(counts[key][0] / max(counts[key][1], 1), 6) for key in ordered})
