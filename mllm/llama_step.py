"""A lean one-token decode step for Llama-architecture LLMs (SmolLM2 is one): a static KV cache and a
straight loop over the layers' weights, without transformers' per-call machinery (mask building, growing the
cache by concatenation, output objects) and without nn.Module calls: every matmul is one direct op call
(fbgemm's fp16 GEMM on the packed weights of the `fp16` precision, else `F.linear`). At fp16 on a CPU, a token's
weights take about 14 ms to read for SmolLM2-135M, and every op call costs microseconds: on the 2-core
benchmark machine this loop decodes a token in 19-21 ms, the same loop through the layers' modules took
24-27 ms, and transformers' forward on a DynamicCache takes about 28 ms.

The prompt (images already merged into its embeddings) is prefilled by the same loop over all its new positions
at once, straight into the static cache, after the cached prefix a new chat shares (mllm.prefix_cache) is
copied in: on the 2-core benchmark machine the first token comes about 9% sooner than through transformers'
forward on a DynamicCache (96.7 vs 105.9 ms, median of 31 alternating runs; no mask building, no per-layer
cache concatenation, no module calls). Each step does the same arithmetic as transformers'
LlamaDecoderLayer (RMSNorm, rotary tables computed once by the model's own rotary embedding for all positions,
SDPA), so prefill logits are bit for bit those of the model's forward and greedy output is the same token for
token (tested). Architectures are picked by `model_type` from a registry; others keep the generic loop in
mllm.decoding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.ao.nn.quantized import dynamic as quantized_dynamic
from torch.nn import functional as F
from transformers import LlamaForCausalLM, PreTrainedModel

from mllm.bf16_linear import PackedBf16Linear, bf16_output, fused_silu_mlp, shared_input
from mllm.fp16_linear import SlicedFp16Linear, direct_fp16
from mllm.prefix_cache import Layer
from mllm.registry import Registry

STEPPERS: Registry[type[LlamaStepper]] = Registry("fast decode step")
Linear = Callable[[torch.Tensor], torch.Tensor]


def direct_linear(module: nn.Module) -> Linear:
    """`module`'s forward as one op call: the fp16 packed GEMM of torch's dynamic fp16 Linear (one per slice of a
    sliced one), `F.linear` of a plain nn.Linear (the same op their forwards call), oneDNN's op of a bf16 layer,
    its output left in bf16 (the loop's arithmetic with fp32 tensors promotes it exactly); any other module is
    called as it is."""
    if isinstance(module, PackedBf16Linear):
        return bf16_output(module)
    if isinstance(module, SlicedFp16Linear):
        return direct_fp16(module)
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
    """rms_norm of fp32 hidden states in one op call (torch's RMSNorm: the same bits as LlamaRMSNorm at fp32,
    held by the bit-for-bit tests of the lean loop against the model's forward; 2-3% of a decode step)."""
    return F.rms_norm(x, weight.shape, weight, eps)


@dataclass(frozen=True)
class _Layer:
    """One decoder layer's weights and ops, bound once."""

    input_norm: tuple[torch.Tensor, float]
    qkv: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    o: Linear
    post_norm: tuple[torch.Tensor, float]
    mlp: Linear
    keys: torch.Tensor  # [rows, kv_heads, max_length, head_dim], a view of the stepper's static cache
    values: torch.Tensor

    @classmethod
    def bind(cls, layer: nn.Module, hidden_act: str, keys: torch.Tensor, values: torch.Tensor) -> _Layer:
        """`hidden_act`: the config's activation name (`silu` fuses into the bf16 MLP kernels)."""
        attention, mlp = layer.self_attn, layer.mlp
        projections = (attention.q_proj, attention.k_proj, attention.v_proj)
        feed_forward = (mlp.gate_proj, mlp.up_proj, mlp.down_proj)
        if all(isinstance(m, PackedBf16Linear) for m in projections):
            qkv = shared_input(*projections)
        else:
            q, k, v = map(direct_linear, projections)
            qkv = lambda x: (q(x), k(x), v(x))  # noqa: E731
        if all(isinstance(m, PackedBf16Linear) for m in feed_forward) and hidden_act == "silu":
            mlp_fn = fused_silu_mlp(*feed_forward)
        else:
            gate, up, down = map(direct_linear, feed_forward)
            act = mlp.act_fn
            mlp_fn = lambda x: down(act(gate(x)) * up(x))  # noqa: E731
        return cls(
            (layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon),
            qkv,
            direct_linear(attention.o_proj),
            (layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon),
            mlp_fn,
            keys,
            values,
        )


class LlamaStepper:
    """One sequence on a static KV cache: `take_prefix` copies in cached prompt positions, `prefill` computes
    the rest of the prompt, then `step` decodes one token at a time."""

    def __init__(
        self, llm: PreTrainedModel, max_length: int, rows: int = 1, capacity: int | None = None
    ) -> None:
        """`max_length` positions at most; the cache is allocated for `capacity` of them (all by default) and
        grows, doubling, as positions past it are computed."""
        config = llm.config
        layers = list(llm.model.layers)
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.scaling = layers[0].self_attn.scaling
        self.max_length = max_length
        embedding = llm.get_input_embeddings().weight
        device, dtype = embedding.device, embedding.dtype
        self.embedding = embedding
        self.half = self.head_dim // 2
        self.rotary_emb = llm.model.rotary_emb
        self._rotary_tables(max_length)
        self.capacity = min(max_length, capacity or max_length)
        shape = (len(layers), rows, self.kv_heads, self.capacity, self.head_dim)
        self.keys = torch.empty(shape, device=device, dtype=dtype)  # only positions < length are ever read
        self.values = torch.empty(shape, device=device, dtype=dtype)
        self.layers = [
            _Layer.bind(layer, config.hidden_act, self.keys[i], self.values[i])
            for i, layer in enumerate(layers)
        ]
        self.final_norm = (llm.model.norm.weight, llm.model.norm.variance_epsilon)
        self.head = direct_linear(llm.lm_head)
        self.norm = rms_norm_fp32 if dtype == torch.float32 else rms_norm
        self.length = 0
        # per cache row, its next cache slot minus its next rotary position: 0 unless the prompt's positions were
        # given (image tokens not one position apart, mllm.positions), after which decoding goes on from the last
        self.shifts = [0] * rows

    def _rotary_tables(self, length: int) -> None:
        """cos and signed sin [length, head_dim] of rotary positions 0..length-1, as the model computes them.
        rotate_half(x) * sin == x.roll(half, -1) * signed_sin exactly: the halves swapped (roll is several times
        faster than gathering them), the sign on the table."""
        device = self.embedding.device
        probe = torch.zeros(1, 1, self.head_dim, device=device, dtype=self.embedding.dtype)
        cos, sin = self.rotary_emb(probe, torch.arange(length, device=device)[None])
        half = self.half
        self.cos, self.signed_sin = cos[0], torch.cat((-sin[0, :, :half], sin[0, :, half:]), dim=-1)

    def _cover(self, position: int) -> None:
        """Extend the rotary tables to hold `position` (images set apart, mllm.positions, go past the slots)."""
        if position >= self.cos.shape[0]:
            self._rotary_tables(max(position + 1, 2 * self.cos.shape[0]))

    def take_prefix(self, layers: Sequence[Layer]) -> None:
        """Copy a prompt prefix's keys and values (per layer [1, kv_heads, T, head_dim]) into the static cache:
        the next position computed is T."""
        self.length = self._copy_prefix([0], layers)

    def _copy_prefix(self, rows: Sequence[int], layers: Sequence[Layer]) -> int:
        """Copy a prefix's keys and values (per layer [1, kv_heads, T, head_dim]) into each cache row of `rows`
        (one copy per layer for all of them); returns T."""
        length = layers[0][0].shape[2] if layers else 0
        self._check_room(length)
        index = torch.tensor(list(rows), device=self.keys.device)
        for layer, (keys, values) in zip(self.layers, layers):
            layer.keys[index, :, :length] = keys
            layer.values[index, :, :length] = values
        return length

    def prefix(self) -> list[Layer]:
        """The keys and values of the positions computed so far, per layer [1, kv_heads, T, head_dim]: views of
        the static cache, never written on again (the stepper only writes positions from T on, into this cache
        or, once it grows, into a new one). They keep the cache they view alive, which holds only a few positions
        more than T (decode_tokens allocates room for a short reply and lets it grow), so a prompt stored in
        mllm.prefix_cache costs no copy while its reply is decoded."""
        end = self.length
        return [(layer.keys[:1, :, :end], layer.values[:1, :, :end]) for layer in self.layers]

    def _check_room(self, length: int) -> None:
        if length > self.max_length:
            raise ValueError(f"prompt of {length} tokens is longer than the static cache ({self.max_length})")
        if length > self.capacity:
            self._grow(length)

    def _grow(self, length: int) -> None:
        """Reallocate the cache for at least `length` positions (double the capacity, at most max_length)."""
        capacity = min(self.max_length, max(length, 2 * self.capacity))
        old_keys, old_values = self.keys, self.values
        shape = (*old_keys.shape[:3], capacity, old_keys.shape[4])
        self.keys = old_keys.new_empty(shape)
        self.values = old_values.new_empty(shape)
        self.keys[:, :, :, : self.capacity] = old_keys
        self.values[:, :, :, : self.capacity] = old_values
        self.capacity = capacity
        self.layers = [
            replace(layer, keys=self.keys[i], values=self.values[i]) for i, layer in enumerate(self.layers)
        ]

    def prefill(self, inputs_embeds: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [1, vocab] after the prompt embeddings [1, T, D], which go in at the next T cache slots, at
        rotary `positions` [T] (by default the slots' own)."""
        count = inputs_embeds.shape[1]
        logits = self._prefill(inputs_embeds[0], [self.length], [count], positions)
        self.length += count
        return logits

    def _prefill(
        self,
        inputs_embeds: torch.Tensor,
        firsts: Sequence[int],
        counts: Sequence[int],
        rotary: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits [rows, vocab] after each row's new prompt positions: `inputs_embeds` [sum(counts), D] holds them
        one row after another, row i's `counts[i]` going in at positions `firsts[i]` onwards of cache row i (at
        rotary positions `rotary` [sum(counts)] when given, else at the slots' own). The
        linear layers run on all rows' positions stacked; attention runs one SDPA call per row, on the row's own
        cache with the shapes it has alone (not one call for equal-shaped neighbours: with more than one thread,
        torch's CPU flash kernel can round a batch entry differently from the same entry alone, seen on an AMD
        EPYC with AVX-512)."""
        ends = [first + count for first, count in zip(firsts, counts)]
        self._check_room(max(ends))
        heads, kv_heads, head_dim, half = self.heads, self.kv_heads, self.head_dim, self.half
        gqa = heads != kv_heads
        norm = self.norm
        total = inputs_embeds.shape[0]
        device = inputs_embeds.device
        starts = [sum(counts[:i]) for i in range(len(counts))]
        if rotary is None:
            positions = torch.cat(
                [torch.arange(first, end, device=device) for first, end in zip(firsts, ends)]
            )
            self.shifts = [0] * len(self.shifts)
        else:
            positions = rotary.to(device)
            lasts = positions[[start + count - 1 for start, count in zip(starts, counts)]].tolist()
            self.shifts = [end - last - 1 for end, last in zip(ends, lasts)]
            self._cover(int(positions.max()))
        cos, sin = self.cos[positions][:, None], self.signed_sin[positions][:, None]  # [total, 1, head_dim]
        # position first + i sees the cached prefix, the new positions before it and itself; from an empty cache
        # that is SDPA's is_causal, as transformers passes it (its kernel then differs in the last bits)
        masks = [
            None if first == 0 else torch.ones(count, end, dtype=torch.bool, device=device).tril(first)
            for first, count, end in zip(firsts, counts, ends)
        ]
        hidden = inputs_embeds
        for layer in self.layers:
            q, k, v = layer.qkv(norm(hidden, *layer.input_norm))
            q, k = q.view(total, heads, head_dim), k.view(total, kv_heads, head_dim)
            q = q * cos + q.roll(half, -1) * sin
            k = k * cos + k.roll(half, -1) * sin
            v = v.view(total, kv_heads, head_dim)
            # a copy per row (for a single prompt faster than one indexed copy of all positions)
            for row, (start, first, end) in enumerate(zip(starts, firsts, ends)):
                layer.keys[row, :, first:end] = k[start : start + end - first].transpose(0, 1)
                layer.values[row, :, first:end] = v[start : start + end - first].transpose(0, 1)
            outs = []
            for row, (start, count, end, mask) in enumerate(zip(starts, counts, ends, masks)):
                out = F.scaled_dot_product_attention(
                    q[start : start + count].view(1, count, heads, head_dim).transpose(1, 2),
                    layer.keys[row : row + 1, :, :end],
                    layer.values[row : row + 1, :, :end],
                    attn_mask=mask,
                    is_causal=mask is None and count > 1,
                    scale=self.scaling,
                    enable_gqa=gqa,
                )
                outs.append(out.transpose(1, 2).reshape(count, heads * head_dim))
            hidden = hidden + layer.o(joined(outs))
            hidden = hidden + layer.mlp(norm(hidden, *layer.post_norm))
        last = torch.tensor([start + count - 1 for start, count in zip(starts, counts)], device=device)
        return self.head(norm(hidden[last], *self.final_norm))

    def step(self, token: torch.Tensor) -> torch.Tensor:
        """Logits [1, vocab] of the token after `token` ([1, 1] id), which goes in at the next position."""
        position = self.length
        if position >= self.max_length:
            raise ValueError(f"the static cache holds {self.max_length} tokens")
        if position >= self.capacity:
            self._grow(position + 1)
        rotary = position - self.shifts[0]
        self._cover(rotary)
        cos, sin, half = self.cos[rotary], self.signed_sin[rotary], self.half
        heads, kv_heads, head_dim = self.heads, self.kv_heads, self.head_dim
        gqa = heads != kv_heads
        end = position + 1
        norm = self.norm
        # [1, D]: a single position, so [1, heads, 1, head_dim] and [kv_heads, head_dim] are views of the outputs
        hidden = F.embedding(token[0], self.embedding)
        for layer in self.layers:
            q, k, v = layer.qkv(norm(hidden, *layer.input_norm))
            q = q.view(1, heads, 1, head_dim)
            k = k.view(kv_heads, head_dim)
            q = q * cos + q.roll(half, -1) * sin
            layer.keys[0, :, position] = k * cos + k.roll(half, -1) * sin
            layer.values[0, :, position] = v.view(kv_heads, head_dim)
            out = F.scaled_dot_product_attention(
                q, layer.keys[:1, :, :end], layer.values[:1, :, :end], scale=self.scaling, enable_gqa=gqa
            )
            hidden = hidden + layer.o(out.reshape(1, heads * head_dim))
            hidden = hidden + layer.mlp(norm(hidden, *layer.post_norm))
        self.length = end
        return self.head(norm(hidden, *self.final_norm))


STEPPERS.add("llama", LlamaStepper)


def joined(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """`parts` concatenated along their first dimension (one part is returned as it is, not copied)."""
    return parts[0] if len(parts) == 1 else torch.cat(list(parts))


def lean_supported(llm: nn.Module) -> bool:
    """Whether the LLM is a plain causal LM (not wrapped in LoRA adapters) of a registered architecture."""
    return isinstance(llm, LlamaForCausalLM) and llm.config.model_type in STEPPERS


def stepper_for(llm: nn.Module, max_length: int, capacity: int | None = None) -> LlamaStepper | None:
    """A lean stepper when `lean_supported(llm)` (its cache allocated for `capacity` positions, all by default,
    growing as needed); None otherwise (the caller keeps the generic loop)."""
    if not lean_supported(llm):
        return None
    return STEPPERS.get(llm.config.model_type)(llm, max_length, capacity=capacity)
