"""Token counts of LLaVA records as a model encodes them for training (`--model`): the model's own
`mllm.processor.MultimodalProcessor` (chat template, `<image>` expanded to its image tokens, system prompt),
and the model's context length.

This module is the one seam between data_tools and the core's tokenization; it imports torch and
transformers, so it is only imported when `--model` is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from data_tools.llava import Record


@dataclass
class TokenCounter:
    """Counts tokens of records with one model's processor; `context` is the model's context length."""

    processor: Any  # mllm.processor.MultimodalProcessor without a length limit, so long records get counted
    context: int | None

    def count(self, record: Record) -> int:
        """Tokens of `record` (raises mllm.processor.SampleError when it cannot be encoded exactly)."""
        return len(self.processor.encode_llava(record.data))


def load_token_counter(model_spec: str) -> TokenCounter:
    """The processor of model `model_spec` (`default`, a checkpoint folder or a model YAML).

    Builds the model through `mllm.assistant.load_model` (the one place that knows how image tokens and the
    context length follow from a config), then keeps only its processor settings.
    """
    from mllm.assistant import load_model
    from mllm.processor import MultimodalProcessor

    model = load_model(model_spec)
    source = model.processor
    unlimited = MultimodalProcessor(
        source.tokenizer,
        source.image_token,
        source.num_image_tokens,
        system_prompt=source.system_prompt,
        max_length=None,
    )
    return TokenCounter(unlimited, source.max_length)
