"""The `bf16` inference precision (mllm.bf16_linear on oneDNN's prepacked kernels): which layers it converts,
that its matmuls are fp32's within bf16 rounding, and that the lean loop's fused kernels stay within bf16
rounding of the model's own forward and give its greedy tokens. Skipped where torch has no oneDNN bf16 kernels
for this CPU."""

from __future__ import annotations

import pytest
import torch
from serve_support import TINY_CONFIG, forward_one, lively_assistant
from torch import nn
from torch.nn import functional as F

import mllm
from mllm.bf16_linear import (
    PackedBf16Linear,
    amx_available,
    bf16_kernels_available,
    fused_silu_mlp,
    native_bf16_available,
)
from mllm.errors import MllmError
from mllm.llama_step import stepper_for
from mllm.quantize import apply_precision, resolve_precision

pytestmark = pytest.mark.skipif(not bf16_kernels_available(), reason="no oneDNN bf16 kernels on this CPU")


def test_bf16_converts_the_decoder_layers_and_keeps_an_fp32_logit_head() -> None:
    assistant = mllm.load(str(TINY_CONFIG), precision="bf16")
    model = assistant.model
    assert model.inference_precision == "bf16"
    kinds = {name.rsplit(".", 1)[-1]: m._get_name() for name, m in model.llm.named_modules()}
    for name in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        assert kinds[name] == "PackedBf16Linear", name
    assert kinds["lm_head"] == "SlicedFp16Linear"  # fp16 weights, fp32 logits
    assert not any(type(m) is nn.Linear for m in model.llm.modules())
    # auto picks bf16 exactly where AMX tiles make it pay; for batches also where AVX-512 BF16 does
    fresh = mllm.load(str(TINY_CONFIG), precision="fp32").model
    assert resolve_precision(fresh, "auto") == ("bf16" if amx_available() else "fp16")
    assert resolve_precision(fresh, "auto", batches=True) == ("bf16" if native_bf16_available() else "fp16")
    batch_assistant = mllm.load(str(TINY_CONFIG), batches=True)
    assert batch_assistant.model.inference_precision == ("bf16" if native_bf16_available() else "fp16")


def test_bf16_needs_merged_lora() -> None:
    from mllm.config import load_model_config
    from mllm.model import MultimodalModel

    config = load_model_config(TINY_CONFIG)
    config.lora.enabled = True
    with pytest.raises(MllmError, match="precision bf16 needs the LoRA adapters merged first"):
        apply_precision(MultimodalModel.build(config), "bf16")


def test_bf16_linear_is_fp32_within_bf16_rounding() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(96, 160)
    layer = PackedBf16Linear(linear)
    x = torch.randn(300, 96)
    together = layer(x)
    assert together.dtype == torch.float32
    # bf16 rounding of inputs and weights: a few parts in a thousand of the fp32 result
    reference = F.linear(x, linear.weight, linear.bias)
    assert ((together - reference).abs().max() / reference.abs().max()) < 1e-2
    # a row alone and the same row in a taller matrix agree to bf16 rounding (not always bit for bit: for some
    # matrix heights oneDNN splits the reduction of a wide layer across threads, which rounds differently)
    torch.testing.assert_close(layer(x[40:126]), together[40:126], rtol=1e-2, atol=1e-2)


def test_fused_mlp_is_the_mlp_within_bf16_rounding() -> None:
    torch.manual_seed(1)
    gate, up, down = (
        nn.Linear(64, 128, bias=False),
        nn.Linear(64, 128, bias=False),
        nn.Linear(128, 64, bias=False),
    )
    x = torch.randn(20, 64)
    reference = down(F.silu(gate(x)) * up(x))
    fused = fused_silu_mlp(PackedBf16Linear(gate), PackedBf16Linear(up), PackedBf16Linear(down))(x)
    assert fused.dtype == torch.bfloat16  # left in bf16 for the lean loop, which promotes it exactly
    assert ((fused - reference).abs().max() / reference.abs().max()) < 2e-2


def test_lean_loop_follows_the_model_forward_at_bf16() -> None:
    """The lean prefill and steps (fused kernels) against the LLM's forward through the same bf16 layers: the
    logits within bf16 rounding, and the same greedy tokens."""
    from transformers import DynamicCache

    llm = lively_assistant(precision="bf16").model.llm
    ids = torch.tensor([[5, 17, 42, 99, 3, 64, 8, 21, 70]])
    with torch.inference_mode():
        embeds = llm.get_input_embeddings()(ids)
        cache = DynamicCache(config=llm.config)
        plain = llm(inputs_embeds=embeds, past_key_values=cache, use_cache=True).logits[:, -1]
        stepper = stepper_for(llm, ids.shape[1] + 6)
        assert stepper is not None
        lean = stepper.prefill(embeds)
        scale = plain.abs().max()
        for position in range(ids.shape[1], ids.shape[1] + 6):
            assert (lean - plain).abs().max() < 0.05 * scale, f"logits drift at position {position}"
            token = plain.argmax(-1, keepdim=True)
            assert torch.equal(lean.argmax(-1, keepdim=True), token), f"greedy token differs at {position}"
            lean = stepper.step(token)
            plain = forward_one(llm, token, cache, position)
