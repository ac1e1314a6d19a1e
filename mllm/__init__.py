"""mllm: an offline-first LLaVA-style multimodal assistant library (vision tower + projector + causal LLM)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Assistant", "MllmError", "__version__", "load"]

from mllm.errors import MllmError
from mllm.hub import default_offline_env

default_offline_env()  # before transformers / huggingface_hub are imported: offline unless allowed

if TYPE_CHECKING:
    from mllm.assistant import Assistant


def load(
    spec: str = "default",
    load_in_4bit: bool = False,
    load_in_8bit: bool = False,
    fast: bool = True,
    precision: str = "auto",
    batches: bool = False,
    device: str = "auto",
    **llm_overrides: Any,
) -> Assistant:
    """Load an Assistant from `default`, a checkpoint folder or a model config YAML (imports torch lazily).
    `fast` (default) merges LoRA and decodes with mllm's token loop at `precision` (auto: bf16 matmuls on CPUs
    with AMX, else fp16 weights on CPUs with the kernels for it, else fp32; on a GPU bf16 where it has it, else
    fp16); False uses transformers' generate in fp32. `batches`: the assistant will mostly answer many prompts
    at once (mllm.batch). `device`: `auto` (a CUDA GPU when there is one, else the CPU), `cpu`, `cuda`,
    `cuda:N`."""
    from mllm.assistant import load as _load

    return _load(
        spec,
        load_in_4bit=load_in_4bit,
        load_in_8bit=load_in_8bit,
        fast=fast,
        precision=precision,
        batches=batches,
        device=device,
        **llm_overrides,
    )


def __getattr__(name: str) -> Any:
    if name == "Assistant":
        from mllm.assistant import Assistant

        return Assistant
    raise AttributeError(name)
