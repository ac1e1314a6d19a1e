"""Linear layers in bf16 on oneDNN's prepacked CPU kernels, for the `bf16` inference precision (mllm.quantize).

Each weight is rounded to bf16 once and reordered into oneDNN's blocked layout for this CPU (the op PyTorch's
own CPU compiler emits for bf16 linear layers, `mkldnn::_linear_pointwise`, on a weight from
`mkldnn::_reorder_linear_weight`). A call rounds its input to bf16, accumulates in fp32 inside the kernel and
returns the result in the caller's dtype. On CPUs with AMX tiles the kernel runs on them: on the 2-core Intel
Xeon of our benchmarks a layer of SmolLM2's shapes (576 -> 1536) over 1424 rows (16 prompts) takes 1.2 ms
against 6.9 ms for fbgemm's fp16 GEMM and 6.4 ms at fp32; over 86 rows (one prompt) 0.12 ms against 0.46 ms;
over one row (a decode step) it reads the same 2 bytes per weight as fp16 and takes the same time. Rounding
inputs and outputs to bf16 (8 significant bits) costs more accuracy than fp16 weights alone: the shipped
assistant's accuracy at each precision is measured in the release evaluation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def bf16_kernels_available() -> bool:
    """Whether this torch build has oneDNN (mkldnn) with the prepacked linear ops and bf16 support on this CPU
    (the ops are the ones torch's CPU compiler uses; a build without them leaves `bf16` unavailable)."""
    ops = torch.ops.mkldnn
    return (
        torch.backends.mkldnn.is_available()
        and all(
            hasattr(ops, name)
            for name in ("_linear_pointwise", "_reorder_linear_weight", "_is_mkldnn_bf16_supported")
        )
        and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


def _cpu_has(feature: str) -> bool:
    """torch's CPU feature probe `torch.cpu._is_<feature>_supported` (False where this torch has none)."""
    probe = getattr(torch.cpu, f"_is_{feature}_supported", None)
    return probe is not None and bool(probe())


def amx_available() -> bool:
    """Whether this CPU has AMX tiles with bf16 (where the bf16 kernels beat fp16 weights several times over)."""
    return bf16_kernels_available() and _cpu_has("amx_tile")


def native_bf16_available() -> bool:
    """Whether this CPU multiplies bf16 in hardware: AMX tiles, or AVX-512 BF16 (AMD Zen 4, Intel Cooper Lake
    and later). With AVX-512 BF16 alone the bf16 kernels run prompts and batches about 1.8x faster than fbgemm's
    fp16 GEMM (576 -> 1536 over 86 rows: 0.46 ms against 0.83 on a 2-core AMD EPYC) but a single decode row
    slower (up to 1.5x), so they pay off for batches, not for chat."""
    return bf16_kernels_available() and (_cpu_has("amx_tile") or _cpu_has("avx512_bf16"))


class PackedBf16Linear(nn.Module):
    """An inference-only stand-in for an `nn.Linear`: bf16 weight in oneDNN's layout, input rounded to bf16,
    output in the input's dtype. No gradients, not saved in a state dict."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        with torch.no_grad():
            weight = linear.weight.detach().to(torch.bfloat16)
            self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, 1)
            self.bias = None if linear.bias is None else linear.bias.detach().to(torch.bfloat16).clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.mkldnn._linear_pointwise(x.to(torch.bfloat16), self.packed, self.bias, "none", [], "")
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
        )


def bf16_output(layer: PackedBf16Linear) -> Callable[[torch.Tensor], torch.Tensor]:
    """The layer as one op call that leaves its output in bf16 (for the lean loop: adding it to, or multiplying
    it with, an fp32 tensor promotes it exactly, without a conversion op of its own)."""
    op, packed, bias = torch.ops.mkldnn._linear_pointwise, layer.packed, layer.bias
    return lambda x: op(x.to(torch.bfloat16), packed, bias, "none", [], "")


def shared_input(*layers: PackedBf16Linear) -> Callable[[torch.Tensor], tuple[torch.Tensor, ...]]:
    """The layers' outputs (bf16, as bf16_output) on one input, which is rounded to bf16 once for all of them."""
    op = torch.ops.mkldnn._linear_pointwise
    weights = [(layer.packed, layer.bias) for layer in layers]

    def outputs(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        xb = x.to(torch.bfloat16)
        return tuple(op(xb, packed, bias, "none", [], "") for packed, bias in weights)

    return outputs


def fused_silu_mlp(
    gate: PackedBf16Linear, up: PackedBf16Linear, down: PackedBf16Linear
) -> Callable[[torch.Tensor], torch.Tensor]:
    """`down(silu(gate(x)) * up(x))` in three oneDNN calls, the activation fused into the gate GEMM and the
    product into the up GEMM (their intermediates stay in bf16 inside the kernels); output in bf16, as
    bf16_output."""
    op = torch.ops.mkldnn._linear_pointwise

    def mlp(x: torch.Tensor) -> torch.Tensor:
        xb = x.to(torch.bfloat16)
        activated = op(xb, gate.packed, gate.bias, "swish", [], "")  # oneDNN's swish with alpha 1 is SiLU
        hidden = op.binary(xb, activated, up.packed, up.bias, "mul")
        return op(hidden, down.packed, down.bias, "none", [], "")

    return mlp
