"""LLaVA-format instruction data: read a JSON list or JSONL file keeping each record's source line, the typed
record, record builders, and writers.

A record is `{"id", "image": path or list of paths (optional), "conversations": [{"from", "value"}]}` with
roles `human` / `gpt` (and an optional leading `system` turn); `<image>` marks where each image goes.
Reading never judges a record: the structural checks live in `data_tools.schema`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mllm.errors import MllmError

IMAGE_TOKEN = "<image>"
HUMAN = "human"
GPT = "gpt"
SYSTEM = "system"
ROLES = (HUMAN, GPT, SYSTEM)
SHORT_ANSWER_SUFFIX = "Answer the question using a single word or number."
# Prompts of stage-1 (alignment) records: the answer is a short caption of the image.
CAPTION_PROMPTS = (
    "Give a short caption of the image.",
    "Describe the image briefly.",
    "Write a brief caption for this picture.",
    "Summarize the image in one sentence.",
)
_WHITESPACE = " \t\n\r"


@dataclass(frozen=True)
class SourceRecord:
    """One top-level item of a data file: its parsed JSON value, or the syntax error that stopped reading."""

    path: Path
    line: int  # 1-based line where the item starts (for a syntax error: where the error is)
    index: int  # 0-based position in the file
    data: Any = None
    syntax_error: str | None = None

    @property
    def label(self) -> str:
        """How messages name the record: its id when it has a usable one, else `#<position>` (1-based)."""
        if isinstance(self.data, dict):
            rid = self.data.get("id")
            if isinstance(rid, (str, int)) and not isinstance(rid, bool) and str(rid).strip():
                return str(rid)
        return f"#{self.index + 1}"

    def where(self, field_name: str) -> str:
        """`FILE:LINE: record ID: field` prefix of a message about this record."""
        return f"{self.path}:{self.line}: record {self.label}: {field_name}"


@dataclass(frozen=True)
class Turn:
    """One conversation turn: role (`human`, `gpt` or `system`) and its text."""

    role: str
    value: str


@dataclass(frozen=True)
class Record:
    """A structurally valid LLaVA record. `data` is the JSON object to write back (fixes applied)."""

    id: str
    images: tuple[str, ...]
    turns: tuple[Turn, ...]
    data: dict[str, Any] = field(compare=False, repr=False, default_factory=dict)
    line: int = 0


def _json_error(path: Path, index: int, line: int, column: int, msg: str) -> SourceRecord:
    return SourceRecord(path, line, index, syntax_error=f"invalid JSON at column {column}: {msg}")


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _WHITESPACE:
        pos += 1
    return pos


def _line_col(text: str, pos: int) -> tuple[int, int]:
    line = text.count("\n", 0, pos) + 1
    return line, pos - (text.rfind("\n", 0, pos) + 1) + 1


def _iter_json_list(path: Path, text: str) -> Iterator[SourceRecord]:
    """Items of a top-level JSON array, one at a time, each with the line it starts on."""
    decoder = json.JSONDecoder()
    pos = _skip_ws(text, 0) + 1  # past '['
    index, line, counted_to = 0, 1, 0
    pos = _skip_ws(text, pos)
    if pos < len(text) and text[pos] == "]":
        pos = _skip_ws(text, pos + 1)
        if pos < len(text):
            yield _json_error(path, 0, *_line_col(text, pos), "extra data after the closing ']'")
        return
    while True:
        line += text.count("\n", counted_to, pos)
        counted_to = pos
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            yield _json_error(path, index, exc.lineno, exc.colno, exc.msg)
            return
        yield SourceRecord(path, line, index, data=value)
        index += 1
        pos = _skip_ws(text, end)
        if pos >= len(text):
            yield _json_error(
                path, index, *_line_col(text, pos), "unexpected end of file, expecting ',' or ']'"
            )
            return
        if text[pos] == "]":
            pos = _skip_ws(text, pos + 1)
            if pos < len(text):
                yield _json_error(path, index, *_line_col(text, pos), "extra data after the closing ']'")
            return
        if text[pos] != ",":
            yield _json_error(path, index, *_line_col(text, pos), "expecting ',' between records")
            return
        pos = _skip_ws(text, pos + 1)
        if pos < len(text) and text[pos] == "]":
            yield _json_error(path, index, *_line_col(text, pos), "trailing comma before ']'")
            return


def _iter_jsonl(path: Path, text: str) -> Iterator[SourceRecord]:
    """One record per non-blank line; a bad line is reported and reading goes on with the next."""
    index = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            yield _json_error(path, index, number, exc.colno, exc.msg)
        else:
            yield SourceRecord(path, number, index, data=value)
        index += 1


def read_source_records(path: str | Path) -> Iterator[SourceRecord]:
    """Items of a LLaVA data file: a JSON list (first character `[`) or JSONL (one object a line)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MllmError(f"{path}: data file not found") from None
    except IsADirectoryError:
        raise MllmError(f"{path}: is a folder, not a data file") from None
    except UnicodeDecodeError as exc:
        raise MllmError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    text = text.removeprefix("\ufeff")
    start = _skip_ws(text, 0)
    if start < len(text) and text[start] == "[":
        return _iter_json_list(path, text)
    if path.suffix.lower() == ".json" and _is_one_spread_object(text):
        line = text.count("\n", 0, start) + 1
        return iter(
            [
                SourceRecord(
                    path,
                    line,
                    0,
                    syntax_error="the file holds one JSON object over several lines; "
                    "expected a JSON list of records, or JSONL with one record a line",
                )
            ]
        )
    return _iter_jsonl(path, text)


def _is_one_spread_object(text: str) -> bool:
    """True for a file that is a single JSON object written over several lines (not JSONL)."""
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) < 2:
        return False
    try:
        json.loads(lines[0])
    except json.JSONDecodeError:
        try:
            return isinstance(json.loads(text), dict)
        except json.JSONDecodeError:
            return False
    return False


def write_records(records: Iterable[dict[str, Any]], path: str | Path) -> int:
    """Write records as JSONL when `path` ends in `.jsonl`, else as a JSON list; returns how many."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", encoding="utf-8") as out:
        jsonl = path.suffix.lower() == ".jsonl"
        if not jsonl:
            out.write("[")
        for record in records:
            if jsonl:
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
            else:
                out.write(("\n" if count == 0 else ",\n") + json.dumps(record, ensure_ascii=False))
            count += 1
        if not jsonl:
            out.write("\n]\n")
    return count


def write_jsonl(rows: Iterable[dict[str, Any]], path: str | Path) -> int:
    """Write plain JSON objects one a line; returns how many."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def make_record(
    rid: str, images: Sequence[str], pairs: Sequence[tuple[str, str]], image_first: bool = True
) -> dict[str, Any]:
    """A LLaVA record from (question, answer) pairs; one `<image>` per image goes into the first question,
    before it (`image_first`) or after it. Text-only records carry no `image` field."""
    conversations: list[dict[str, str]] = []
    for number, (question, answer) in enumerate(pairs):
        if number == 0 and images:
            markers = "\n".join([IMAGE_TOKEN] * len(images))
            question = f"{markers}\n{question}" if image_first else f"{question}\n{markers}"
        conversations.append({"from": HUMAN, "value": question})
        conversations.append({"from": GPT, "value": answer})
    record: dict[str, Any] = {"id": rid}
    if images:
        record["image"] = images[0] if len(images) == 1 else list(images)
    record["conversations"] = conversations
    return record
