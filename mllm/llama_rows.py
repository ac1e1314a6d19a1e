"""Many independent prompts through the lean Llama loop of mllm.llama_step at once, for batched VQA.

The linear layers run on every prompt's positions stacked into one matrix (one GEMM per layer for the whole batch,
and no padding: this is where a batch pays off, as a GEMM over many rows is several times more efficient than over
one prompt's), while attention runs on each prompt's own row of the static cache with the shapes the prompt alone
would have, one SDPA call per row (torch's CPU flash kernel, run on more than one thread, can round an entry of a
batched call differently from the same entry alone: seen on an AMD EPYC with AVX-512, not on the Intel AMX host, so
equal-shaped neighbours no longer share a call). A decode step writes all its rows' keys and values into the cache
by one indexed copy per layer. Each prompt therefore gets the arithmetic it gets alone, bit for bit where the GEMM
kernels compute a row independently of the others in the matrix: fbgemm's fp16 kernels do on CPUs with AVX-512
(tests/test_core_rows.py; its AVX2 kernels do not: mllm.fp16_linear.rows_exact); MKL's fp32 sgemm picks its kernel
by the number of rows, and oneDNN's bf16 kernels split a wide layer's reduction across threads for some matrix
heights (on the 2-core AMX host, scanning heights 1-1100 of each of SmolLM2's layer shapes, comparing a row with
that row alone: only the 1536-wide down projection, at a few heights between 211 and 247 rows that change with the
data, where four VQA prompts stack), so at fp32 and bf16 a row can differ in its last bits, which can flip a
near-tie between two answers (1 of 256 shapes questions in one bf16 benchmark run; tests/test_batch_generation.py
holds batched answers to those of batch 1 and of Assistant.chat at every precision on the tiny model). Decode steps
stack one row per unfinished prompt; finished prompts drop out of the GEMMs. The cache starts with the room the
caller asks for and doubles when a row runs past it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional as F
from transformers import PreTrainedModel

from mllm.llama_step import LlamaStepper, joined, lean_supported
from mllm.prefix_cache import Layer


class LlamaRows(LlamaStepper):
    """`rows` sequences on one static cache (a row each): `prefill_rows` computes their prompts, `step_rows` one
    more token for some of them."""

    def __init__(self, llm: PreTrainedModel, max_length: int, rows: int, capacity: int | None = None) -> None:
        super().__init__(llm, max_length, rows, capacity)
        self.lengths = [0] * rows

    def take_prefix_rows(self, rows: Sequence[int], layers: Sequence[Layer]) -> None:
        """Copy one prompt prefix's keys and values (per layer [1, kv_heads, T, head_dim]) into each cache row of
        `rows` (one copy per layer for all of them): their next position computed is T."""
        length = self._copy_prefix(rows, layers)
        for row in rows:
            self.lengths[row] = length

    def prefill_rows(
        self, inputs_embeds: torch.Tensor, counts: Sequence[int], positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits [rows, vocab] after each row's prompt; `inputs_embeds` [sum(counts), D] holds the rows' new
        prompt positions one row after another, row i's `counts[i]` going in after the prefix already in it, at
        rotary `positions` [sum(counts)] when given (else at their cache slots)."""
        if len(counts) != len(self.lengths) or sum(counts) != inputs_embeds.shape[0]:
            raise ValueError(
                f"{len(counts)} prompt lengths for {len(self.lengths)} rows and {inputs_embeds.shape[0]} positions"
            )
        logits = self._prefill(inputs_embeds, self.lengths, counts, positions)
        self.lengths = [first + count for first, count in zip(self.lengths, counts)]
        return logits

    def step_rows(self, tokens: torch.Tensor, rows: Sequence[int]) -> torch.Tensor:
        """Logits [len(rows), vocab] of the token after `tokens` ([len(rows)] ids), which go in at the next
        position of their cache `rows`."""
        positions = [self.lengths[row] for row in rows]
        self._check_room(max(positions) + 1)
        heads, kv_heads, head_dim, half = self.heads, self.kv_heads, self.head_dim, self.half
        gqa = heads != kv_heads
        norm = self.norm
        count = len(rows)
        device = self.keys.device
        index = torch.tensor(positions, device=device)
        row_index = torch.tensor(list(rows), device=device)
        rotary = index
        if any(self.shifts):
            rotary_positions = [p - self.shifts[row] for p, row in zip(positions, rows)]
            self._cover(max(rotary_positions))
            rotary = torch.tensor(rotary_positions, device=device)
        cos, sin = self.cos[rotary][:, None], self.signed_sin[rotary][:, None]  # [count, 1, head_dim]
        hidden = F.embedding(tokens.to(device), self.embedding)  # [count, D]
        for layer in self.layers:
            q, k, v = layer.qkv(norm(hidden, *layer.input_norm))
            q, k = q.view(count, heads, head_dim), k.view(count, kv_heads, head_dim)
            q = q * cos + q.roll(half, -1) * sin
            layer.keys[row_index, :, index] = k * cos + k.roll(half, -1) * sin
            layer.values[row_index, :, index] = v.view(count, kv_heads, head_dim).to(layer.values.dtype)
            outs = [  # one SDPA call per row, as in the prefill
                F.scaled_dot_product_attention(
                    q[i : i + 1].view(1, heads, 1, head_dim),
                    layer.keys[row : row + 1, :, : position + 1],
                    layer.values[row : row + 1, :, : position + 1],
                    scale=self.scaling,
                    enable_gqa=gqa,
                )
                for i, (row, position) in enumerate(zip(rows, positions))
            ]
            hidden = hidden + layer.o(joined(outs).reshape(count, heads * head_dim))
            hidden = hidden + layer.mlp(norm(hidden, *layer.post_norm))
        for row in rows:
            self.lengths[row] += 1
        return self.head(norm(hidden, *self.final_norm))


def rows_for(
    llm: torch.nn.Module, max_length: int, rows: int, capacity: int | None = None
) -> LlamaRows | None:
    """A LlamaRows when `lean_supported(llm)`; None otherwise (the caller keeps transformers' generate)."""
    return LlamaRows(llm, max_length, rows, capacity) if lean_supported(llm) else None
