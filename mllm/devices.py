"""Where inference runs: `auto` (the first CUDA GPU when torch sees one, else the CPU), `cpu`, `cuda` or
`cuda:N`. Checked up front so a request for a GPU that is not there fails with one clear line, not deep in
a weight copy."""

from __future__ import annotations

import torch

from mllm.errors import MllmError


def resolve_device(name: str | torch.device) -> torch.device:
    """The torch device named by `name` (see the module docstring), refused when it is not usable here."""
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise MllmError(f"unknown device {str(name)!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise MllmError(f"device {str(name)!r} is not supported: use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise MllmError(f"device {str(name)!r}: torch sees no CUDA GPU here (torch {torch.__version__})")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise MllmError(f"device {str(name)!r}: only {count} CUDA GPU(s) here (cuda:0 to cuda:{count - 1})")
    return device if device.index is not None else torch.device("cuda", torch.cuda.current_device())
