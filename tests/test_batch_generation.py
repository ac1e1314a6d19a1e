"""mllm.batch: batched generation (the lean rows of mllm.llama_rows on the fast path, left-padded generate
otherwise) gives, at temperature 0, the answers of batch size 1 and of Assistant.chat, whatever the mix of
prompt lengths and image counts, at every precision; bad items are named."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from serve_support import lively_assistant, write_images

from mllm.assistant import Assistant
from mllm.batch import answer_batch, encode_item, left_pad, prompt_header
from mllm.bf16_linear import bf16_kernels_available
from mllm.errors import MllmError


@pytest.fixture(scope="module", params=["fp32", "fp16", "bf16"])
def assistant(request: pytest.FixtureRequest) -> Assistant:
    """The lively tiny model at fp32, fp16 weights and bf16 matmuls: the kernels of each compute a row of a
    batch on its own."""
    if request.param == "bf16" and not bf16_kernels_available():
        pytest.skip("no oneDNN bf16 kernels on this CPU")
    return lively_assistant(precision=request.param)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_images(tmp_path_factory.mktemp("images"))


def test_left_pad() -> None:
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_batched_answers_equal_batch_one(assistant: Assistant, images: dict[str, Path]) -> None:
    items = [
        ([images["red"]], "What color is it?"),
        ([], "A text-only question that is quite a bit longer than the others, to force padding."),
        ([images["green"], images["blue"]], "Compare the two images."),
        ([images["split"]], "Shape?"),
        ([images["blue"]], "Where is the large blue square located in the picture?"),
    ]
    one = answer_batch(assistant, items, max_new_tokens=6, batch_size=1)
    assert len(set(one)) > 1, "the lively model should not answer everything the same way"
    for batch_size in (2, 5):
        assert answer_batch(assistant, items, max_new_tokens=6, batch_size=batch_size) == one
    chat = assistant.chat([{"role": "user", "content": items[0][1]}], images=items[0][0], max_new_tokens=6)
    assert one[0] == chat.strip()


def test_prompt_header_is_what_every_prompt_starts_with(
    assistant: Assistant, images: dict[str, Path]
) -> None:
    header = prompt_header(assistant)
    assert header is not None
    ids, layers = header
    assert ids and len(layers) == assistant.model.llm.config.num_hidden_layers
    assert layers[0][0].shape[2] == len(ids)
    for question in ("Shape?", "What color is the biggest shape in this picture?"):
        prompt = encode_item(assistant, [images["red"]], question).input_ids
        assert prompt[: len(ids)] == ids
        assert question not in assistant.tokenizer.decode(ids)


def test_generate_fallback_gives_the_lean_answers(images: dict[str, Path]) -> None:
    """`fast=False` batches through transformers' generate on left-padded prompts: the same answers (fp32)."""
    lean = lively_assistant(precision="fp32")
    plain = Assistant(lean.model, fast=False)
    items = [
        ([images["red"]], "What color is it?"),
        ([], "A longer text-only question, so that the batch needs padding on the left."),
        ([images["green"], images["blue"]], "Compare the two images."),
    ]
    assert answer_batch(plain, items, max_new_tokens=6, batch_size=3) == answer_batch(
        lean, items, max_new_tokens=6, batch_size=3
    )


def test_progress_callback(assistant: Assistant, images: dict[str, Path]) -> None:
    done: list[int] = []
    items = [([images["red"]], "Color?")] * 3
    answer_batch(assistant, items, max_new_tokens=2, batch_size=2, progress=done.append)
    assert done == [2, 1]


def test_bad_item_is_named(assistant: Assistant, images: dict[str, Path], tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(MllmError, match=r"item 1: .*broken.png"):
        answer_batch(assistant, [([images["red"]], "ok"), ([broken], "bad")], max_new_tokens=2)
    with pytest.raises(MllmError, match="item 0: the question is empty"):
        answer_batch(assistant, [([], "  ")], max_new_tokens=2)
    with pytest.raises(MllmError, match="batch_size"):
        answer_batch(assistant, [([], "q")], batch_size=0)


def test_sampling_runs(assistant: Assistant) -> None:
    torch.manual_seed(0)
    (text,) = answer_batch(assistant, [([], "Say something")], max_new_tokens=4, temperature=0.8, top_p=0.9)
    assert isinstance(text, str)
