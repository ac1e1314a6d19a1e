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

from mllm.assistant import Assistant
from mllm.errors import MllmError
from mllm.generation import GenerationStats
from mllm.images import ImageInput
from mllm.processor import Message

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


def stream_reply(
    assistant: Assistant,
    turns: Sequence[Turn],
    settings: GenerationSettings,
    cancel: threading.Event | None = None,
    stats: GenerationStats | None = None,
) -> Iterator[str]:
    """The assistant's reply to `turns`, piece by piece, on the assistant's default (fast) decode path. Setting
    `cancel` or closing the iterator stops generation; `stats` receives token counts and the finish reason.
    Problems with the input (images, length) are raised before the first piece."""
    settings.check()
    messages, images = build_prompt(turns, assistant.model.config.llm.image_token)
    return assistant.stream(
        messages,
        images,
        max_new_tokens=settings.max_new_tokens,
        temperature=settings.temperature,
        top_p=settings.top_p,
        stop=settings.stop,
        cancel=cancel,
        stats=stats,
    )
