"""Network policy for model loading: offline unless the user allows downloads (MLLM_ALLOW_NETWORK=1, or
`mllm --allow-network`). Hub ids then load only from the local Hugging Face cache, and a miss is one clear
error instead of a network attempt."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

from mllm.errors import MllmError

ALLOW_ENV = "MLLM_ALLOW_NETWORK"
T = TypeVar("T")


def default_offline_env() -> None:
    """Make the Hugging Face libraries offline unless the user allowed the network. huggingface_hub reads
    HF_HUB_OFFLINE once, when it is imported, so `import mllm` calls this first; a value the user set is kept.
    (local_files_only alone still lets transformers look up adapter configs and hub registries online.)"""
    if not network_allowed():
        os.environ.setdefault("HF_HUB_OFFLINE", "1")


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
