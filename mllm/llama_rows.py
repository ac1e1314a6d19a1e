"""Many independent prompts through the lean Llama loop of mllm.llama_step at once, for batched VQA.

The linear layers run on every prompt's positions stacked into one matrix (one GEMM per layer for the whole
batch, and no padding: this is where a batch pays off, as a GEMM over many rows is several times more efficient
than over one prompt's), while attention runs prompt by prompt on its own row of the static cache, with the
shapes the prompt alone would have. Each prompt therefore gets the arithmetic it gets alone, bit for bit where
the GEMM kernels compute a row independently of the others in the matrix: fbgemm's fp16 and oneDNN's bf16
kernels do (the default precisions; tests/test_core_rows.py), MKL's fp32 sgemm picks its kernel by the number
of rows, so at fp32 a row can differ in the last bits (tests/test_batch_generation.py holds batched answers to
those of batch 1 and of Assistant.chat at every precision). Decode steps stack one row per unfinished prompt;
finished prompts drop out of the GEMMs. The cache starts with the room the caller asks for and doubles when a
row runs past it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional as F
from transformers import PreTrainedModel

from mllm.llama_step import LlamaStepper, lean_supported


class LlamaRows(LlamaStepper):
    """`rows` sequences on one static cache (a row each): `prefill_rows` computes their prompts, `step_rows` one
    more token for some of them."""

    def __init__(self, llm: PreTrainedModel, max_length: int, rows: int, capacity: int | None = None) -> None:
        super().__init__(llm, max_length, rows, capacity)
        self.lengths = [0] * rows

    def prefill_rows(self, inputs_embeds: torch.Tensor, lengths: Sequence[int]) -> torch.Tensor:
        """Logits [rows, vocab] after each prompt; `inputs_embeds` [sum(lengths), D] holds the prompts' embeddings
        one after another, prompt i going into cache row i from position 0."""
        if len(lengths) != len(self.lengths) or sum(lengths) != inputs_embeds.shape[0]:
            raise ValueError(
                f"{len(lengths)} prompt lengths for {len(self.lengths)} rows and {inputs_embeds.shape[0]} positions"
            )
        self._check_room(max(lengths))
        heads, kv_heads, head_dim, half = self.heads, self.kv_heads, self.head_dim, self.half
        gqa = heads != kv_heads
        norm = self.norm
        total = inputs_embeds.shape[0]
        starts = [sum(lengths[:i]) for i in range(len(lengths))]
        positions = torch.cat([torch.arange(n, device=inputs_embeds.device) for n in lengths])
        cos, sin = self.cos[positions][:, None], self.signed_sin[positions][:, None]  # [total, 1, head_dim]
        hidden = inputs_embeds
        for layer in self.layers:
            q, k, v = layer.qkv(norm(hidden, *layer.input_norm))
            q, k = q.view(total, heads, head_dim), k.view(total, kv_heads, head_dim)
            q = q * cos + q.roll(half, -1) * sin
            k = k * cos + k.roll(half, -1) * sin
            v = v.view(total, kv_heads, head_dim)
            outs = []
            for row, (start, count) in enumerate(zip(starts, lengths)):
                layer.keys[row, :, :count] = k[start : start + count].transpose(0, 1)
                layer.values[row, :, :count] = v[start : start + count].transpose(0, 1)
                out = F.scaled_dot_product_attention(
                    q[start : start + count].transpose(0, 1)[None],
                    layer.keys[row : row + 1, :, :count],
                    layer.values[row : row + 1, :, :count],
                    is_causal=count > 1,
                    scale=self.scaling,
                    enable_gqa=gqa,
                )
                outs.append(out[0].transpose(0, 1).reshape(count, heads * head_dim))
            hidden = hidden + layer.o(torch.cat(outs))
            hidden = hidden + layer.mlp(norm(hidden, *layer.post_norm))
        self.lengths = list(lengths)
        last = torch.tensor([start + count - 1 for start, count in zip(starts, lengths)])
        return self.head(norm(hidden[last], *self.final_norm))

    def step_rows(self, tokens: torch.Tensor, rows: Sequence[int]) -> torch.Tensor:
        """Logits [len(rows), vocab] of the token after `tokens` ([len(rows)] ids), which go in at the next
        position of their cache `rows`."""
        positions = [self.lengths[row] for row in rows]
        self._check_room(max(positions) + 1)
        heads, kv_heads, head_dim, half = self.heads, self.kv_heads, self.head_dim, self.half
        gqa = heads != kv_heads
        norm = self.norm
        count = len(rows)
        index = torch.tensor(positions)
        row_index = torch.tensor(list(rows))
        cos, sin = self.cos[index][:, None], self.signed_sin[index][:, None]  # [count, 1, head_dim]
        hidden = F.embedding(tokens, self.embedding)  # [count, D]
        for layer in self.layers:
            q, k, v = layer.qkv(norm(hidden, *layer.input_norm))
            q, k = q.view(count, heads, head_dim), k.view(count, kv_heads, head_dim)
            q = q * cos + q.roll(half, -1) * sin
            layer.keys[row_index, :, index] = k * cos + k.roll(half, -1) * sin
            layer.values[row_index, :, index] = v.view(count, kv_heads, head_dim).to(layer.values.dtype)
            outs = [
                F.scaled_dot_product_attention(
                    q[i].view(1, heads, 1, head_dim),
                    layer.keys[row : row + 1, :, : position + 1],
                    layer.values[row : row + 1, :, : position + 1],
                    scale=self.scaling,
                    enable_gqa=gqa,
                )
                for i, (row, position) in enumerate(zip(rows, positions))
            ]
            hidden = hidden + layer.o(torch.cat(outs).reshape(count, heads * head_dim))
            hidden = hidden + layer.mlp(norm(hidden, *layer.post_norm))
        for row in rows:
            self.lengths[row] += 1
        return self.head(norm(hidden, *self.final_norm))


def rows_for(
    llm: torch.nn.Module, max_length: int, rows: int, capacity: int | None = None
) -> LlamaRows | None:
    """A LlamaRows when `lean_supported(llm)`; None otherwise (the caller keeps transformers' generate)."""
    return LlamaRows(llm, max_length, rows, capacity) if lean_supported(llm) else None
