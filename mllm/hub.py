"""Network policy for model loading: offline unless the user allows downloads (MLLM_ALLOW_NETWORK=1, or
`mllm --allow-network`). Hub ids then load only from the local Hugging Face cache, and a miss is one clear
error instead of a network attempt.

Offline, bitsandbytes' one attempt (at import, on CPUs with AVX-512 BF16) to fetch a CPU 4-bit kernel from the
Hugging Face hub cannot succeed, and its two warnings (the `kernels` package's "Skipping publisher trust check
for 'kernels-community/quantization-bitsandbytes' ..." and bitsandbytes' "Failed to load CPU gemm_4bit_forward
from kernels-community ... Please make sure you already `pip install kernels`") would greet every command that
loads a model though nothing is wrong: bitsandbytes then uses its own CPU kernels. Those two records are
dropped while offline; every other message of either logger passes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any, TypeVar

from mllm.errors import MllmError

ALLOW_ENV = "MLLM_ALLOW_NETWORK"
T = TypeVar("T")
# logger name -> the start of its message about bitsandbytes' hub CPU kernel (see the module docstring)
OFFLINE_KERNEL_NOTICES: dict[str, str] = {
    "bitsandbytes.backends.cpu.ops": "Failed to load CPU gemm_4bit_forward from kernels-community",
    "kernels._internals.hf_hub": "Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes'",
}


def default_offline_env() -> None:
    """Make the Hugging Face libraries offline unless the user allowed the network. huggingface_hub reads
    HF_HUB_OFFLINE once, when it is imported, so `import mllm` calls this first; a value the user set is kept.
    (local_files_only alone still lets transformers look up adapter configs and hub registries online.)"""
    if not network_allowed():
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    for name, notice in OFFLINE_KERNEL_NOTICES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, OfflineKernelNotice) for f in logger.filters):
            logger.addFilter(OfflineKernelNotice(notice))


class OfflineKernelNotice(logging.Filter):
    """Drops one logger's records that start with `notice` while offline (see the module docstring)."""

    def __init__(self, notice: str) -> None:
        super().__init__()
        self.notice = notice

    def filter(self, record: logging.LogRecord) -> bool:
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") and not network_allowed()
        return not (offline and str(record.msg).startswith(self.notice))


def network_allowed() -> bool:
    """Whether model loading may download from a hub (read at each call, never cached)."""
    return os.environ.get(ALLOW_ENV, "") == "1"


def from_pretrained(loader: Callable[..., T], source: str, what: str, **kwargs: Any) -> T:
    """`loader(source, **kwargs)` (a transformers from_pretrained) offline unless allowed; a source that is
    neither a readable local folder nor in the cache raises an MllmError naming it."""
    try:
        return loader(source, local_files_only=not network_allowed(), **kwargs)
    except OSError as exc:
        hint = "" if network_allowed() else f"; downloads are off (set {ALLOW_ENV}=1 to allow them)"
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MllmError(f"{what} {source!r}: cannot load ({first_line}){hint}") from None
