"""Generation helpers: sampling settings, stop strings, cancellation and a streaming iterator over
transformers' generate running in a worker thread."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer


@dataclass
class GenerationStats:
    """Filled in while a reply is generated: token counts (for API `usage`) and why generation ended."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"  # "stop" (end of sequence, stop string, cancel) or "length" (max_new_tokens)


class TokenCounter(StoppingCriteria):
    """Never stops; counts the tokens generate() produced (with inputs_embeds its input_ids are only new ones)."""

    def __init__(self, stats: GenerationStats) -> None:
        self.stats = stats

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        self.stats.completion_tokens = int(input_ids.shape[-1])
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


class CancelOnEvent(StoppingCriteria):
    """Stops generation as soon as `event` is set (a client went away, the user pressed stop)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        return torch.full(
            (input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device
        )


def sampling_kwargs(temperature: float, top_p: float) -> dict[str, Any]:
    """generate() kwargs: temperature 0 means greedy decoding."""
    if temperature < 0:
        raise ValueError("temperature must be >= 0")
    if not 0 < top_p <= 1:
        raise ValueError("top_p must be in (0, 1]")
    if temperature == 0:
        return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    return {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": None}


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Text before the first stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def held_back(text: str, stop: Sequence[str]) -> int:
    """How many trailing characters could still be the start of a stop string."""
    longest = 0
    for s in stop:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                longest = max(longest, k)
                break
    return longest


def stream_generate(
    run: Callable[..., Any],
    tokenizer: PreTrainedTokenizerBase,
    stop: Sequence[str] = (),
    cancel: threading.Event | None = None,
    **generate_kwargs: Any,
) -> Iterator[str]:
    """Yield text pieces as `run(streamer=..., stopping_criteria=..., **generate_kwargs)` produces tokens.

    Closing the iterator early cancels generation; an exception in the worker is re-raised here."""
    cancel = cancel or threading.Event()
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    criteria = StoppingCriteriaList([CancelOnEvent(cancel), *generate_kwargs.pop("stopping_criteria", [])])
    failure: list[BaseException] = []

    def work() -> None:
        try:
            run(streamer=streamer, stopping_criteria=criteria, **generate_kwargs)
        except BaseException as exc:  # handed to the consuming thread, re-raised there
            failure.append(exc)
            streamer.end()

    worker = threading.Thread(target=work, name="mllm-generate", daemon=True)
    worker.start()
    emitted = ""
    text = ""
    try:
        for piece in streamer:
            text += piece
            visible, stopped = cut_at_stop(text, stop)
            if stopped:
                if len(visible) > len(emitted):
                    yield visible[len(emitted) :]
                cancel.set()
                break
            safe = len(visible) - held_back(visible, stop)
            if safe > len(emitted):
                yield visible[len(emitted) : safe]
                emitted = visible[:safe]
        else:
            if len(text) > len(emitted):
                yield text[len(emitted) :]
    finally:
        cancel.set()
        worker.join()
    if failure:
        raise failure[0]
