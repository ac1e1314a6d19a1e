"""`mllm data validate`: check every record of a LLaVA file (syntax, structure, `<image>` markers, image
files, and with a model the token length against its context), report each problem as
`FILE:LINE: record ID: field: problem` plus a summary, and optionally write the valid and fixed records."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from data_tools.images import check_image_file, resolve_image
from data_tools.llava import Record, SourceRecord, read_source_records, write_records
from data_tools.schema import DUPLICATE_ID, ENCODE, ERROR_KINDS, TOO_LONG, Problem, check_record
from data_tools.tokens import measure_lengths
from mllm.errors import MllmError
from mllm.limits import DEFAULT_MAX_PIXELS

MAX_FIX_LINES = 20  # fixes are listed up to this many, then counted


@dataclass
class ValidationReport:
    """What validation found in one file; `errors`, `fixes` and `warnings` are formatted message lines."""

    path: Path
    records: int = 0
    images: int = 0
    turns: int = 0
    errors: list[str] = field(default_factory=list)
    fixes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    errors_by_kind: Counter[str] = field(default_factory=Counter)
    fixes_by_kind: Counter[str] = field(default_factory=Counter)
    warnings_by_kind: Counter[str] = field(default_factory=Counter)
    valid: list[Record] = field(default_factory=list)
    images_checked: bool = False
    length_note: str = "token lengths not checked (pass --model)"

    @property
    def ok(self) -> bool:
        return not self.errors

    def add(self, src: SourceRecord, problem: Problem, bucket: str = "errors") -> None:
        getattr(self, bucket).append(problem.format(src))
        getattr(self, f"{bucket}_by_kind")[problem.kind] += 1


def _check_images(
    src: SourceRecord, images: list[str], folder: Path, max_pixels: int, cache: dict[Path, Problem | None]
) -> list[Problem]:
    problems: list[Problem] = []
    for number, relative in enumerate(images):
        name = "image" if isinstance(src.data.get("image"), str) else f"image[{number}]"
        path, problem = resolve_image(folder, relative, name)
        if path is not None:
            if path not in cache:
                cache[path] = check_image_file(path, name, max_pixels)
            cached = cache[path]
            problem = None if cached is None else Problem(cached.kind, name, cached.message)
        if problem is not None:
            problems.append(problem)
    return problems


def validate_file(
    path: str | Path,
    image_folder: str | Path | None = None,
    model: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> ValidationReport:
    """Check every record of `path`; images are checked when `image_folder` is given, token lengths when
    `model` is (a model spec as `--model` takes it)."""
    report = ValidationReport(Path(path), images_checked=image_folder is not None)
    folder = Path(image_folder) if image_folder is not None else None
    if folder is not None and not folder.is_dir():
        raise MllmError(f"{folder}: image folder not found (--image-folder)")
    cache: dict[Path, Problem | None] = {}
    first_line: dict[str, int] = {}
    checked: list[tuple[SourceRecord, Record]] = []
    for src in read_source_records(path):
        report.records += 1
        result = check_record(src)
        if isinstance(src.data, dict):
            report.images += _image_count(src.data)
            conversations = src.data.get("conversations")
            report.turns += len(conversations) if isinstance(conversations, list) else 0
            rid = src.label
            if rid in first_line and not rid.startswith("#"):
                report.add(
                    src,
                    Problem(DUPLICATE_ID, "id", f"duplicate id (first at line {first_line[rid]})"),
                    "warnings",
                )
            first_line.setdefault(rid, src.line)
        for problem in result.errors:
            report.add(src, problem)
        for problem in result.fixes:
            report.add(src, problem, "fixes")
        problems = _check_images(src, result.images, folder, max_pixels, cache) if folder is not None else []
        for problem in problems:
            report.add(src, problem)
        if result.record is not None and not problems:
            checked.append((src, result.record))
    if model is not None and checked:
        lengths = measure_lengths([record for _, record in checked], model)
        report.length_note = f"lengths checked in {lengths.source} (context {lengths.context})"
        kept: list[tuple[SourceRecord, Record]] = []
        for index, ((src, record), length) in enumerate(zip(checked, lengths.values)):
            if length is None:
                report.add(
                    src,
                    Problem(
                        ENCODE, "conversations", f"cannot be encoded for the model: {lengths.failures[index]}"
                    ),
                )
            elif lengths.context is not None and length > lengths.context:
                report.add(
                    src,
                    Problem(
                        TOO_LONG,
                        "conversations",
                        f"{length} tokens, over the model's context of {lengths.context}",
                    ),
                )
            else:
                kept.append((src, record))
        checked = kept
    report.valid = [record for _, record in checked]
    return report


def _image_count(data: dict[str, Any]) -> int:
    value = data.get("image")
    if isinstance(value, str):
        return 1
    return len(value) if isinstance(value, list) else 0


def _by_kind(counts: Counter[str], order: tuple[str, ...] = ERROR_KINDS) -> str:
    kinds = [k for k in order if counts[k]] + sorted(k for k in counts if k not in order)
    return ", ".join(f"{kind} {counts[kind]}" for kind in kinds)


def print_report(report: ValidationReport, out: TextIO) -> None:
    """Every error and warning line, the first fixes, then the summary."""
    for line in report.errors:
        print(line, file=out)
    for line in report.warnings:
        print(f"{line} (warning)", file=out)
    for line in report.fixes[:MAX_FIX_LINES]:
        print(f"{line} (fixed)", file=out)
    if len(report.fixes) > MAX_FIX_LINES:
        print(f"... and {len(report.fixes) - MAX_FIX_LINES} more fixes of the same kinds", file=out)
    valid = len(report.valid)
    print(
        f"{report.path}: {report.records} records ({valid} valid), {report.images} images, "
        f"{report.turns} turns",
        file=out,
    )
    print(
        f"errors: {len(report.errors)}" + (f" ({_by_kind(report.errors_by_kind)})" if report.errors else ""),
        file=out,
    )
    print(
        f"fixes: {len(report.fixes)}" + (f" ({_by_kind(report.fixes_by_kind)})" if report.fixes else ""),
        file=out,
    )
    if report.warnings:
        print(f"warnings: {len(report.warnings)} ({_by_kind(report.warnings_by_kind)})", file=out)
    if not report.images_checked:
        print("images: not checked (pass --image-folder)", file=out)
    print(report.length_note, file=out)


def write_fixed(report: ValidationReport, out: str | Path) -> int:
    """Write the valid records, fixes applied, to `out` (JSONL when it ends in .jsonl, else a JSON list)."""
    return write_records((record.data for record in report.valid), out)
