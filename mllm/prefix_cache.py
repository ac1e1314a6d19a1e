"""Reuse of prompt prefixes across requests: the KV cache of recent prompts is kept, and a new prompt that starts
the same way (the system prompt of every chat, all earlier turns of a multi-turn chat) prefills only what is
new. On a CPU, prefill is most of the time to first token.

A prompt is keyed token by token: text tokens by their id, image tokens by a digest of the image's pixels and
the patch index, so the same words with another picture never match past the image. Entries are evicted
oldest first once the cached tokens pass `max_tokens`. Thread-safe; cached tensors are never written to
(a DynamicCache grows by concatenation, which makes new tensors; the lean prefill of mllm.llama_step stores
views of the positions of its static cache that it never writes again).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence

import torch
from transformers import DynamicCache

Key = tuple[int, ...]
Layer = tuple[torch.Tensor, torch.Tensor]  # one layer's keys and values [1, kv_heads, T, head_dim]


def prompt_key(
    input_ids: torch.Tensor, pixel_values: torch.Tensor | None, image_token_id: int, tokens_per_image: int
) -> Key:
    """Per position of input_ids [1, T]: the token id, or for an image token a number above any token id made
    from the image's pixel digest and the patch index."""
    ids = input_ids[0].tolist()
    digests: list[int] = []
    if pixel_values is not None:
        for image in pixel_values:
            data = image.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
            digests.append(int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big"))
    key = []
    seen = 0
    for token in ids:
        if token == image_token_id and digests:
            image, patch = divmod(seen, tokens_per_image)
            key.append(2**40 + (digests[min(image, len(digests) - 1)] << 16) + patch)
            seen += 1
        else:
            key.append(token)
    return tuple(key)


def cache_layers(cache: DynamicCache) -> list[Layer]:
    """A DynamicCache's keys and values, per layer."""
    return [(layer.keys, layer.values) for layer in cache.layers]


def common_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading items `a` and `b` share."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class PrefixCache:
    """An LRU of prompt KV caches (per layer: keys, values [1, kv_heads, T, head_dim])."""

    def __init__(self, max_tokens: int = 2048, min_reuse: int = 8) -> None:
        self.max_tokens = max_tokens
        self.min_reuse = min_reuse
        self.entries: OrderedDict[Key, list[Layer]] = OrderedDict()
        self.lock = threading.Lock()
        self.hits = 0
        self.reused_tokens = 0

    def lookup_layers(self, key: Key) -> tuple[list[Layer] | None, int]:
        """The keys and values (per layer [1, kv_heads, n, head_dim]; views, never to be written) of the longest
        stored prefix of `key` (at most len(key) - 1 tokens, so the last prompt token is always computed) and
        its length n; (None, 0) when no prefix of `min_reuse` tokens is stored."""
        with self.lock:
            best, length = None, 0
            for stored in self.entries:
                common = min(common_length(stored, key), len(key) - 1)
                if common > length:
                    best, length = stored, common
            if best is None or length < self.min_reuse:
                return None, 0
            self.entries.move_to_end(best)
            layers = self.entries[best]
            self.hits += 1
            self.reused_tokens += length
        return [(keys[:, :, :length], values[:, :, :length]) for keys, values in layers], length

    def lookup(self, key: Key, config: object) -> tuple[DynamicCache | None, int]:
        """As lookup_layers, the prefix as a DynamicCache of the LLM with `config`."""
        layers, length = self.lookup_layers(key)
        if layers is None:
            return None, 0
        cache = DynamicCache(config=config)
        for index, (keys, values) in enumerate(layers):
            cache.update(keys, values, index)
        return cache, length

    def store(self, key: Key, layers: Sequence[Layer]) -> None:
        """Keep the prompt's keys and values (per layer, at least its first len(key) positions; never written on
        afterwards), evicting the oldest entries over budget.

        An entry that is a prefix of another serves no lookup the longer one does not serve as well (a prompt
        shares at least as many leading tokens with the longer), so only the longer is kept: each turn of a
        multi-turn chat replaces the entry of the turn before instead of keeping every turn's keys and values."""
        if len(key) > self.max_tokens:
            return
        with self.lock:
            longer = next((stored for stored in self.entries if stored[: len(key)] == key), None)
            if longer is not None:
                self.entries.move_to_end(longer)
                return
            for stored in [stored for stored in self.entries if key[: len(stored)] == stored]:
                del self.entries[stored]
            self.entries[key] = [
                (keys[:, :, : len(key)], values[:, :, : len(key)]) for keys, values in layers
            ]
            while sum(len(k) for k in self.entries) > self.max_tokens:
                self.entries.popitem(last=False)
