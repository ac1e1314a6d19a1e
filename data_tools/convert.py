"""`mllm data convert`: turn simple tables into LLaVA records.

- captions (CSV with a header, or JSONL / JSON list) with `image` and `caption` -> stage-1 alignment records
  (a brief-caption prompt, the caption as the reply);
- VQA (JSONL / JSON list or CSV) with `image`, `question`, `answer` (optional `question_id` or `id`, `type`)
  -> single-turn instruction records asking for a short answer, and / or a question file
  (`{"question_id", "image", "text"}`, LLaVA's model_vqa format) with its gold file
  (`{"question_id", "answer", "type"}`).

A missing or empty field stops the conversion with FILE:LINE, the row and the field.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_tools.llava import (
    CAPTION_PROMPTS,
    SHORT_ANSWER_SUFFIX,
    make_record,
    read_source_records,
    write_jsonl,
    write_records,
)
from mllm.errors import MllmError


@dataclass(frozen=True)
class Row:
    """One input row with where it came from."""

    path: Path
    line: int
    number: int  # 1-based position among the rows
    data: dict[str, Any]

    def where(self, field_name: str) -> str:
        return f"{self.path}:{self.line}: row {self.number}: {field_name}"

    def text(self, key: str) -> str:
        """The non-empty string value of column `key` (numbers are accepted and turned into text)."""
        value = self.data.get(key)
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            shown = "missing" if value is None else f"expected text, got {type(value).__name__}"
            raise MllmError(f"{self.where(key)}: {shown}")
        text = str(value).strip()
        if not text:
            raise MllmError(f"{self.where(key)}: empty")
        return text

    def optional(self, key: str) -> str | None:
        return self.text(key) if self.data.get(key) not in (None, "") else None


def read_rows(path: str | Path) -> Iterator[Row]:
    """Rows of a CSV file (by extension .csv / .tsv, first line a header) or of JSONL / a JSON list."""
    path = Path(path)
    if path.suffix.lower() in (".csv", ".tsv"):
        yield from _read_csv(path)
        return
    for number, src in enumerate(read_source_records(path), start=1):
        if src.syntax_error is not None:
            raise MllmError(f"{path}:{src.line}: row {number}: {src.syntax_error}")
        if not isinstance(src.data, dict):
            raise MllmError(
                f"{path}:{src.line}: row {number}: expected an object, got {type(src.data).__name__}"
            )
        yield Row(path, src.line, number, src.data)


def _read_csv(path: Path) -> Iterator[Row]:
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except FileNotFoundError:
        raise MllmError(f"{path}: input file not found") from None
    with handle:
        reader = csv.DictReader(handle, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        if reader.fieldnames is None:
            raise MllmError(f"{path}:1: empty file; expected a header line")
        line = reader.line_num
        for number, data in enumerate(reader, start=1):
            start, line = line + 1, reader.line_num
            if None in data:
                raise MllmError(f"{path}:{start}: row {number}: more columns than the header has")
            yield Row(path, start, number, {k.strip(): v for k, v in data.items()})


def convert_captions(
    source: str | Path, out: str | Path, image_key: str = "image", caption_key: str = "caption", seed: int = 0
) -> int:
    """Captions -> alignment records in `out` (JSON list, or JSONL by extension); returns how many."""
    rng = random.Random(f"mllm-convert-captions/{seed}")
    stem = Path(source).stem

    records = []
    for row in read_rows(source):
        rid = row.optional("id") or f"{stem}-{row.number:06d}"
        pair = (rng.choice(CAPTION_PROMPTS), row.text(caption_key))
        records.append(make_record(rid, [row.text(image_key)], [pair]))
    return write_records(records, out)


def convert_vqa(
    source: str | Path,
    out: str | Path | None = None,
    questions: str | Path | None = None,
    answers: str | Path | None = None,
    image_key: str = "image",
    question_key: str = "question",
    answer_key: str = "answer",
    suffix: str = SHORT_ANSWER_SUFFIX,
) -> int:
    """VQA rows -> instruction records (`out`) and / or question and gold files; returns the row count."""
    if out is None and questions is None and answers is None:
        raise MllmError("convert vqa: name at least one output (--out, --questions or --answers)")
    stem = Path(source).stem
    records: list[dict[str, Any]] = []
    question_rows: list[dict[str, Any]] = []
    answer_rows: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for row in read_rows(source):
        qid = row.optional("question_id") or row.optional("id") or f"{stem}-{row.number:06d}"
        if qid in seen:
            raise MllmError(f"{row.where('question_id')}: duplicate id {qid!r} (first at line {seen[qid]})")
        seen[qid] = row.line
        image, question, answer = row.text(image_key), row.text(question_key), row.text(answer_key)
        text = question if question.endswith(suffix) else f"{question}\n{suffix}"
        records.append(make_record(qid, [image], [(text, answer)]))
        question_rows.append({"question_id": qid, "image": image, "text": text})
        answer_rows.append({"question_id": qid, "answer": answer, "type": row.optional("type") or "other"})
    if out is not None:
        write_records(records, out)
    if questions is not None:
        write_jsonl(question_rows, questions)
    if answers is not None:
        write_jsonl(answer_rows, answers)
    return len(records)
