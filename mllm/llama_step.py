"""A lean one-token decode step for Llama-architecture LLMs (SmolLM2 is one): a static KV cache and a
straight loop over the layers' own modules (norms, projections, MLP), without transformers' per-call
machinery (mask building, growing the cache by concatenation, output objects). On a CPU that machinery costs
about a third of each decoded token once the weights are read at fp16.

The prompt is still prefilled by the model's own forward (images merged into the embeddings); its KV cache is
then copied into the static one. Each step calls the same modules with the same operations as transformers'
LlamaDecoderLayer (rotary tables computed once by the model's own rotary embedding for all positions), so
greedy output is the same token for token (tested). Architectures are picked by `model_type` from a registry;
others keep the generic loop in mllm.decoding.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from transformers import DynamicCache, LlamaForCausalLM, PreTrainedModel

from mllm.registry import Registry

STEPPERS: Registry[type[LlamaStepper]] = Registry("fast decode step")


class LlamaStepper:
    """Decodes one token at a time for one sequence after `start` has taken the prefill's cache."""

    def __init__(self, llm: PreTrainedModel, max_length: int) -> None:
        config = llm.config
        self.llm = llm
        self.layers = list(llm.model.layers)
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.scaling = self.layers[0].self_attn.scaling
        self.max_length = max_length
        device = llm.get_input_embeddings().weight.device
        dtype = llm.get_input_embeddings().weight.dtype
        probe = torch.zeros(1, 1, self.head_dim, device=device, dtype=dtype)
        positions = torch.arange(max_length, device=device)[None]
        cos, sin = llm.model.rotary_emb(probe, positions)  # [1, max_length, head_dim], as the model computes
        self.cos, self.sin = cos[0], sin[0]
        shape = (len(self.layers), 1, self.kv_heads, max_length, self.head_dim)
        self.keys = torch.empty(shape, device=device, dtype=dtype)  # only positions < length are ever read
        self.values = torch.empty(shape, device=device, dtype=dtype)
        self.length = 0

    def start(self, cache: DynamicCache) -> None:
        """Take over the prefill's cache (every layer holds [1, kv_heads, T, head_dim])."""
        for index, layer in enumerate(cache.layers):
            length = layer.keys.shape[2]
            if length > self.max_length:
                raise ValueError(
                    f"prompt of {length} tokens is longer than the static cache ({self.max_length})"
                )
            self.keys[index, :, :, :length] = layer.keys
            self.values[index, :, :, :length] = layer.values
        self.length = length

    @staticmethod
    def _rotate_half(x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return torch.cat((-x[..., half:], x[..., :half]), dim=-1)

    def step(self, token: torch.Tensor) -> torch.Tensor:
        """Logits [1, vocab] of the token after `token` ([1, 1] id), which goes in at the next position."""
        position = self.length
        if position >= self.max_length:
            raise ValueError(f"the static cache holds {self.max_length} tokens")
        cos, sin = self.cos[position], self.sin[position]
        hidden = self.llm.model.embed_tokens(token)  # [1, 1, D]
        end = position + 1
        for index, layer in enumerate(self.layers):
            attention = layer.self_attn
            normed = layer.input_layernorm(hidden)
            q = attention.q_proj(normed).view(1, 1, self.heads, self.head_dim).transpose(1, 2)
            k = attention.k_proj(normed).view(1, 1, self.kv_heads, self.head_dim).transpose(1, 2)
            v = attention.v_proj(normed).view(1, 1, self.kv_heads, self.head_dim).transpose(1, 2)
            q = q * cos + self._rotate_half(q) * sin
            k = k * cos + self._rotate_half(k) * sin
            self.keys[index, :, :, position] = k[:, :, 0]
            self.values[index, :, :, position] = v[:, :, 0]
            out = F.scaled_dot_product_attention(
                q,
                self.keys[index, :, :, :end],
                self.values[index, :, :, :end],
                scale=self.scaling,
                enable_gqa=self.heads != self.kv_heads,
            )
            hidden = hidden + attention.o_proj(out.transpose(1, 2).reshape(1, 1, -1))
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        self.length = end
        return self.llm.lm_head(self.llm.model.norm(hidden))[:, -1]


STEPPERS.add("llama", LlamaStepper)


def stepper_for(llm: nn.Module, max_length: int) -> LlamaStepper | None:
    """A lean stepper when the LLM is a plain causal LM (not wrapped in LoRA adapters) of a registered
    architecture; None otherwise (the caller keeps the generic loop)."""
    if not isinstance(llm, LlamaForCausalLM) or llm.config.model_type not in STEPPERS:
        return None
    return STEPPERS.get(llm.config.model_type)(llm, max_length)
