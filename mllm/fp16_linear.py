"""A wide linear layer (an LM head) with fp16 weights on fbgemm's fp16 GEMM, packed in slices of its output
features, for the `fp16` and `bf16` inference precisions (mllm.quantize).

torch's dynamic fp16 Linear packs its whole weight at once, and packing first makes an fp32 copy of the weight
(rounded to fp16's range): for SmolLM2's 49152 x 576 LM head that copy is 113 MB on top of the 96 MB pack,
while the fp32 embedding the head is tied to stays. Loading the shipped assistant peaked there. Packing a slice
at a time keeps the copy to one slice (`mllm serve` of the shipped assistant at fp16: loading peak 1,211 MB with
one pack, 1,147 MB in slices of 16384 rows). Each output feature is computed exactly as in one pack (fbgemm computes
an output column from its own weights whatever the columns beside it; tests/test_core_precision.py holds the
logits bit for bit to torch's dynamic fp16 Linear).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

SLICE_ROWS = 16384  # output features packed at once: a 576-wide slice's fp32 copy is 38 MB


class SlicedFp16Linear(nn.Module):
    """An inference-only stand-in for an `nn.Linear`: fp16 weights packed for fbgemm in slices of at most
    `slice_rows` output features, fp32 in and out. No gradients, not saved in a state dict."""

    def __init__(self, linear: nn.Linear, slice_rows: int = SLICE_ROWS) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight, bias = linear.weight.detach(), linear.bias
        self.packs = [
            torch.ops.quantized.linear_prepack_fp16(
                weight[start : start + slice_rows],
                None if bias is None else bias.detach()[start : start + slice_rows],
            )
            for start in range(0, self.out_features, slice_rows)
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return direct_fp16(self)(x)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, slices={len(self.packs)}"


def rows_exact() -> bool:
    """Whether fbgemm's fp16 GEMM gives a row the same bits in any matrix, so that batched prompts compute
    what each computes alone: its AVX-512 kernels do (tests/test_core_rows.py); its AVX2 kernels (an AMD EPYC
    Zen 3, say) round a row differently once the matrix has two rows or more (up to 1.2e-5 at SmolLM2's widths)."""
    return torch.backends.cpu.get_cpu_capability() == "AVX512"


def direct_fp16(layer: SlicedFp16Linear) -> Callable[[torch.Tensor], torch.Tensor]:
    """The layer as op calls: one fp16 GEMM per slice, the outputs joined (one slice is returned as it is)."""
    gemm, packs = torch.ops.quantized.linear_dynamic_fp16, layer.packs
    if len(packs) == 1:
        (pack,) = packs
        return lambda x: gemm(x, pack)
    return lambda x: torch.cat([gemm(x, pack) for pack in packs], dim=-1)
