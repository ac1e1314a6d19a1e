"""Shared input limits and option choices (no heavy imports, so command-line parsers can use them)."""

from __future__ import annotations

DEFAULT_MAX_PIXELS = 40_000_000  # images with more pixels are refused (decompression bombs)

# Inference precisions of the LLM's linear layers (mllm.quantize); here so the CLI can list them without torch.
INFERENCE_PRECISIONS = ("auto", "fp32", "fp16", "bf16", "int8")
