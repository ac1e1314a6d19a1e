"""The fast decode path: prefill the merged embeddings once, then one step per token on the KV cache (the lean
static-cache prefill and step of mllm.llama_step for Llama-architecture LLMs, else the LLM's forward on a
DynamicCache), with no generate() machinery, no streamer thread and text streamed from the tokens as they come.

Greedy output is identical to transformers' generate on the same model (tested); sampling reuses transformers'
temperature and top-p warpers.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

import torch
from transformers import DynamicCache, LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

from mllm.generation import GenerationStats, cut_at_stop, held_back
from mllm.llama_rows import rows_for
from mllm.llama_step import LlamaStepper, stepper_for
from mllm.model import MultimodalModel
from mllm.prefix_cache import Key, Layer, PrefixCache, cache_layers, common_length, prompt_key

REPLY_ROOM = 64  # positions a reply's cache has room for at first, past its prompt (it doubles when full)


def _warpers(temperature: float, top_p: float) -> LogitsProcessorList:
    warpers = LogitsProcessorList()
    if temperature > 0:
        warpers.append(TemperatureLogitsWarper(temperature))
        if top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p))
    return warpers


def eos_token_ids(model: MultimodalModel) -> set[int]:
    """The ids that end a reply: the LLM's generation config's and the tokenizer's end of sequence."""
    eos = model.llm.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    eos_ids.add(model.tokenizer.eos_token_id)
    return eos_ids


@torch.inference_mode()
def decode_tokens(
    model: MultimodalModel,
    input_ids: torch.Tensor,
    pixel_values: torch.Tensor | None,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    cancel: threading.Event | None = None,
    generator: torch.Generator | None = None,
    min_new_tokens: int = 0,
    prefix_cache: PrefixCache | None = None,
) -> Iterator[int]:
    """Yield new token ids for one prompt [1, T] until an end-of-sequence token, `max_new_tokens` or `cancel`;
    end-of-sequence is suppressed for the first `min_new_tokens` (as generate's min_new_tokens). With a
    `prefix_cache`, the longest stored prefix of the prompt is not computed again, and the prompt is stored."""
    llm = model.llm
    eos_ids = eos_token_ids(model)
    warpers = _warpers(temperature, top_p)
    inputs_embeds = model.embed(input_ids, pixel_values)
    positions = model.position_ids(input_ids)
    length = inputs_embeds.shape[1]
    key = None
    if prefix_cache is not None:
        key = prompt_key(input_ids, pixel_values, model.image_token_id, model.num_image_tokens)
    # the cache starts with room for the prompt and a short reply and doubles as the reply grows: a request
    # for thousands of new tokens holds memory for what it generates, not for what it may generate
    stepper = stepper_for(llm, length + max_new_tokens, capacity=length + REPLY_ROOM)
    cache = None
    if stepper is not None:
        logits = _lean_prefill(stepper, inputs_embeds, positions, prefix_cache, key)
    else:
        logits, cache = _prefill(llm, inputs_embeds, positions, prefix_cache, key)
    # the generic loop's next rotary position (the last prompt position's + 1)
    position = length if positions is None else int(positions[0, -1]) + 1
    generated = input_ids.to(model.device)
    for step in range(max_new_tokens):
        logits = logits.float()
        if step < min_new_tokens:
            logits[:, sorted(eos_ids)] = -float("inf")
        if temperature > 0:
            scores = warpers(generated, logits)
            token = torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=generator)
        else:
            token = logits.argmax(dim=-1, keepdim=True)
        token_id = int(token)
        if token_id in eos_ids:
            return
        yield token_id
        if step + 1 == max_new_tokens or (cancel is not None and cancel.is_set()):
            return
        if temperature > 0 and warpers:
            generated = torch.cat([generated, token], dim=1)
        if stepper is not None:
            logits = stepper.step(token)
            continue
        out = llm(
            input_ids=token,
            past_key_values=cache,
            use_cache=True,
            position_ids=torch.tensor([[position]], device=model.device),
            logits_to_keep=1,
        )
        position += 1
        logits = out.logits[:, -1, :]


@torch.inference_mode()
def header_layers(model: MultimodalModel, header: Sequence[int]) -> list[Layer] | None:
    """The keys and values of `header` (token ids every prompt of a batch may start with: the chat template's
    system prompt and user-turn opening) computed on their own from an empty cache, for decode_rows; None
    without a lean loop or for an empty header."""
    stepper = stepper_for(model.llm, len(header)) if header else None
    if stepper is None:
        return None
    stepper.prefill(model.embed(torch.tensor([list(header)]), None))
    return stepper.prefix()


@torch.inference_mode()
def decode_rows(
    model: MultimodalModel,
    prompts: Sequence[tuple[torch.Tensor, torch.Tensor | None]],
    max_new_tokens: Sequence[int],
    temperature: float = 0.0,
    top_p: float = 1.0,
    header: tuple[Sequence[int], Sequence[Layer]] | None = None,
) -> list[list[int]] | None:
    """New token ids for each of several single prompts ((input_ids [1, T], pixel_values or None) each, at most
    `max_new_tokens[i]` for prompt i) generated together on mllm.llama_rows, each with the arithmetic it gets
    alone; None when the LLM has no lean loop (the caller falls back to transformers' generate).

    `header`: (ids, their keys and values from header_layers). A prompt that starts with some of those ids takes
    their keys and values and prefills only the rest: the split depends on the prompt alone, so a prompt gets
    the same arithmetic in any batch."""
    header_ids, header_kv = header if header is not None else ([], [])
    lengths = [int(ids.shape[1]) for ids, _ in prompts]
    reused = [min(common_length(ids[0].tolist(), header_ids), n - 1) for (ids, _), n in zip(prompts, lengths)]
    # the cache starts with room for the prompts and a short answer, and grows only for long ones: a batch's
    # rows times the whole context would hold hundreds of MB that short VQA answers never use
    most = max(n + m for n, m in zip(lengths, max_new_tokens))
    rows = rows_for(model.llm, most, len(prompts), capacity=max(lengths) + 16)
    if rows is None:
        return None
    for skip in sorted(set(reused) - {0}):
        rows.take_prefix_rows(
            [row for row, taken in enumerate(reused) if taken == skip],
            [(k[:, :, :skip], v[:, :, :skip]) for k, v in header_kv],
        )
    # prompt by prompt: the vision tower's kernels round a batch of images differently from one image (by
    # 1e-5), enough to flip a near-tie between two answers at bf16; its time is small next to the LLM's
    inputs_embeds = torch.cat(
        [model.embed(ids, pixel_values)[0, skip:] for (ids, pixel_values), skip in zip(prompts, reused)]
    )
    rotary = [model.position_ids(ids) for ids, _ in prompts]  # None each with sequential image positions
    positions = None
    if all(r is not None for r in rotary):
        positions = torch.cat([r[0, skip:] for r, skip in zip(rotary, reused) if r is not None])
    eos_ids = eos_token_ids(model)
    warpers = _warpers(temperature, top_p)
    replies: list[list[int]] = [[] for _ in prompts]
    active = list(range(len(prompts)))
    logits = rows.prefill_rows(inputs_embeds, [n - skip for n, skip in zip(lengths, reused)], positions)
    while active:
        logits = logits.float()
        if temperature > 0:
            tokens = torch.multinomial(torch.softmax(warpers(None, logits), dim=-1), 1)[:, 0]
        else:
            tokens = logits.argmax(dim=-1)
        still = []
        for row, token in zip(active, tokens.tolist()):
            if token in eos_ids:
                continue
            replies[row].append(token)
            if len(replies[row]) < max_new_tokens[row]:
                still.append(row)
        active = still
        if active:
            logits = rows.step_rows(torch.tensor([replies[row][-1] for row in active]), active)
    return replies


def _lean_prefill(
    stepper: LlamaStepper,
    inputs_embeds: torch.Tensor,
    positions: torch.Tensor | None,
    prefix_cache: PrefixCache | None,
    key: Key | None,
) -> torch.Tensor:
    """The prompt (at rotary `positions` [1, T], None for the plain count) into the stepper's static cache
    (after the longest cached prefix); last position's logits."""
    if prefix_cache is not None and key is not None:
        layers, _length = prefix_cache.lookup_layers(key)
        if layers is not None:
            stepper.take_prefix(layers)
    start = stepper.length
    logits = stepper.prefill(inputs_embeds[:, start:], None if positions is None else positions[0, start:])
    if prefix_cache is not None and key is not None:
        prefix_cache.store(key, stepper.prefix())
    return logits


def _prefill(
    llm: torch.nn.Module,
    inputs_embeds: torch.Tensor,
    positions: torch.Tensor | None,
    prefix_cache: PrefixCache | None,
    key: Key | None,
) -> tuple[torch.Tensor, DynamicCache]:
    """The prompt (at rotary `positions` [1, T], None for the plain count) through the LLM's own forward on a
    DynamicCache (after the longest cached prefix): the last position's logits and the cache."""
    cache, reused = None, 0
    if prefix_cache is not None and key is not None:
        cache, reused = prefix_cache.lookup(key, llm.config)
    if cache is None:
        cache = DynamicCache(config=llm.config)
    out = llm(
        inputs_embeds=inputs_embeds[:, reused:],
        past_key_values=cache,
        use_cache=True,
        position_ids=(
            torch.arange(reused, inputs_embeds.shape[1], device=inputs_embeds.device)[None]
            if positions is None
            else positions[:, reused:]
        ),
        logits_to_keep=1,
    )
    if prefix_cache is not None and key is not None:
        prefix_cache.store(key, cache_layers(cache))
    return out.logits[:, -1, :], cache


def decode_text(
    model: MultimodalModel,
    input_ids: torch.Tensor,
    pixel_values: torch.Tensor | None,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    stop: Sequence[str] = (),
    cancel: threading.Event | None = None,
    stats: GenerationStats | None = None,
    prefix_cache: PrefixCache | None = None,
) -> Iterator[str]:
    """Yield the reply text piece by piece; stop strings are cut (never emitted) and end generation. `stats`
    receives the token counts and the finish reason."""
    stats = stats if stats is not None else GenerationStats()
    stats.prompt_tokens = int(input_ids.shape[1])
    tokenizer = model.tokenizer
    tokens: list[int] = []
    emitted = 0
    for token in decode_tokens(
        model, input_ids, pixel_values, max_new_tokens, temperature, top_p, cancel, prefix_cache=prefix_cache
    ):
        tokens.append(token)
        stats.completion_tokens = len(tokens)
        stats.finish_reason = "length" if len(tokens) == max_new_tokens else "stop"
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            continue  # an incomplete multi-byte character: wait for the next token
        visible, stopped = cut_at_stop(text, stop)
        if stopped:
            if len(visible) > emitted:
                yield visible[emitted:]
            return
        safe = len(visible) - held_back(visible, stop)  # what could still start a stop string
        if safe > emitted:
            yield visible[emitted:safe]
            emitted = safe
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    if len(text) > emitted:
        yield text[emitted:]
