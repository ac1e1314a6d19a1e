"""Strict JSON Lines reading: every non-blank line must be a JSON object, and any problem is reported with the
file and line number, so a bad record is found in seconds instead of failing a run later."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mllm.errors import MllmError


def read_lines(path: Path, what: str = "") -> list[tuple[int, str]]:
    """(line number, text) of every non-blank line of a UTF-8 file; `what` (e.g. a CLI flag) is named when the
    file is missing."""
    where = f" ({what})" if what else ""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise MllmError(f"{path}: file not found{where}") from None
    except UnicodeDecodeError as exc:
        raise MllmError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return [(number, line) for number, line in enumerate(lines, 1) if line.strip()]


def read_jsonl_numbered(path: Path, what: str = "") -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line of `path` (see read_lines)."""
    rows = []
    for number, line in read_lines(path, what):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise MllmError(f"{path}:{number}: invalid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(row, dict):
            raise MllmError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
        rows.append((number, row))
    return rows


def read_jsonl(path: Path, what: str = "") -> list[dict[str, Any]]:
    """The objects of `path`, one per non-blank line (see read_jsonl_numbered)."""
    return [row for _, row in read_jsonl_numbered(path, what)]
