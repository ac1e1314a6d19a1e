"""On a CUDA GPU (skipped without one; `make test-gpu`): every part of a model loaded with `device=cuda` is on
the GPU, `auto` precision casts the LLM to bf16 there, the fast token loop and batched rows give transformers'
greedy output, a 4-bit LLM loads and back-propagates there (QLoRA), and the clip, align and instruct stages
train on the GPU through DeepSpeed in bf16 and save checkpoints that answer on the GPU."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from serve_support import TINY_CONFIG, lively_assistant, write_images

import mllm
from mllm.assistant import Assistant
from mllm.batch import answer_batch
from mllm.llm import load_llm
from mllm.model import MultimodalModel
from tests.train_support import REPO, make_data, run_training, write_clip_config, write_config

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
MESSAGES = [{"role": "user", "content": "<image>\nDescribe the picture in detail."}]
TEXT_ONLY = [{"role": "user", "content": "Tell me a story about a dragon."}]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_images(tmp_path_factory.mktemp("images"))


def _devices(model: MultimodalModel) -> set[str]:
    return {p.device.type for p in model.parameters()} | {b.device.type for b in model.buffers()}


def test_load_puts_every_part_on_the_gpu_at_bf16(images: dict[str, Path]) -> None:
    assistant = mllm.load(str(TINY_CONFIG), device="cuda")
    model = assistant.model
    assert _devices(model) == {"cuda"}
    assert model.inference_precision == "bf16"
    assert {p.dtype for p in model.llm.parameters()} == {torch.bfloat16}
    reply = assistant.chat(MESSAGES, images=[images["red"]], max_new_tokens=8, min_new_tokens=8)
    assert isinstance(reply, str) and reply


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("with_image", [False, True])
def test_fast_loop_equals_generate_on_the_gpu(
    images: dict[str, Path], precision: str, with_image: bool
) -> None:
    """The lean loop on the GPU against transformers' generate on the same weights."""
    fast = lively_assistant(precision=precision, device="cuda")
    assert _devices(fast.model) == {"cuda"}
    plain = Assistant(fast.model, fast=False)
    messages, pictures = (MESSAGES, [images["split"]]) if with_image else (TEXT_ONLY, None)
    expected = plain.chat(messages, images=pictures, max_new_tokens=32)
    assert len(expected) > 10
    assert fast.chat(messages, images=pictures, max_new_tokens=32) == expected
    assert "".join(fast.stream(messages, images=pictures, max_new_tokens=32)) == expected


def test_batched_rows_equal_batch_one_on_the_gpu(images: dict[str, Path]) -> None:
    assistant = lively_assistant(precision="fp32", device="cuda")
    items = [
        ([images["red"]], "What color is it?"),
        ([], "A text-only question that is quite a bit longer than the others, to force padding."),
        ([images["green"], images["blue"]], "Compare the two images."),
        ([images["split"]], "Shape?"),
    ]
    one = answer_batch(assistant, items, max_new_tokens=8, batch_size=1)
    assert len(set(one)) > 1
    assert answer_batch(assistant, items, max_new_tokens=8, batch_size=4) == one


def test_4bit_llm_on_the_gpu_answers_and_backpropagates(tiny_config, tmp_path: Path) -> None:
    """QLoRA on the GPU: NF4 base weights (bitsandbytes' CUDA kernels), LoRA and the projector train."""
    import bitsandbytes as bnb

    tiny_config.llm.init_config.update(hidden_size=64, intermediate_size=128)
    load_llm(tiny_config.llm).save_pretrained(tmp_path / "llm")
    tiny_config.llm.source = str(tmp_path / "llm")
    tiny_config.llm.load_in_4bit = True
    tiny_config.lora.enabled = True
    model = MultimodalModel.build(tiny_config, device=torch.device("cuda"))
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.llm.modules())
    assert model.device.type == "cuda" and {p.device.type for p in model.projector.parameters()} == {"cuda"}
    record = {
        "id": "q",
        "image": "a.png",
        "conversations": [{"from": "human", "value": "<image>hi"}, {"from": "gpt", "value": "hello"}],
    }
    encoded = model.processor.encode_llava(record)
    pixels = torch.randn(1, 3, 32, 32)
    prompt = model.processor.encode_prompt([{"role": "user", "content": "<image>hi"}])
    out = model.generate(
        torch.tensor([prompt.input_ids]), pixel_values=pixels, max_new_tokens=4, do_sample=False
    )
    assert out.shape == (1, 4)
    loss = model(
        torch.tensor([encoded.input_ids]), pixel_values=pixels, labels=torch.tensor([encoded.labels])
    ).loss
    loss.backward()
    assert all(p.grad is not None and p.grad.device.type == "cuda" for p in model.projector.parameters())


@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_align_then_instruct_train_on_the_gpu_in_bf16(
    zero: str, tmp_path: Path, images: dict[str, Path]
) -> None:
    data = make_data(tmp_path / "data")
    ds = str(REPO / "configs" / "deepspeed" / f"{zero}.json")
    align = write_config(tmp_path / "align.yaml", data, tmp_path / "align", deepspeed=ds, precision="auto")
    run = run_training(align, DS_ACCELERATOR="cuda")
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"DeepSpeed engine on cuda:0: ZeRO stage {zero[-1]}, bf16" in run.stderr
    instruct = write_config(
        tmp_path / "instruct.yaml",
        data,
        tmp_path / "instruct",
        stage="instruct",
        model=None,
        init_from=str(tmp_path / "align" / "final"),
        llm="lora",
        lora={"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"},
        data={
            "train": str(data / "instruct.json"),
            "vqa_questions": str(data / "vqa_questions.jsonl"),
            "vqa_answers": str(data / "vqa_answers.jsonl"),
            "max_vqa_questions": 4,
        },
        deepspeed=ds,
        precision="auto",
        max_steps=6,
        log_every=1,
    )
    run = run_training(instruct, DS_ACCELERATOR="cuda")
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"DeepSpeed engine on cuda:0: ZeRO stage {zero[-1]}, bf16" in run.stderr
    rows = [json.loads(line) for line in (tmp_path / "instruct" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["kind"] == "train"]
    assert len(losses) == 6 and all(math.isfinite(x) for x in losses)
    assistant = mllm.load(str(tmp_path / "instruct" / "final"), device="cuda")
    assert _devices(assistant.model) == {"cuda"}
    assert isinstance(assistant.chat(MESSAGES, images=[images["red"]], max_new_tokens=4), str)


def test_clip_stage_trains_on_the_gpu(tmp_path: Path) -> None:
    data = make_data(tmp_path / "data", num_images=16)
    config = write_clip_config(tmp_path / "clip.yaml", data, tmp_path / "run", {}, precision="auto")
    run = run_training(config, DS_ACCELERATOR="cuda")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "DeepSpeed engine on cuda:0: ZeRO stage 0, bf16" in run.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert 0 <= summary["eval"]["retrieval_accuracy"] <= 1
    assert (tmp_path / "run" / "vision" / "config.json").is_file()
