"""Prompt-prefix reuse on the fast path (mllm.prefix_cache): replies equal those computed from scratch, a
multi-turn chat reuses its earlier turns, another image never matches past the image, and the cache keeps to
its token budget."""

from __future__ import annotations

import torch
from PIL import Image
from serve_support import TINY_CONFIG, lively_assistant

from mllm.assistant import Assistant
from mllm.config import load_model_config
from mllm.decoding import decode_tokens
from mllm.llama_step import stepper_for
from mllm.model import MultimodalModel
from mllm.prefix_cache import PrefixCache, prompt_key

RED = Image.new("RGB", (40, 40), (220, 20, 20))
BLUE = Image.new("RGB", (40, 40), (20, 20, 220))


def _scratch(assistant, messages, images, max_new_tokens=8) -> list[int]:
    ids, pixels = assistant.prepare(messages, images)
    return list(decode_tokens(assistant.model, ids, pixels, max_new_tokens))


def _cached(assistant, messages, images, cache, max_new_tokens=8) -> list[int]:
    ids, pixels = assistant.prepare(messages, images)
    return list(decode_tokens(assistant.model, ids, pixels, max_new_tokens, prefix_cache=cache))


def test_reused_prefixes_give_the_replies_computed_from_scratch() -> None:
    assistant = lively_assistant(precision="fp32")
    cache = PrefixCache(min_reuse=4)
    first = [{"role": "user", "content": "<image>\nWhat is in the picture?"}]
    reply = assistant.tokenizer.decode(_cached(assistant, first, [RED], cache))
    assert cache.hits == 0
    turn2 = [*first, {"role": "assistant", "content": reply}, {"role": "user", "content": "And its colour?"}]
    assert _cached(assistant, turn2, [RED], cache) == _scratch(assistant, turn2, [RED])
    ids, _ = assistant.prepare(first, [RED])
    assert cache.hits == 1 and cache.reused_tokens >= ids.shape[1] - 1  # the whole first turn was reused
    for text in ("Count to three.", "Count to four."):
        messages = [{"role": "user", "content": text}]
        assert _cached(assistant, messages, [], cache) == _scratch(assistant, messages, [])


def test_another_image_is_not_matched_past_the_image() -> None:
    assistant = lively_assistant(precision="fp32")
    messages = [{"role": "user", "content": "What is in the picture?"}]
    ids, red = assistant.prepare(messages, [RED])
    _, blue = assistant.prepare(messages, [BLUE])
    image_token = assistant.model.image_token_id
    red_key = prompt_key(ids, red, image_token, assistant.model.num_image_tokens)
    blue_key = prompt_key(ids, blue, image_token, assistant.model.num_image_tokens)
    first_image = ids[0].tolist().index(image_token)
    assert red_key[:first_image] == blue_key[:first_image] and red_key[first_image] != blue_key[first_image]
    cache = PrefixCache(min_reuse=1)
    _cached(assistant, messages, [RED], cache)
    assert _cached(assistant, messages, [BLUE], cache) == _scratch(assistant, messages, [BLUE])
    assert cache.reused_tokens == first_image


def test_the_cache_keeps_to_its_token_budget() -> None:
    assistant = lively_assistant(precision="fp32")
    cache = PrefixCache(max_tokens=80, min_reuse=1)
    for n in range(6):
        _cached(assistant, [{"role": "user", "content": f"Question number {n}?"}], [], cache, 2)
    assert 0 < sum(len(k) for k in cache.entries) <= 80
    assert len(cache.entries) < 6


def test_a_prefix_of_a_stored_prompt_is_not_kept_twice() -> None:
    """Each turn of a multi-turn chat replaces the entry of the turn before (it serves every lookup the shorter
    one served), and storing a prefix of a kept prompt keeps only the longer; lookups find the same lengths."""
    assistant = lively_assistant(precision="fp32")
    cache = PrefixCache(min_reuse=4)
    first = [{"role": "user", "content": "<image>\nWhat is in the picture?"}]
    reply = assistant.tokenizer.decode(_cached(assistant, first, [RED], cache))
    (turn1,) = cache.entries
    turn2 = [*first, {"role": "assistant", "content": reply}, {"role": "user", "content": "And its colour?"}]
    assert _cached(assistant, turn2, [RED], cache) == _scratch(assistant, turn2, [RED])
    (kept,) = cache.entries
    assert len(kept) > len(turn1) and kept[: len(turn1)] == turn1
    layers, length = cache.lookup_layers((*turn1, -1))  # a prompt that leaves the first turn after its end
    assert length == len(turn1) and layers is not None and layers[0][0].shape[2] == len(turn1)
    cache.store(turn1, [(k[:, :, : len(turn1)], v[:, :, : len(turn1)]) for k, v in layers])
    assert list(cache.entries) == [kept]
    other = [{"role": "user", "content": "Count to three."}]
    _cached(assistant, other, [], cache)
    assert len(cache.entries) == 2


def test_the_assistant_reuses_the_system_prompt_across_chats() -> None:
    assistant = lively_assistant(precision="fp32")
    before = assistant.prefix_cache.hits
    for question in ("Hello there, how are you?", "Hello there, what is this?"):
        assistant.chat([{"role": "user", "content": question}], max_new_tokens=3)
    assert assistant.prefix_cache.hits == before + 1
    assert torch.is_grad_enabled()


def test_the_generic_path_reuses_prefixes_too() -> None:
    """An LLM the lean Llama stepper does not take (here: LoRA adapters left unmerged) prefills through its own
    forward on a DynamicCache, with the same prefix reuse."""
    config = load_model_config(TINY_CONFIG)
    config.lora.enabled = True
    assistant = Assistant(MultimodalModel.build(config), fast=False)
    assert stepper_for(assistant.model.llm, 8) is None
    cache = PrefixCache(min_reuse=1)
    first = [{"role": "user", "content": "<image>\nWhat is in the picture?"}]
    _cached(assistant, first, [RED], cache)
    second = [{"role": "user", "content": "<image>\nWhat colour is it?"}]
    assert _cached(assistant, second, [RED], cache) == _scratch(assistant, second, [RED])
    assert cache.hits == 1 and cache.reused_tokens > assistant.model.num_image_tokens
