"""Batched generation for many single-turn (images, question) prompts, for VQA runs and evaluation during
training.

Prompts are encoded exactly as `Assistant.chat` encodes a one-message conversation and generated together, so
that at temperature 0 the answers equal those of batch size 1 (but for a near-tie where a row is only within
float rounding of the prompt alone): on the fast path of a Llama-architecture LLM by
mllm.decoding.decode_rows (no padding; each prompt gets the arithmetic it gets alone, bit for bit at fp16 on CPUs
with AVX-512 and within float rounding elsewhere (mllm.llama_rows), starting from the keys and
values of the chat template's opening that every prompt shares, computed once per assistant), otherwise by
transformers' generate on the prompts left-padded to the longest of their batch (attention mask 0 on the
padding).

    from mllm.batch import answer_batch
    answers = answer_batch(assistant, [(["cat.png"], "What animal is this?"), ([], "2 + 2 = ?")], batch_size=8)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from mllm.assistant import Assistant
from mllm.decoding import decode_rows, header_layers
from mllm.errors import MllmError
from mllm.generation import sampling_kwargs
from mllm.images import ImageInput
from mllm.prefix_cache import Layer, common_length

Item = tuple[Sequence[ImageInput], str]


@dataclass
class Prompt:
    """One encoded prompt: token ids (image placeholders expanded) and its images' pixels (or None)."""

    input_ids: list[int]
    pixel_values: torch.Tensor | None


def encode_item(assistant: Assistant, images: Sequence[ImageInput], question: str) -> Prompt:
    """Encode one question about `images` as a single user turn (raises MllmError for a bad image or prompt)."""
    if not isinstance(question, str) or not question.strip():
        raise MllmError("the question is empty")
    input_ids, pixel_values = assistant.prepare([{"role": "user", "content": question}], list(images))
    if input_ids.shape[1] >= assistant.context_length:
        raise MllmError(
            f"the prompt is {input_ids.shape[1]} tokens, leaving no room in the context of {assistant.context_length}"
        )
    return Prompt(input_ids[0].tolist(), pixel_values)


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids [B, T], attention_mask [B, T]) with every sequence right-aligned (padding on the left)."""
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            input_ids[row, width - len(seq) :] = torch.tensor(list(seq), dtype=torch.long)
            attention_mask[row, width - len(seq) :] = 1
    return input_ids, attention_mask


def prompt_header(assistant: Assistant) -> tuple[list[int], list[Layer]] | None:
    """The token ids every one-message prompt of `assistant` starts with (its chat template's system prompt and
    user-turn opening: what two prompts differing only in their text share) and their keys and values, computed
    once per assistant; None without a lean loop."""
    if assistant.prompt_header is None:
        first = assistant.prepare([{"role": "user", "content": "a"}])[0][0].tolist()
        second = assistant.prepare([{"role": "user", "content": "b"}])[0][0].tolist()
        ids = first[: common_length(first, second)]
        layers = header_layers(assistant.model, ids)
        assistant.prompt_header = (ids, layers) if layers is not None else ([], [])
    ids, layers = assistant.prompt_header
    return (ids, layers) if ids else None


def generate_prompts(
    assistant: Assistant,
    prompts: Sequence[Prompt],
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
) -> list[str]:
    """Generate for `prompts` as one batch (see the module docstring); returns each reply, stripped of
    surrounding space. Each prompt gets at most `max_new_tokens`, and no more than its context leaves."""
    if not prompts:
        return []
    if max_new_tokens < 1:
        raise MllmError("max_new_tokens must be at least 1")
    tokenizer = assistant.tokenizer
    if assistant.fast:
        limits = [min(max_new_tokens, assistant.context_length - len(p.input_ids)) for p in prompts]
        replies = decode_rows(
            assistant.model,
            [(torch.tensor([p.input_ids]), p.pixel_values) for p in prompts],
            limits,
            temperature,
            top_p,
            header=prompt_header(assistant),
        )
        if replies is not None:
            return [text.strip() for text in tokenizer.batch_decode(replies, skip_special_tokens=True)]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    input_ids, attention_mask = left_pad([p.input_ids for p in prompts], pad_id)
    room = assistant.context_length - input_ids.shape[1]
    if room <= 0:
        raise MllmError(
            f"the longest prompt is {input_ids.shape[1]} tokens, over the context of "
            f"{assistant.context_length}"
        )
    pixels = [p.pixel_values for p in prompts if p.pixel_values is not None and p.pixel_values.shape[0]]
    pixel_values = torch.cat(pixels) if pixels else None  # row order = order of the placeholders
    output = assistant.model.generate(
        input_ids,
        attention_mask=attention_mask,
        pixel_values=pixel_values,
        max_new_tokens=min(max_new_tokens, room),
        pad_token_id=pad_id,
        **sampling_kwargs(temperature, top_p),
    )
    return [text.strip() for text in tokenizer.batch_decode(output, skip_special_tokens=True)]


def answer_batch(
    assistant: Assistant,
    items: Sequence[Item],
    max_new_tokens: int = 64,
    batch_size: int = 16,
    temperature: float = 0.0,
    top_p: float = 1.0,
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """Answers to `items` ((images, question) pairs), in order, generated `batch_size` at a time.

    A bad image or prompt raises MllmError naming the item's index. `progress(n)` is called after each batch
    with the number of items it finished."""
    if batch_size < 1:
        raise MllmError("batch_size must be at least 1")
    answers: list[str] = []
    for start in range(0, len(items), batch_size):
        prompts = []
        for index in range(start, min(start + batch_size, len(items))):
            images, question = items[index]
            try:
                prompts.append(encode_item(assistant, images, question))
            except MllmError as exc:
                raise MllmError(f"item {index}: {exc}") from None
        answers.extend(generate_prompts(assistant, prompts, max_new_tokens, temperature, top_p))
        if progress is not None:
            progress(len(prompts))
    return answers
