"""The fast decode path (LoRA merged, mllm's token loop) gives the same greedy text as transformers' generate
on the unmerged model, streams the same text, honours stop strings, cancellation and sampling settings."""

from __future__ import annotations

import threading

import pytest
import torch
from PIL import Image
from serve_support import forward_one

from mllm.assistant import Assistant, merge_for_inference
from mllm.config import load_model_config
from mllm.model import MultimodalModel
from mllm.prefix_cache import cache_layers

MESSAGES = [{"role": "user", "content": "Describe the picture in detail."}]


def build(tiny_config_path) -> MultimodalModel:
    config = load_model_config(tiny_config_path)
    config.llm.init_config["initializer_range"] = 0.3
    config.lora.enabled = True
    model = MultimodalModel.build(config)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in model.llm.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.2)
    return model


@pytest.fixture(scope="module")
def pair(tiny_config_path):
    """(plain assistant on the unmerged LoRA model, fast assistant on an identical merged copy)."""
    fast = Assistant(merge_for_inference(build(tiny_config_path)), fast=True)
    return Assistant(build(tiny_config_path), fast=False), fast


@pytest.fixture
def image():
    return Image.new("RGB", (40, 40), (10, 200, 30))


def test_assistant_never_modifies_its_model(tiny_config_path):
    model = build(tiny_config_path)
    llm = model.llm
    Assistant(model, fast=True).chat(MESSAGES, max_new_tokens=3)
    assert model.llm is llm and any("lora_" in n for n, _ in model.llm.named_parameters())


def test_lora_is_merged_on_the_fast_path(pair):
    plain, fast = pair
    assert any("lora_" in n for n, _ in plain.model.llm.named_parameters())
    assert not any("lora_" in n for n, _ in fast.model.llm.named_parameters())


@pytest.mark.parametrize("with_image", [False, True])
def test_greedy_identical_to_generate(pair, image, with_image):
    plain, fast = pair
    images = [image] if with_image else None
    expected = plain.chat(MESSAGES, images=images, max_new_tokens=40)
    assert len(expected) > 10
    assert fast.chat(MESSAGES, images=images, max_new_tokens=40) == expected
    assert "".join(fast.stream(MESSAGES, images=images, max_new_tokens=40)) == expected


def test_a_reply_longer_than_its_first_cache_is_identical_to_generate(pair, image):
    """The lean cache starts with room for the prompt and REPLY_ROOM tokens and doubles twice in this reply."""
    from mllm.decoding import REPLY_ROOM, decode_tokens

    plain, fast = pair
    messages = [{"role": "user", "content": "<image>\nDescribe the picture in detail."}]
    count = 3 * REPLY_ROOM
    expected = plain.chat(messages, images=[image], max_new_tokens=count, min_new_tokens=count)
    ids, pixels = fast.prepare(messages, [image])
    tokens = list(decode_tokens(fast.model, ids, pixels, count, min_new_tokens=count))
    assert len(tokens) == count
    assert fast.tokenizer.decode(tokens, skip_special_tokens=True) == expected


def test_stop_strings_match(pair, image):
    plain, fast = pair
    full = plain.chat(MESSAGES, images=[image], max_new_tokens=40)
    stop = full[len(full) // 3 : len(full) // 3 + 4]
    assert (
        fast.chat(MESSAGES, images=[image], max_new_tokens=40, stop=[stop])
        == plain.chat(MESSAGES, images=[image], max_new_tokens=40, stop=[stop])
        == full[: full.find(stop)]
    )


def test_cancel_and_sampling(pair):
    _, fast = pair
    cancel = threading.Event()
    stream = fast.stream(MESSAGES, max_new_tokens=100, cancel=cancel)
    first = next(stream)
    cancel.set()
    assert len(first + "".join(stream)) < len(fast.chat(MESSAGES, max_new_tokens=100))
    torch.manual_seed(0)
    a = fast.chat(MESSAGES, max_new_tokens=20, temperature=1.0, top_p=0.9)
    torch.manual_seed(0)
    b = fast.chat(MESSAGES, max_new_tokens=20, temperature=1.0, top_p=0.9)
    assert a == b


def test_generate_kwargs_take_the_generate_path(pair):
    _, fast = pair
    out = fast.chat(MESSAGES, max_new_tokens=6, repetition_penalty=1.3)
    assert isinstance(out, str)


def test_stats_count_tokens_on_both_paths(pair):
    from mllm.generation import GenerationStats

    results = []
    for assistant in pair:
        stats = GenerationStats()
        text = "".join(assistant.stream(MESSAGES, max_new_tokens=7, stats=stats))
        results.append((text, stats))
    (plain_text, plain), (fast_text, fast) = results
    assert plain_text == fast_text
    assert fast.prompt_tokens == plain.prompt_tokens > 5
    assert fast.completion_tokens == plain.completion_tokens
    assert fast.finish_reason == plain.finish_reason
    if fast.completion_tokens == 7:
        assert fast.finish_reason == "length"


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_lean_step_computes_what_the_model_forward_computes(tiny_config_path, precision):
    """The lean step calls the weights' ops directly (fbgemm's fp16 GEMM at fp16): its logits are bit for bit
    those of the LLM's own forward on the same cache, token after token."""
    from transformers import DynamicCache

    from mllm.llama_step import stepper_for
    from mllm.quantize import apply_precision

    model = apply_precision(merge_for_inference(build(tiny_config_path)), precision)
    llm = model.llm
    ids = model.tokenizer("The shapes are", return_tensors="pt").input_ids
    with torch.inference_mode():
        cache = DynamicCache(config=llm.config)
        token = llm(input_ids=ids, past_key_values=cache, use_cache=True).logits[:, -1:].argmax(-1)
        stepper = stepper_for(llm, ids.shape[1] + 8)
        assert stepper is not None
        stepper.take_prefix(cache_layers(cache))  # a copy: the model's own forward goes on with `cache`
        for position in range(ids.shape[1], ids.shape[1] + 8):
            lean = stepper.step(token)
            plain = forward_one(llm, token, cache, position)
            assert torch.equal(lean, plain), f"logits differ at position {position} ({precision})"
            token = plain.argmax(-1, keepdim=True)
        with pytest.raises(ValueError, match="static cache holds"):
            stepper.step(token)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_lean_prefill_computes_what_the_model_forward_computes(tiny_config_path, precision):
    """The lean prefill (all new prompt positions at once, into the static cache) gives bit for bit the logits
    and the keys/values of the LLM's own forward, from an empty cache and after a prefix copied in."""
    from transformers import DynamicCache

    from mllm.llama_step import stepper_for
    from mllm.quantize import apply_precision

    model = apply_precision(merge_for_inference(build(tiny_config_path)), precision)
    llm = model.llm
    ids = model.tokenizer("The shapes are red, green and blue squares", return_tensors="pt").input_ids
    split = ids.shape[1] // 2
    with torch.inference_mode():
        embeds = llm.get_input_embeddings()(ids)
        cache = DynamicCache(config=llm.config)
        plain = llm(inputs_embeds=embeds, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[
            :, -1
        ]
        scratch = stepper_for(llm, ids.shape[1] + 4)
        assert scratch is not None
        assert torch.equal(scratch.prefill(embeds), plain)
        for (keys, values), layer in zip(scratch.prefix(), cache.layers, strict=True):
            assert torch.equal(keys, layer.keys) and torch.equal(values, layer.values)
        prefix = DynamicCache(config=llm.config)
        llm(inputs_embeds=embeds[:, :split], past_key_values=prefix, use_cache=True)
        resumed = stepper_for(llm, ids.shape[1] + 4)
        resumed.take_prefix(cache_layers(prefix))
        assert resumed.length == split
        # The reference after a prefix is the LLM's forward continuing from that prefix (the same matmul
        # shapes): bit for bit. Against the one-piece forward it differs only by the rounding of other
        # matmul shapes, which some CPUs' kernels (Intel AMX/AVX-512 oneDNN) give and others do not.
        continued = llm(
            inputs_embeds=embeds[:, split:], past_key_values=prefix, use_cache=True, logits_to_keep=1
        ).logits[:, -1]
        assert torch.equal(resumed.prefill(embeds[:, split:]), continued), f"logits differ ({precision})"
        torch.testing.assert_close(continued, plain, rtol=1e-4, atol=1e-4)
        token = plain.argmax(-1, keepdim=True)
        assert torch.equal(continued.argmax(-1, keepdim=True), token)
        next_plain = llm(
            inputs_embeds=llm.get_input_embeddings()(token),
            past_key_values=prefix,
            use_cache=True,
            position_ids=torch.tensor([[ids.shape[1]]]),
        ).logits[:, -1]
        assert torch.equal(resumed.step(token), next_plain)
        with pytest.raises(ValueError, match="longer than the static cache"):
            resumed.prefill(embeds)
