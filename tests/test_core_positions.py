"""`image_position_step` (mllm.positions): 0 puts every token of an image at one rotary position, 8 sets them 8
apart (past the lean loop's cache slots); every path that runs the LLM uses the same positions: the training
forward, transformers' generate, the lean decode loop, the generic loop, batched rows and the prefix cache give
the same greedy tokens, and so does an hf-llava export given the folder's position ids. A negative step is
refused."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from PIL import Image
from serve_support import TINY_CONFIG, lively_assistant

from mllm.assistant import Assistant
from mllm.config import load_model_config
from mllm.decoding import decode_rows, decode_tokens, header_layers
from mllm.errors import MllmError
from mllm.llm import apply_lora
from mllm.positions import image_position_ids
from mllm.prefix_cache import PrefixCache

STEPS = 24


def test_positions_of_image_blocks() -> None:
    ids = torch.tensor([[5, 9, 9, 9, 6, 9, 9, 9, 9, 9, 9, 7]])  # two images side by side: blocks of 3
    assert image_position_ids(ids, 9, 3, 1).tolist() == [list(range(12))]
    assert image_position_ids(ids, 9, 3, 0).tolist() == [[0, 1, 1, 1, 2, 3, 3, 3, 4, 4, 4, 5]]
    assert image_position_ids(ids, 9, 3, 4).tolist() == [[0, 1, 5, 9, 10, 11, 15, 19, 20, 24, 28, 29]]
    padded = torch.tensor([[0, 0, 5, 9, 9, 9, 7], [5, 6, 5, 9, 9, 9, 7]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]])
    assert image_position_ids(padded, 9, 3, 0, mask).tolist() == [
        [1, 1, 0, 1, 1, 1, 2],
        [0, 1, 2, 3, 3, 3, 4],
    ]


@pytest.fixture(scope="module", params=[0, 8])
def assistant(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Assistant:
    path = tmp_path_factory.mktemp("positions") / "model.yaml"
    path.write_text(TINY_CONFIG.read_text() + f"image_position_step: {request.param}\n")
    return lively_assistant(config=path, endless=True)


def _images() -> list[Image.Image]:
    return [Image.new("RGB", (40, 40), (200, 30, 30)), Image.new("RGB", (32, 48), (20, 60, 220))]


def _prompt(assistant: Assistant, text: str, images: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    content = "<image>\n" * images + text
    return assistant.prepare([{"role": "user", "content": content}], _images()[:images] or None)


def test_forward_uses_the_image_positions(assistant: Assistant) -> None:
    model = assistant.model
    step = model.config.image_position_step
    ids, pixels = _prompt(assistant, "What is in the two pictures?", 2)
    positions = model.position_ids(ids)
    assert positions is not None
    n = model.num_image_tokens
    assert int(positions[0, -1]) == ids.shape[1] - 1 + 2 * (n - 1) * (step - 1)
    with torch.no_grad():
        logits = model(ids, pixel_values=pixels).logits[0, -1]
        embeds = model.embed(ids, pixels)
        torch.testing.assert_close(
            logits, model.llm(inputs_embeds=embeds, position_ids=positions).logits[0, -1], rtol=0, atol=0
        )
        model.config.image_position_step = 1
        try:
            assert model.position_ids(ids) is None
            sequential = model(ids, pixel_values=pixels).logits[0, -1]
        finally:
            model.config.image_position_step = step
    assert (logits - sequential).abs().max() > 1e-3  # the positions reach the LLM


def _generate(assistant: Assistant, ids: torch.Tensor, pixels: torch.Tensor | None) -> list[int]:
    out = assistant.model.generate(ids, pixel_values=pixels, max_new_tokens=STEPS, do_sample=False)
    return out[0].tolist()


@pytest.mark.parametrize("images", [0, 1, 2])
def test_lean_and_generic_loops_equal_generate(assistant: Assistant, images: int) -> None:
    model = assistant.model
    ids, pixels = _prompt(assistant, "Describe it.", images)
    expected = _generate(assistant, ids, pixels)
    assert len(expected) == STEPS and len(set(expected)) > 1
    assert list(decode_tokens(model, ids, pixels, STEPS)) == expected  # the lean stepper
    wrapped = model.llm
    # LoRA B starts at zero: the same function, without a lean loop (peft wraps a copy: it edits what it wraps)
    model.llm = apply_lora(copy.deepcopy(wrapped), model.config.lora)
    try:
        assert list(decode_tokens(model, ids, pixels, STEPS)) == expected
    finally:
        model.llm = wrapped


def test_rows_and_prefix_cache_equal_one_prompt_alone(assistant: Assistant) -> None:
    model = assistant.model
    prompts = [
        _prompt(assistant, "Describe it.", 1),
        _prompt(assistant, "Hello there, how are you?", 0),
        _prompt(assistant, "Compare them.", 2),
        _prompt(assistant, "Describe it again.", 1),
    ]
    alone = [list(decode_tokens(model, ids, pixels, STEPS)) for ids, pixels in prompts]
    header = list(prompts[1][0][0, :6].tolist())
    replies = decode_rows(
        model, prompts, [STEPS] * len(prompts), header=(header, header_layers(model, header))
    )
    assert replies == alone
    cache = PrefixCache(min_reuse=4)
    ids, pixels = prompts[2]
    assert list(decode_tokens(model, ids, pixels, STEPS, prefix_cache=cache)) == alone[2]
    assert list(decode_tokens(model, ids, pixels, STEPS, prefix_cache=cache)) == alone[2]
    assert cache.hits == 1


def test_hf_llava_export_gives_mllm_tokens_with_its_position_ids(
    assistant: Assistant, tmp_path: Path
) -> None:
    """The exported LLaVA with position ids from the folder's mllm_positions.py gives mllm's greedy tokens (two
    images); without them transformers lays the image out one position a token and the logits differ."""
    import importlib.util

    from transformers import LlavaForConditionalGeneration

    from mllm.checkpoint import save_checkpoint
    from serve.cli import main

    step = assistant.model.config.image_position_step
    checkpoint = save_checkpoint(assistant.model, tmp_path / "ckpt", stage="finetune", step=1, save_llm=True)
    out = tmp_path / "hf"
    assert main(["export", "--model", str(checkpoint), "--format", "hf-llava", "--out", str(out)]) == 0
    assert f"image_position_step: {step}" in (out / "USAGE.md").read_text()
    spec = importlib.util.spec_from_file_location("exported_positions", out / "mllm_positions.py")
    assert spec is not None and spec.loader is not None
    exported = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(exported)
    llava = LlavaForConditionalGeneration.from_pretrained(out).eval()
    assert llava.config.image_position_step == step

    ids, pixels = _prompt(assistant, "What is in the two pictures?", 2)
    mask = torch.ones_like(ids)
    positions = exported.image_position_ids(
        ids,
        llava.config.image_token_id,
        llava.config.image_seq_length,
        llava.config.image_position_step,
        mask,
    )
    assert torch.equal(positions, assistant.model.position_ids(ids))
    expected = list(decode_tokens(assistant.model, ids, pixels, STEPS))
    with torch.no_grad():
        generated = llava.generate(
            input_ids=ids,
            pixel_values=pixels,
            attention_mask=mask,
            position_ids=positions,
            max_new_tokens=STEPS,
            do_sample=False,
        )
        assert generated[0, ids.shape[1] :].tolist() == expected
        ours = assistant.model(ids, pixel_values=pixels).logits
        vocab = ours.shape[-1]
        given = llava(input_ids=ids, pixel_values=pixels, position_ids=positions).logits[..., :vocab]
        plain = llava(input_ids=ids, pixel_values=pixels).logits[..., :vocab]
    assert (given - ours).abs().max().item() < 1e-4
    assert (plain - ours).abs().max().item() > 1e-2


def test_negative_step_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("image_position_step: -1\n")
    with pytest.raises(MllmError, match="bad.yaml: field image_position_step: -1 is negative"):
        load_model_config(bad)
