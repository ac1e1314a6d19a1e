"""Scripted VQA: answer one question, or a LLaVA `model_vqa` questions file into an answers file.

Questions (JSONL): `{"question_id", "image", "text"}` (`image` relative to --image-folder; a list of names or
no image at all also work). Answers (JSONL): `{"question_id", "prompt", "text", "answer_id", "model_id",
"metadata"}`. A line that cannot be read or answered becomes an error record (`"error"` holds the reason,
`"text"` is empty) and the run goes on. Runs resume: question ids already answered in the output file are
skipped; error records are retried. Answers are appended and flushed after every batch.
"""

from __future__ import annotations

import json
import logging
import sys
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from mllm.assistant import Assistant
from mllm.batch import Prompt, encode_item, generate_prompts
from mllm.errors import MllmError
from mllm.jsonl import read_lines

log = logging.getLogger(__name__)


@dataclass
class Question:
    """One usable line of the questions file."""

    line: int
    question_id: str | int
    text: str
    images: list[str] = field(default_factory=list)


@dataclass
class Problem:
    """A line that cannot be answered, with where and why."""

    line: int
    question_id: str | int | None
    text: str | None
    error: str


@dataclass
class RunSummary:
    """What a questions-file run did."""

    answered: int = 0
    errors: int = 0
    skipped: int = 0


def parse_question(raw: str, line: int, source: str) -> Question | Problem:
    """A questions-file line -> Question, or a Problem naming the line, question_id and field."""
    try:
        record = json.loads(raw)
    except json.JSONDecodeError as exc:
        return Problem(line, None, None, f"{source}:{line}: invalid JSON ({exc.msg} at column {exc.colno})")
    if not isinstance(record, dict):
        return Problem(
            line, None, None, f"{source}:{line}: expected a JSON object, got {type(record).__name__}"
        )
    qid = record.get("question_id")
    where = f"{source}:{line} (question_id {qid!r})"
    if not isinstance(qid, (str, int)) or isinstance(qid, bool):
        return Problem(line, None, None, f"{where}: field question_id: expected a string or integer")
    text = record.get("text")
    if not isinstance(text, str) or not text.strip():
        return Problem(line, qid, None, f"{where}: field text: expected a non-empty string")
    image = record.get("image")
    images = [] if image is None else [image] if isinstance(image, str) else image
    if not isinstance(images, list) or not all(isinstance(i, str) and i for i in images):
        return Problem(line, qid, text, f"{where}: field image: expected a file name or a list of file names")
    return Question(line, qid, text, images)


def read_questions(path: Path) -> list[Question | Problem]:
    """Every non-blank line of a questions file, parsed."""
    return [parse_question(raw, n, str(path)) for n, raw in read_lines(path, "--questions")]


def answered_ids(path: Path) -> set[str]:
    """Question ids (as strings) with an answer in an existing answers file. A torn last line (a killed run)
    is cut off; other unreadable lines are reported and ignored."""
    if not path.exists():
        return set()
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        log.warning("%s: removing an incomplete last line left by an interrupted run", path)
        with path.open("r+b") as f:
            f.truncate(cut)
        data = data[:cut]
    done: set[str] = set()
    for n, raw in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError:
            log.warning("%s:%d: not JSON; ignored when resuming", path, n)
            continue
        if isinstance(record, dict) and "question_id" in record and not record.get("error"):
            done.add(str(record["question_id"]))
    return done


def answer_record(question: Question, text: str, model_id: str) -> dict[str, Any]:
    """LLaVA model_vqa's answer record."""
    return {
        "question_id": question.question_id,
        "prompt": question.text,
        "text": text,
        "answer_id": uuid.uuid4().hex,
        "model_id": model_id,
        "metadata": {},
    }


def error_record(problem: Problem, model_id: str) -> dict[str, Any]:
    """An answer-file record for a line that could not be answered."""
    return {
        "question_id": problem.question_id,
        "prompt": problem.text,
        "text": "",
        "answer_id": uuid.uuid4().hex,
        "model_id": model_id,
        "metadata": {"line": problem.line},
        "error": problem.error,
    }


def image_path(folder: Path, name: str) -> Path:
    """The file `name` inside `folder`; an absolute name or one that escapes the folder (`..`, a symlink
    pointing out) raises MllmError naming it."""
    if "\x00" in name:
        raise MllmError(f"field image: {name!r} contains a NUL character")
    if Path(name).is_absolute():
        raise MllmError(f"field image: absolute path {name!r}; names are relative to --image-folder")
    root = folder.resolve()
    path = (root / name).resolve()
    if not path.is_relative_to(root):
        raise MllmError(f"field image: {name!r} is outside the image folder {folder}")
    return path


def _batches(items: Sequence[Question], size: int) -> Iterator[Sequence[Question]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _write(out: TextIO, record: dict[str, Any]) -> None:
    out.write(json.dumps(record, ensure_ascii=False) + "\n")


def run_questions(
    assistant: Assistant,
    questions_path: Path,
    image_folder: Path,
    answers_path: Path,
    batch_size: int = 16,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_p: float = 1.0,
    model_id: str | None = None,
    progress: bool = True,
) -> RunSummary:
    """Answer every not-yet-answered question of `questions_path` into `answers_path` (appending)."""
    if batch_size < 1:
        raise MllmError(f"--batch-size {batch_size}: must be at least 1")
    if not image_folder.is_dir():
        raise MllmError(f"{image_folder}: image folder not found (--image-folder)")
    model_id = model_id or assistant.name
    parsed = read_questions(questions_path)
    done = answered_ids(answers_path)
    summary = RunSummary()
    todo: list[Question] = []
    problems: list[Problem] = []
    seen: set[str] = set()
    for item in parsed:
        if isinstance(item, Problem):
            problems.append(item)
            continue
        key = str(item.question_id)
        if key in seen:
            log.warning(
                "%s:%d: question_id %r appears again; skipped", questions_path, item.line, item.question_id
            )
            continue
        seen.add(key)
        if key in done:
            summary.skipped += 1
        else:
            todo.append(item)
    if summary.skipped:
        log.info("resuming: %d question(s) already answered in %s", summary.skipped, answers_path)
    answers_path.parent.mkdir(parents=True, exist_ok=True)
    with (
        answers_path.open("a", encoding="utf-8") as out,
        tqdm(total=len(todo), file=sys.stderr, disable=not progress, unit="q", desc="vqa") as bar,
    ):
        for problem in problems:
            log.warning("%s", problem.error)
            _write(out, error_record(problem, model_id))
            summary.errors += 1
        for batch in _batches(todo, batch_size):
            ready: list[tuple[Question, Prompt]] = []
            results: dict[int, dict[str, Any]] = {}
            for question in batch:
                try:
                    images = [image_path(image_folder, name) for name in question.images]
                    ready.append((question, encode_item(assistant, images, question.text)))
                except MllmError as exc:
                    problem = Problem(
                        question.line,
                        question.question_id,
                        question.text,
                        f"{questions_path}:{question.line} (question_id {question.question_id!r}): {exc}",
                    )
                    log.warning("%s", problem.error)
                    results[question.line] = error_record(problem, model_id)
                    summary.errors += 1
            texts = generate_prompts(assistant, [p for _, p in ready], max_new_tokens, temperature, top_p)
            for (question, _), text in zip(ready, texts, strict=True):
                results[question.line] = answer_record(question, text, model_id)
                summary.answered += 1
            for question in batch:
                _write(out, results[question.line])
            out.flush()
            bar.update(len(batch))
    return summary
