"""Helpers shared by the serving and core tests: the tiny random model with weights scaled up so that its greedy
replies vary from prompt to prompt (a freshly initialised tiny model answers every prompt with newlines),
saved as a self-contained checkpoint, small test images, and the LLM's own forward for one token (what the
lean loop is held to)."""

from __future__ import annotations

import socket
from pathlib import Path

import torch
from PIL import Image

import mllm
from mllm.assistant import Assistant
from mllm.checkpoint import save_checkpoint

ROOT = Path(__file__).resolve().parent.parent
TINY_CONFIG = ROOT / "configs" / "model" / "tiny-test.yaml"
ARTIFACTS = ROOT / "test-artifacts"
COLORS = {"red": (230, 0, 0), "green": (0, 170, 0), "blue": (0, 70, 255)}


def lively_assistant(
    seed: int = 0,
    scale: float = 0.3,
    precision: str = "fp32",
    context: int | None = None,
    endless: bool = False,
    config: Path = TINY_CONFIG,
    device: str = "cpu",
) -> Assistant:
    """The tiny model (or another model YAML with its sizes, `config`) with its LLM and projector weights
    redrawn at `scale`, so greedy outputs differ, then brought to inference `precision` (mllm.quantize).
    `context` replaces the LLM's context length (positions). `endless`: greedy replies never end by themselves
    (see `never_end`). On the CPU unless `device` says otherwise, also on a machine with a GPU."""
    from mllm.config import load_model_config
    from mllm.quantize import apply_precision

    overrides = {}
    if context is not None:
        init_config = dict(load_model_config(TINY_CONFIG).llm.init_config or {})
        overrides["init_config"] = {**init_config, "max_position_embeddings": context}
    assistant = mllm.load(str(config), precision="fp32", device=device, **overrides)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in (assistant.model.llm, assistant.model.projector):
            for param in module.parameters():
                param.copy_(torch.randn(param.shape, generator=generator) * scale)
        if endless:
            never_end(assistant)
    apply_precision(assistant.model, precision)
    return assistant


def never_end(assistant: Assistant) -> None:
    """Make greedy decoding never pick an end-of-sequence token, whatever the CPU's rounding: the output rows of
    the end tokens become zero (logit 0) and two ordinary tokens get opposite rows v and -v, so one of them always
    scores |h.v| > 0. (A random model's greedy path differs between machines, and can end early on some.)"""
    llm = assistant.model.llm
    eos = llm.generation_config.eos_token_id
    ends = {
        *(eos if isinstance(eos, list) else [eos] if eos is not None else []),
        assistant.tokenizer.eos_token_id,
    }
    rows = llm.get_output_embeddings().weight
    plus, minus = assistant.tokenizer.convert_tokens_to_ids(["the", "and"])
    assert not ends & {plus, minus}, (ends, plus, minus)
    rows[sorted(ends)] = 0.0
    rows[minus] = -rows[plus]


def lively_checkpoint(folder: Path, seed: int = 0) -> Path:
    """`lively_assistant` saved as a checkpoint folder that holds its LLM (`save_llm=True`)."""
    return save_checkpoint(lively_assistant(seed).model, folder, save_llm=True)


def write_images(folder: Path) -> dict[str, Path]:
    """A few small PNGs: one solid colour each, plus a two-colour one; name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, rgb in COLORS.items():
        paths[name] = folder / f"{name}.png"
        Image.new("RGB", (40, 30), rgb).save(paths[name])
    split = Image.new("RGB", (48, 48), COLORS["red"])
    split.paste(Image.new("RGB", (24, 48), COLORS["blue"]), (24, 0))
    paths["split"] = folder / "split.png"
    split.save(paths["split"])
    return paths


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def forward_one(llm: torch.nn.Module, token: torch.Tensor, cache: object, position: int) -> torch.Tensor:
    """Logits [1, vocab] of the LLM's own forward for `token` ([1, 1] id) at `position` on its `cache`."""
    out = llm(input_ids=token, past_key_values=cache, use_cache=True, position_ids=torch.tensor([[position]]))
    return out.logits[:, -1]
