"""A lean one-token decode step for Llama-architecture LLMs (SmolLM2 is one): a static KV cache and a
straight loop over the layers' weights, without transformers' per-call machinery (mask building, growing the
cache by concatenation, output objects) and without nn.Module calls: every matmul is one direct op call
(fbgemm's fp16 GEMM on the packed weights of the `fp16` precision, else `F.linear`). At fp16 on a CPU, a token's
weights take about 14 ms to read for SmolLM2-135M, and every op call costs microseconds: on the 2-core
benchmark machine this loop decodes a token in 19-21 ms, the same loop through the layers' modules took
24-27 ms, and transformers' forward on a DynamicCache takes about 28 ms.

The prompt is still prefilled by the model's own forward (images merged into the embeddings); its KV cache is
then copied into the static one. Each step does the same arithmetic as transformers' LlamaDecoderLayer
(RMSNorm, rotary tables computed once by the model's own rotary embedding for all positions, SDPA), so greedy
output is the same token for token (tested). Architectures are picked by `model_type` from a registry;
others keep the generic loop in mllm.decoding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.ao.nn.quantized import dynamic as quantized_dynamic
from torch.nn import functional as F
from transformers import DynamicCache, LlamaForCausalLM, PreTrainedModel

from mllm.registry import Registry

STEPPERS: Registry[type[LlamaStepper]] = Registry("fast decode step")
Linear = Callable[[torch.Tensor], torch.Tensor]


def direct_linear(module: nn.Module) -> Linear:
    """`module`'s forward as one op call: the fp16 packed GEMM of torch's dynamic fp16 Linear, `F.linear` of a
    plain nn.Linear (the same op their forwards call); any other module is called as it is."""
    if isinstance(module, quantized_dynamic.Linear) and module._packed_params.dtype == torch.float16:
        packed = module._packed_params._packed_params
        fp16_gemm = torch.ops.quantized.linear_dynamic_fp16
        return lambda x: fp16_gemm(x, packed)  # fp32 in, fp32 out (the module's .to(x.dtype) is a no-op)
    if type(module) is nn.Linear:
        weight, bias = module.weight, module.bias
        return lambda x: F.linear(x, weight, bias)
    return module


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """LlamaRMSNorm.forward, op for op."""
    dtype = x.dtype
    x = x.to(torch.float32)
    variance = x.pow(2).mean(-1, keepdim=True)
    return weight * (x * torch.rsqrt(variance + eps)).to(dtype)


def rms_norm_fp32(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """rms_norm of fp32 hidden states, without its two conversions (no-ops at fp32, each still an op call)."""
    variance = x.pow(2).mean(-1, keepdim=True)
    return weight * (x * torch.rsqrt(variance + eps))


@dataclass(frozen=True)
class _Layer:
    """One decoder layer's weights and ops, bound once."""

    input_norm: tuple[torch.Tensor, float]
    q: Linear
    k: Linear
    v: Linear
    o: Linear
    post_norm: tuple[torch.Tensor, float]
    gate: Linear
    up: Linear
    down: Linear
    act: Callable[[torch.Tensor], torch.Tensor]
    keys: torch.Tensor  # [1, kv_heads, max_length, head_dim], a view of the stepper's static cache
    values: torch.Tensor

    @classmethod
    def bind(cls, layer: nn.Module, keys: torch.Tensor, values: torch.Tensor) -> _Layer:
        attention, mlp = layer.self_attn, layer.mlp
        return cls(
            (layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon),
            direct_linear(attention.q_proj),
            direct_linear(attention.k_proj),
            direct_linear(attention.v_proj),
            direct_linear(attention.o_proj),
            (layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon),
            direct_linear(mlp.gate_proj),
            direct_linear(mlp.up_proj),
            direct_linear(mlp.down_proj),
            mlp.act_fn,
            keys,
            values,
        )


class LlamaStepper:
    """Decodes one token at a time for one sequence after `start` has taken the prefill's cache."""

    def __init__(self, llm: PreTrainedModel, max_length: int) -> None:
        config = llm.config
        layers = list(llm.model.layers)
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.scaling = layers[0].self_attn.scaling
        self.max_length = max_length
        embedding = llm.get_input_embeddings().weight
        device, dtype = embedding.device, embedding.dtype
        probe = torch.zeros(1, 1, self.head_dim, device=device, dtype=dtype)
        positions = torch.arange(max_length, device=device)[None]
        cos, sin = llm.model.rotary_emb(probe, positions)  # [1, max_length, head_dim], as the model computes
        half = self.head_dim // 2
        # rotate_half(x) * sin == x[..., swap] * signed_sin exactly: the halves swapped, the sign on the table
        self.swap = torch.cat((torch.arange(half, self.head_dim), torch.arange(half))).to(device)
        self.cos, self.signed_sin = cos[0], torch.cat((-sin[0, :, :half], sin[0, :, half:]), dim=-1)
        shape = (len(layers), 1, self.kv_heads, max_length, self.head_dim)
        self.keys = torch.empty(shape, device=device, dtype=dtype)  # only positions < length are ever read
        self.values = torch.empty(shape, device=device, dtype=dtype)
        self.layers = [_Layer.bind(layer, self.keys[i], self.values[i]) for i, layer in enumerate(layers)]
        self.embedding = embedding
        self.final_norm = (llm.model.norm.weight, llm.model.norm.variance_epsilon)
        self.head = direct_linear(llm.lm_head)
        self.norm = rms_norm_fp32 if dtype == torch.float32 else rms_norm
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

    def step(self, token: torch.Tensor) -> torch.Tensor:
        """Logits [1, vocab] of the token after `token` ([1, 1] id), which goes in at the next position."""
        position = self.length
        if position >= self.max_length:
            raise ValueError(f"the static cache holds {self.max_length} tokens")
        cos, sin, swap = self.cos[position], self.signed_sin[position], self.swap
        heads, kv_heads, head_dim = self.heads, self.kv_heads, self.head_dim
        gqa = heads != kv_heads
        end = position + 1
        norm = self.norm
        # [1, D]: a single position, so [1, heads, 1, head_dim] and [kv_heads, head_dim] are views of the outputs
        hidden = F.embedding(token[0], self.embedding)
        for layer in self.layers:
            normed = norm(hidden, *layer.input_norm)
            q = layer.q(normed).view(1, heads, 1, head_dim)
            k = layer.k(normed).view(kv_heads, head_dim)
            q = q * cos + q.index_select(-1, swap) * sin
            layer.keys[0, :, position] = k * cos + k.index_select(-1, swap) * sin
            layer.values[0, :, position] = layer.v(normed).view(kv_heads, head_dim)
            out = F.scaled_dot_product_attention(
                q, layer.keys[:, :, :end], layer.values[:, :, :end], scale=self.scaling, enable_gqa=gqa
            )
            hidden = hidden + layer.o(out.reshape(1, heads * head_dim))
            normed = norm(hidden, *layer.post_norm)
            hidden = hidden + layer.down(layer.act(layer.gate(normed)) * layer.up(normed))
        self.length = end
        return self.head(norm(hidden, *self.final_norm))


STEPPERS.add("llama", LlamaStepper)


def stepper_for(llm: nn.Module, max_length: int) -> LlamaStepper | None:
    """A lean stepper when the LLM is a plain causal LM (not wrapped in LoRA adapters) of a registered
    architecture; None otherwise (the caller keeps the generic loop)."""
    if not isinstance(llm, LlamaForCausalLM) or llm.config.model_type not in STEPPERS:
        return None
    return STEPPERS.get(llm.config.model_type)(llm, max_length)
