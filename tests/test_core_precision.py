"""Inference precision (mllm.quantize): `auto` picks bf16 matmuls on a CPU with AMX, else fp16 weights, fp16 replies match fp32 on the
lively tiny model, int8 runs, and impossible requests fail with a clear message."""

from __future__ import annotations

import pytest
import torch
from serve_support import TINY_CONFIG, lively_assistant

import mllm
from mllm.bf16_linear import amx_available
from mllm.errors import MllmError
from mllm.quantize import apply_precision, quantized_supported

PROMPTS = ["Describe the picture.", "What is the capital of France?", "Count to five."]


def _linear_types(model: torch.nn.Module) -> set[str]:
    return {m._get_name() for name, m in model.llm.named_modules() if name.endswith(("q_proj", "lm_head"))}


def test_auto_is_reduced_precision_on_cpu_and_fp32_keeps_the_weights() -> None:
    assert quantized_supported(mllm.load(str(TINY_CONFIG), precision="fp32").model)
    auto = mllm.load(str(TINY_CONFIG))
    if amx_available():  # bf16 matmuls where AMX tiles make them pay (tests/test_core_bf16.py)
        assert auto.model.inference_precision == "bf16"
        assert _linear_types(auto.model) == {"PackedBf16Linear", "SlicedFp16Linear"}
    else:
        assert auto.model.inference_precision == "fp16"
        assert _linear_types(auto.model) == {"DynamicQuantizedLinear", "SlicedFp16Linear"}
    exact = mllm.load(str(TINY_CONFIG), precision="fp32")
    assert exact.model.inference_precision == "fp32" and _linear_types(exact.model) == {"Linear"}


@pytest.mark.parametrize(("features_in", "features_out", "bias"), [(576, 49152, False), (32, 20000, True)])
def test_a_sliced_fp16_head_computes_what_one_pack_computes(
    features_in: int, features_out: int, bias: bool
) -> None:
    """The LM head packed in slices (mllm.fp16_linear) gives torch's dynamic fp16 Linear's outputs bit for bit,
    for one row (a decode step) and many (a batch)."""
    from torch.ao.nn.quantized import dynamic as quantized_dynamic

    from mllm.fp16_linear import SlicedFp16Linear

    generator = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(features_in, features_out, bias=bias)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(features_out, features_in, generator=generator) * 0.05)
    whole = quantized_dynamic.Linear(features_in, features_out, bias_=bias, dtype=torch.float16)
    whole.set_weight_bias(linear.weight.detach(), None if linear.bias is None else linear.bias.detach())
    sliced = SlicedFp16Linear(linear)
    assert len(sliced.packs) == -(-features_out // 16384)
    for rows in (1, 7, 16):
        x = torch.randn(rows, features_in, generator=generator)
        assert torch.equal(sliced(x), whole(x))


def test_fp16_replies_equal_fp32_on_the_lively_model() -> None:
    exact, half = lively_assistant(precision="fp32"), lively_assistant(precision="fp16")
    for prompt in PROMPTS:
        messages = [{"role": "user", "content": prompt}]
        assert half.chat(messages, max_new_tokens=12) == exact.chat(messages, max_new_tokens=12)


def test_int8_runs_and_answers() -> None:
    assistant = lively_assistant(precision="int8")
    assert assistant.model.inference_precision == "int8"
    assert isinstance(assistant.chat([{"role": "user", "content": "Hi"}], max_new_tokens=4), str)


def test_bad_precision_requests_are_refused() -> None:
    with pytest.raises(MllmError, match="unknown precision 'int4'; valid: auto, fp32, fp16, bf16, int8"):
        mllm.load(str(TINY_CONFIG), precision="int4")
    unmerged = mllm.load(str(TINY_CONFIG), fast=False)
    unmerged.model.inference_precision = "fp32"
    unmerged.model.config.llm.load_in_4bit = True  # what a bitsandbytes model reports
    with pytest.raises(MllmError, match="precision fp16 needs an fp32 LLM on a CPU"):
        apply_precision(unmerged.model, "fp16")
    assert apply_precision(unmerged.model, "auto").inference_precision == "fp32"
