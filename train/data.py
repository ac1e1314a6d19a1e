"""Training data: LLaVA records validated (data_tools' validator) and encoded once up front, samples that are
too long or cannot be encoded skipped and counted with a warning, and a collator that pads a micro-batch and
loads its images (an unreadable image drops that sample from its batch, counted, never crashing the run)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mllm.errors import MllmError
from mllm.processor import IGNORE_INDEX, MultimodalProcessor, SampleError, SampleTooLong
from mllm.vision import VisionTower

log = logging.getLogger(__name__)
MAX_WARNINGS = 10  # individual warnings per kind before only counting


@dataclass
class Example:
    """One encoded training sample."""

    record_id: str
    input_ids: list[int]
    labels: list[int]
    images: list[Path]

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class SkipCounter:
    """Samples left out, by reason; the first few of each kind are logged as warnings."""

    counts: Counter[str] = field(default_factory=Counter)

    def add(self, kind: str, message: str) -> None:
        self.counts[kind] += 1
        if self.counts[kind] <= MAX_WARNINGS:
            log.warning("skipping sample (%s): %s", kind, message)
        elif self.counts[kind] == MAX_WARNINGS + 1:
            log.warning("more samples skipped for %s; only counting from now on", kind)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def read_records(
    path: str | Path,
    image_folder: str | Path | None,
    validate: bool,
    max_invalid_fraction: float,
    max_records: int | None = None,
) -> list[dict[str, Any]]:
    """The valid records of a LLaVA file (fixes applied). With `validate`, every record and image file is
    checked first; invalid records are reported and left out, and too many of them stop the run."""
    from data_tools.schema import load_records
    from data_tools.validate import validate_file

    if not Path(path).is_file():
        raise MllmError(f"{path}: training data not found (data.train)")
    if not validate:
        records = [record.data for record in load_records(path)]
        return records[:max_records] if max_records else records
    report = validate_file(path, image_folder)
    for line in report.errors[:MAX_WARNINGS]:
        log.warning("invalid record left out: %s", line)
    invalid = report.records - len(report.valid)
    if invalid:
        log.warning(
            "%s: %d of %d records are invalid and left out (run `mllm data validate %s` to list them)",
            path,
            invalid,
            report.records,
            path,
        )
    if report.records and invalid / report.records > max_invalid_fraction:
        raise MllmError(
            f"{path}: {invalid} of {report.records} records are invalid, more than "
            f"data.max_invalid_fraction={max_invalid_fraction}; first: {report.errors[0]}"
        )
    records = [record.data for record in report.valid]
    return records[:max_records] if max_records else records


def image_paths(record: dict[str, Any], image_folder: str | Path | None) -> list[Path]:
    """The record's image files, resolved against `image_folder`."""
    images = record.get("image")
    names = [] if images is None else [images] if isinstance(images, str) else list(images)
    base = Path(image_folder) if image_folder is not None else Path(".")
    return [base / name for name in names]


def encode_records(
    records: Sequence[dict[str, Any]],
    processor: MultimodalProcessor,
    image_folder: str | Path | None,
    skipped: SkipCounter,
) -> list[Example]:
    """Encode every record; one that is too long or fails to encode is skipped and counted."""
    examples = []
    for record in records:
        try:
            encoded = processor.encode_llava(record)
        except SampleTooLong as exc:
            skipped.add("too_long", str(exc))
            continue
        except SampleError as exc:
            skipped.add("encode", str(exc))
            continue
        if encoded.labels is None or all(label == IGNORE_INDEX for label in encoded.labels):
            skipped.add("no_labels", f"record {record.get('id')}: no supervised tokens")
            continue
        examples.append(
            Example(
                str(record.get("id", "?")),
                encoded.input_ids,
                encoded.labels,
                image_paths(record, image_folder),
            )
        )
    return examples


def load_examples(
    path: str | Path,
    image_folder: str | Path | None,
    processor: MultimodalProcessor,
    skipped: SkipCounter,
    validate: bool = True,
    max_invalid_fraction: float = 0.05,
    max_records: int | None = None,
) -> list[Example]:
    """Validated, encoded examples of one LLaVA file."""
    records = read_records(path, image_folder, validate, max_invalid_fraction, max_records)
    examples = encode_records(records, processor, image_folder, skipped)
    if not examples:
        raise MllmError(
            f"{path}: no usable training samples ({skipped.total} skipped: {dict(skipped.counts)})"
        )
    return examples


class Collator:
    """Right-pads a list of examples into a batch and preprocesses their images."""

    def __init__(self, pad_token_id: int, vision: VisionTower, skipped: SkipCounter) -> None:
        self.pad_token_id = pad_token_id
        self.vision = vision
        self.skipped = skipped

    def pixels(self, example: Example) -> torch.Tensor | None:
        """The example's images as pixels, or None (counted) when one cannot be read."""
        if not example.images:
            return torch.empty(0, 3, self.vision.image_size, self.vision.image_size)
        try:
            return self.vision.preprocess(example.images)
        except MllmError as exc:
            self.skipped.add("image", f"record {example.record_id}: {exc}")
            return None

    def __call__(self, examples: Sequence[Example]) -> dict[str, Any]:
        kept: list[Example] = []
        pixels: list[torch.Tensor] = []
        for example in examples:
            values = self.pixels(example)
            if values is not None:
                kept.append(example)
                pixels.append(values)
        width = max((len(e) for e in kept), default=0)
        input_ids = torch.full((len(kept), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(kept), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(kept), width), dtype=torch.long)
        for row, example in enumerate(kept):
            n = len(example)
            input_ids[row, :n] = torch.tensor(example.input_ids)
            labels[row, :n] = torch.tensor(example.labels)
            attention_mask[row, :n] = 1
        pixel_values = torch.cat(pixels) if pixels else None
        if pixel_values is not None and pixel_values.shape[0] == 0:
            pixel_values = None
        return {
            "input_ids": input_ids,
            "labels": labels,
            "attention_mask": attention_mask,
            "pixel_values": pixel_values,
            "size": len(kept),
        }
