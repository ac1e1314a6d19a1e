"""Chat session logic shared by the Gradio UI, the CLI chat and the HTTP API, free of any UI or HTTP code.

A `Conversation` is a list of turns (role, text, images). `build_prompt` turns it into the role/content
messages and the ordered image list that `Assistant.stream` takes: each turn's images become image markers
at the start of that turn's text, so images stay with the message they were sent with. `stream_reply`
streams the assistant's reply and fills `ReplyStats` (prompt and completion token counts, finish reason).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import StoppingCriteria

from mllm.assistant import Assistant
from mllm.errors import MllmError
from mllm.images import ImageInput
from mllm.processor import Message, place_images

ROLES = ("system", "user", "assistant")


@dataclass
class Turn:
    """One message of a conversation; only user turns carry images."""

    role: str
    text: str
    images: list[ImageInput] = field(default_factory=list)


@dataclass
class GenerationSettings:
    """How to sample a reply."""

    max_new_tokens: int = 256
    temperature: float = 0.2
    top_p: float = 1.0
    stop: tuple[str, ...] = ()

    def check(self) -> None:
        """Refuse impossible values, naming the setting."""
        if self.max_new_tokens < 1:
            raise MllmError(f"max_new_tokens {self.max_new_tokens}: must be at least 1")
        if self.temperature < 0:
            raise MllmError(f"temperature {self.temperature}: must be >= 0")
        if not 0 < self.top_p <= 1:
            raise MllmError(f"top_p {self.top_p}: must be in (0, 1]")


@dataclass
class ReplyStats:
    """Filled in by `stream_reply`: token counts, and `stop` (end of turn or stop string) or `length`."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"


class Conversation:
    """The turns of one chat (one browser session, one CLI run, one API request)."""

    def __init__(self, turns: Sequence[Turn] = ()) -> None:
        self.turns: list[Turn] = list(turns)

    def add_user(self, text: str, images: Sequence[ImageInput] = ()) -> None:
        self.turns.append(Turn("user", text, list(images)))

    def add_assistant(self, text: str) -> None:
        self.turns.append(Turn("assistant", text))

    def drop_reply(self) -> None:
        """Remove a trailing assistant reply (before regenerating it)."""
        if self.turns and self.turns[-1].role == "assistant":
            self.turns.pop()

    def undo(self) -> Turn | None:
        """Remove the last user message and the reply to it; returns that user turn (None if there is none)."""
        for index in range(len(self.turns) - 1, -1, -1):
            if self.turns[index].role == "user":
                turn = self.turns[index]
                del self.turns[index:]
                return turn
        return None

    def clear(self) -> None:
        self.turns.clear()

    @property
    def images(self) -> list[ImageInput]:
        return [image for turn in self.turns for image in turn.images]


def build_prompt(turns: Sequence[Turn], image_token: str) -> tuple[list[Message], list[ImageInput]]:
    """(messages, images) for Assistant.stream: each turn's images as markers before its text, in order."""
    messages: list[Message] = []
    images: list[ImageInput] = []
    for index, turn in enumerate(turns):
        if turn.role not in ROLES:
            raise MllmError(f"messages[{index}].role: expected one of {', '.join(ROLES)}, got {turn.role!r}")
        if image_token in turn.text:
            raise MllmError(
                f"messages[{index}]: the text may not contain the reserved image marker {image_token}"
            )
        if turn.images and turn.role != "user":
            raise MllmError(f"messages[{index}]: only user messages may carry images")
        content = (image_token + "\n") * len(turn.images) + turn.text
        messages.append({"role": turn.role, "content": content})
        images.extend(turn.images)
    if not messages or messages[-1]["role"] != "user":
        raise MllmError("the conversation must end with a user message")
    return messages, images


class TokenCounter(StoppingCriteria):
    """A transformers stopping criterion that never stops: it records how many tokens were generated and the
    last one (with `inputs_embeds`, generate's `input_ids` hold only the new tokens)."""

    def __init__(self) -> None:
        self.count = 0
        self.last_token: int | None = None

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        self.count = int(input_ids.shape[-1])
        if self.count:
            self.last_token = int(input_ids[0, -1])
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def count_prompt_tokens(assistant: Assistant, messages: Sequence[Message], num_images: int) -> int:
    """Tokens of the encoded prompt (image placeholders included), as the model will see it."""
    placed = place_images(messages, num_images, assistant.model.config.llm.image_token)
    return len(assistant.model.processor.encode_prompt(placed))


def _eos_ids(assistant: Assistant) -> set[int]:
    eos = assistant.model.llm.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
    if assistant.tokenizer.eos_token_id is not None:
        ids.add(assistant.tokenizer.eos_token_id)
    return ids


def stream_reply(
    assistant: Assistant,
    turns: Sequence[Turn],
    settings: GenerationSettings,
    cancel: threading.Event | None = None,
    stats: ReplyStats | None = None,
) -> Iterator[str]:
    """The assistant's reply to `turns`, piece by piece. Setting `cancel` or closing the iterator stops
    generation. Problems with the input (images, length) are raised before the first piece."""
    settings.check()
    stats = stats if stats is not None else ReplyStats()
    messages, images = build_prompt(turns, assistant.model.config.llm.image_token)
    stats.prompt_tokens = count_prompt_tokens(assistant, messages, len(images))
    counter = TokenCounter()  # a stopping criterion: Assistant.stream then takes the generate() path
    pieces = assistant.stream(
        messages,
        images,
        max_new_tokens=settings.max_new_tokens,
        temperature=settings.temperature,
        top_p=settings.top_p,
        stop=settings.stop,
        cancel=cancel,
        stopping_criteria=[counter],
    )
    return _follow(
        pieces,
        counter,
        stats,
        assistant,
        min(settings.max_new_tokens, assistant.context_length - stats.prompt_tokens),
    )


def _follow(
    pieces: Iterator[str], counter: TokenCounter, stats: ReplyStats, assistant: Assistant, limit: int
) -> Iterator[str]:
    try:
        yield from pieces
    finally:
        close = getattr(pieces, "close", None)
        if close is not None:
            close()
        stats.completion_tokens = counter.count
        hit_limit = counter.count >= limit and counter.last_token not in _eos_ids(assistant)
        stats.finish_reason = "length" if hit_limit else "stop"
