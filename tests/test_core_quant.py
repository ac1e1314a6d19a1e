"""bitsandbytes 4-bit (NF4) and 8-bit loading of the tiny LLM on CPU, with LoRA on top (QLoRA)."""

from __future__ import annotations

import pytest
import torch

from mllm.llm import load_llm
from mllm.model import MultimodalModel


@pytest.fixture
def tiny_llm_folder(tiny_config, tmp_path):
    """The tiny random LLM saved as a normal folder, so bitsandbytes can quantize it while loading.
    Widths are 64+ because bitsandbytes' CPU 4-bit inference kernels need in_features >= its blocksize (64)."""
    tiny_config.llm.init_config.update(hidden_size=64, intermediate_size=128)
    model = load_llm(tiny_config.llm)
    model.save_pretrained(tmp_path / "llm")
    return tmp_path / "llm"


@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_loading_on_cpu(tiny_config, tiny_llm_folder, bits):
    import bitsandbytes as bnb

    tiny_config.llm.source = str(tiny_llm_folder)
    tiny_config.llm.load_in_4bit = bits == 4
    tiny_config.llm.load_in_8bit = bits == 8
    tiny_config.lora.enabled = True
    model = MultimodalModel.build(tiny_config)
    layer_type = bnb.nn.Linear4bit if bits == 4 else bnb.nn.Linear8bitLt
    assert any(isinstance(m, layer_type) for m in model.llm.modules())
    prompt = model.processor.encode_prompt([{"role": "user", "content": "<image>hi"}])
    ids = torch.tensor([prompt.input_ids])
    pixels = torch.randn(1, 3, 32, 32)
    out = model.generate(ids, pixel_values=pixels, max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 4)
    # QLoRA: the loss backpropagates into LoRA and the projector through the quantized base
    record = {
        "id": "q",
        "image": "a.png",
        "conversations": [{"from": "human", "value": "<image>hi"}, {"from": "gpt", "value": "hello"}],
    }
    encoded = model.processor.encode_llava(record)
    loss = model(
        torch.tensor([encoded.input_ids]), pixel_values=pixels, labels=torch.tensor([encoded.labels])
    ).loss
    loss.backward()
    assert all(p.grad is not None for p in model.projector.parameters())
