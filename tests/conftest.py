"""Shared fixtures: tiny random models built offline from configs/model/tiny-test.yaml (SmolLM2's real tokenizer)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
TINY_CONFIG = REPO / "configs" / "model" / "tiny-test.yaml"


@pytest.fixture(scope="session")
def tiny_config_path() -> Path:
    return TINY_CONFIG


@pytest.fixture
def tiny_config():
    from mllm.config import load_model_config

    return load_model_config(TINY_CONFIG)


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    from mllm.config import LLMConfig
    from mllm.llm import load_tokenizer

    return load_tokenizer(LLMConfig(source="smollm2"))


@pytest.fixture
def tiny_model(tiny_config):
    """A fresh tiny model (vision 2 layers, Llama 2 layers, hidden 32) with LoRA, built in well under a second."""
    from mllm.model import MultimodalModel

    tiny_config.lora.enabled = True
    return MultimodalModel.build(tiny_config)
