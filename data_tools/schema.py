"""Structural checks of one LLaVA record (fields, types, roles, empty turns, `<image>` markers) and the strict
loader built on them.

Each problem has a kind (for the summary), the field it is about and a message; where it is comes from the
record's `SourceRecord`. The one automatic fix: a single-image record without an `<image>` marker gets one
prepended to its first human turn.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_tools.llava import (
    GPT,
    HUMAN,
    IMAGE_TOKEN,
    ROLES,
    SYSTEM,
    Record,
    SourceRecord,
    Turn,
    read_source_records,
)
from mllm.errors import MllmError

# Error kinds, in the order the summary lists them.
JSON = "json"
MISSING_FIELD = "missing_field"
BAD_TYPE = "bad_type"
BAD_ROLE = "bad_role"
EMPTY_TURN = "empty_turn"
IMAGE_MARKER = "image_marker"
IMAGE_PATH = "image_path"
IMAGE_MISSING = "image_missing"
IMAGE_INVALID = "image_invalid"
IMAGE_TOO_LARGE = "image_too_large"
TOO_LONG = "too_long"
ENCODE = "encode"  # the model's processor cannot encode the record exactly
DUPLICATE_ID = "duplicate_id"  # a warning, not an error
ERROR_KINDS = (
    JSON,
    MISSING_FIELD,
    BAD_TYPE,
    BAD_ROLE,
    EMPTY_TURN,
    IMAGE_MARKER,
    IMAGE_PATH,
    IMAGE_MISSING,
    IMAGE_INVALID,
    IMAGE_TOO_LARGE,
    TOO_LONG,
    ENCODE,
)


@dataclass(frozen=True)
class Problem:
    """Something wrong with (or fixed in) a record: kind, the field it concerns, and what."""

    kind: str
    field: str
    message: str

    def format(self, src: SourceRecord) -> str:
        """`FILE:LINE: record ID: field: problem`."""
        return f"{src.where(self.field)}: {self.message}"


@dataclass
class CheckResult:
    """Outcome of checking one record: the record when it is valid, its errors and the fixes applied."""

    record: Record | None
    errors: list[Problem] = field(default_factory=list)
    fixes: list[Problem] = field(default_factory=list)
    images: list[str] = field(default_factory=list)  # well-formed image paths, also of an invalid record


def _type_name(value: Any) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def _check_images(data: dict[str, Any], errors: list[Problem]) -> list[str] | None:
    """The record's image paths (empty when it has none), or None when the field is malformed."""
    value = data.get("image")
    if value is None:
        return []
    paths = [value] if isinstance(value, str) else value
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        errors.append(
            Problem(BAD_TYPE, "image", f"expected a path or a list of paths, got {_type_name(value)}")
        )
        return None
    for number, path in enumerate(paths):
        if not path.strip():
            name = "image" if isinstance(value, str) else f"image[{number}]"
            errors.append(Problem(BAD_TYPE, name, "empty path"))
    return paths


def _check_turns(data: dict[str, Any], errors: list[Problem]) -> list[Turn]:
    if "conversations" not in data:
        errors.append(Problem(MISSING_FIELD, "conversations", "required field is missing"))
        return []
    raw = data["conversations"]
    if not isinstance(raw, list):
        errors.append(Problem(BAD_TYPE, "conversations", f"expected a list of turns, got {_type_name(raw)}"))
        return []
    if not raw:
        errors.append(Problem(BAD_ROLE, "conversations", "no turns"))
        return []
    turns: list[Turn] = []
    for number, turn in enumerate(raw):
        where = f"conversations[{number}]"
        if not isinstance(turn, dict):
            errors.append(
                Problem(
                    BAD_TYPE, where, f"expected an object with 'from' and 'value', got {_type_name(turn)}"
                )
            )
            continue
        ok = True
        for key in ("from", "value"):
            if key not in turn:
                errors.append(Problem(MISSING_FIELD, f"{where}.{key}", "required field is missing"))
                ok = False
            elif not isinstance(turn[key], str):
                errors.append(
                    Problem(BAD_TYPE, f"{where}.{key}", f"expected a string, got {_type_name(turn[key])}")
                )
                ok = False
        if not ok:
            continue
        if turn["from"] not in ROLES:
            errors.append(
                Problem(
                    BAD_ROLE, f"{where}.from", f"unknown role {turn['from']!r}; valid: {', '.join(ROLES)}"
                )
            )
            continue
        if not turn["value"].strip():
            errors.append(Problem(EMPTY_TURN, f"{where}.value", f"empty {turn['from']} turn"))
        turns.append(Turn(turn["from"], turn["value"]))
    if len(turns) == len(raw):
        _check_order(turns, errors)
    return turns


def _check_order(turns: list[Turn], errors: list[Problem]) -> None:
    """Roles alternate human, gpt, human, ... after an optional leading system turn, and end with gpt."""
    start = 1 if turns[0].role == SYSTEM else 0
    for number in range(start, len(turns)):
        expected = HUMAN if (number - start) % 2 == 0 else GPT
        role = turns[number].role
        if role != expected:
            after = "at the start" if number == start else f"after a {turns[number - 1].role} turn"
            hint = " (a system turn may only come first)" if role == SYSTEM else ""
            errors.append(
                Problem(
                    BAD_ROLE,
                    f"conversations[{number}].from",
                    f"expected {expected!r} {after}, got {role!r}{hint}",
                )
            )
            return
    if len(turns) == start:
        errors.append(Problem(BAD_ROLE, "conversations", "only a system turn; no human or gpt turns"))
    elif turns[-1].role != GPT:
        errors.append(
            Problem(
                BAD_ROLE,
                f"conversations[{len(turns) - 1}].from",
                "conversation ends with a human turn (no reply to learn from)",
            )
        )


def _check_markers(
    images: list[str], turns: list[Turn], data: dict[str, Any], errors: list[Problem], fixes: list[Problem]
) -> list[Turn]:
    """Count `<image>` markers against the images; fix the one-image-no-marker case in `data` and `turns`."""
    markers = 0
    for number, turn in enumerate(turns):
        count = turn.value.count(IMAGE_TOKEN)
        if count and turn.role != HUMAN:
            errors.append(
                Problem(
                    IMAGE_MARKER,
                    f"conversations[{number}].value",
                    f"{IMAGE_TOKEN} marker in a {turn.role} turn; markers belong in human turns",
                )
            )
        elif turn.role == HUMAN:
            markers += count
    if len(images) == 1 and markers == 0:
        first = next((n for n, t in enumerate(turns) if t.role == HUMAN), None)
        if first is not None:
            value = f"{IMAGE_TOKEN}\n{turns[first].value}"
            turns = [*turns[:first], Turn(HUMAN, value), *turns[first + 1 :]]
            data["conversations"] = [dict(t) for t in data["conversations"]]
            data["conversations"][first]["value"] = value
            fixes.append(
                Problem(
                    IMAGE_MARKER,
                    f"conversations[{first}].value",
                    f"prepended the missing {IMAGE_TOKEN} marker for the record's one image",
                )
            )
            return turns
    if markers != len(images):
        images_text = f"{len(images)} image{'s' if len(images) != 1 else ''}"
        errors.append(
            Problem(
                IMAGE_MARKER,
                "conversations",
                f"{markers} {IMAGE_TOKEN} marker{'s' if markers != 1 else ''} for {images_text}",
            )
        )
    return turns


def check_record(src: SourceRecord) -> CheckResult:
    """Structural check of one source record; on success `record` holds the (fixed) record."""
    if src.syntax_error is not None:
        return CheckResult(None, [Problem(JSON, "json", src.syntax_error)])
    if not isinstance(src.data, dict):
        return CheckResult(
            None, [Problem(BAD_TYPE, "record", f"expected an object, got {_type_name(src.data)}")]
        )
    data = dict(src.data)
    errors: list[Problem] = []
    fixes: list[Problem] = []
    rid = data.get("id")
    if "id" not in data:
        errors.append(Problem(MISSING_FIELD, "id", "required field is missing"))
    elif not isinstance(rid, (str, int)) or isinstance(rid, bool):
        errors.append(Problem(BAD_TYPE, "id", f"expected a string or integer, got {_type_name(rid)}"))
    elif not str(rid).strip():
        errors.append(Problem(BAD_TYPE, "id", "empty id"))
    images = _check_images(data, errors)
    turns = _check_turns(data, errors)
    if images is not None and turns and len(turns) == len(data["conversations"]):  # all well-formed
        turns = _check_markers(images, turns, data, errors, fixes)
    if errors:
        return CheckResult(None, errors, fixes, images or [])
    record = Record(str(rid), tuple(images or ()), tuple(turns), data, src.line)
    return CheckResult(record, errors, fixes, images or [])


def load_records(path: str | Path) -> list[Record]:
    """All records of a LLaVA file, fixes applied; the first structural error raises MllmError naming
    FILE:LINE, the record and the field (run `mllm data validate` to see every error)."""
    records: list[Record] = []
    for src in read_source_records(path):
        result = check_record(src)
        if result.record is None:
            problem = result.errors[0]
            more = f" (and {len(result.errors) - 1} more in this record)" if len(result.errors) > 1 else ""
            raise MllmError(
                f"{problem.format(src)}{more}; run `mllm data validate {path}` to list every problem"
            )
        records.append(result.record)
    return records
