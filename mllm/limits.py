"""Shared input limits (no heavy imports, so command-line parsers can use them)."""

from __future__ import annotations

DEFAULT_MAX_PIXELS = 40_000_000  # images with more pixels are refused (decompression bombs)
