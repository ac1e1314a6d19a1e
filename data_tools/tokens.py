"""Length of each record: whitespace words without a model, or tokens with one (`--model`), counted the
way training sees them (chat template applied, each `<image>` expanded to the model's image tokens).

The model path is the only place data_tools touches the tokenizer; it imports `mllm` lazily so that the
command line stays fast without `--model`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from data_tools.llava import Record

WORDS = "whitespace words"


@dataclass(frozen=True)
class Lengths:
    """Per-record lengths (None where a record could not be encoded), what they count, the model's context
    length when a model was used, and why records failed to encode (by index)."""

    values: list[int | None]
    unit: str  # WORDS or "tokens"
    source: str  # how they were counted, for messages
    context: int | None = None
    failures: dict[int, str] = field(default_factory=dict)

    @property
    def known(self) -> list[int]:
        """The lengths of the records that could be measured."""
        return [v for v in self.values if v is not None]


def word_count(record: Record) -> int:
    """Whitespace-separated words over all turns (an `<image>` marker counts as one word)."""
    return sum(len(turn.value.split()) for turn in record.turns)


def whitespace_lengths(records: Sequence[Record]) -> Lengths:
    """Lengths in whitespace words: a rough proxy for tokens when no model is given."""
    return Lengths([word_count(r) for r in records], WORDS, "whitespace words (no --model)")


def token_lengths(records: Sequence[Record], model_spec: str) -> Lengths:
    """Token count of each record as the model `model_spec` (`default`, a checkpoint folder or a model YAML)
    encodes it for training, and that model's context length. A record the processor refuses (for example
    a token crossing the edge of a reply) gets None and its reason in `failures`."""
    from data_tools.model_tokens import load_token_counter
    from mllm.processor import SampleError

    counter = load_token_counter(model_spec)
    values: list[int | None] = []
    failures: dict[int, str] = {}
    for index, record in enumerate(records):
        try:
            values.append(counter.count(record))
        except SampleError as exc:
            values.append(None)
            failures[index] = str(exc)
    return Lengths(values, "tokens", f"tokens of {model_spec}", counter.context, failures)


def measure_lengths(records: Sequence[Record], model_spec: str | None) -> Lengths:
    """Token lengths with a model, whitespace words without."""
    return whitespace_lengths(records) if model_spec is None else token_lengths(records, model_spec)
