"""Conversation -> input_ids, labels and image placeholders, using the LLM's own chat template.

Each `<image>` marker becomes N placeholder tokens. Labels are -100 everywhere except the assistant replies
(with their end-of-turn token). Reply spans are found by rendering growing prefixes of the conversation
and mapping character spans to tokens through the tokenizer's offsets; when a span cannot be located exactly
an error naming the sample is raised. Nothing is ever masked silently.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase

from mllm.errors import MllmError

IGNORE_INDEX = -100
ROLE_FROM_LLAVA = {"human": "user", "gpt": "assistant", "system": "system"}
Message = dict[str, Any]


class SampleError(MllmError):
    """A sample cannot be encoded; the message names it."""


class SampleTooLong(SampleError):
    """A sample is longer than the model's context."""


@dataclass
class Encoded:
    """One tokenized conversation. `labels` is None for prompts encoded for generation."""

    input_ids: list[int]
    labels: list[int] | None
    num_images: int

    def __len__(self) -> int:
        return len(self.input_ids)


def llava_to_messages(conversations: Sequence[dict[str, Any]], sample_id: str = "?") -> list[Message]:
    """LLaVA `[{"from": "human"|"gpt"|"system", "value": ...}]` -> `[{"role", "content"}]`."""
    messages = []
    for index, turn in enumerate(conversations):
        role = ROLE_FROM_LLAVA.get(turn.get("from"))
        if role is None:
            raise SampleError(
                f"record {sample_id}: conversations[{index}].from: unknown role {turn.get('from')!r}"
            )
        messages.append({"role": role, "content": turn.get("value", "")})
    return messages


def place_images(
    messages: Sequence[Message], num_images: int, image_token: str, first_turn: bool = False
) -> list[Message]:
    """Put image markers where the user wants them: if no content holds a marker, prepend them to the last user
    message (chat) or, with `first_turn`, to the first one (LLaVA training records); otherwise the number of
    markers must equal the number of images."""
    messages = [dict(m) for m in messages]
    markers = sum(str(m["content"]).count(image_token) for m in messages)
    if markers == 0 and num_images:
        for message in messages if first_turn else reversed(messages):
            if message["role"] == "user":
                message["content"] = (image_token + "\n") * num_images + str(message["content"])
                return messages
        raise MllmError("images were given but there is no user message to attach them to")
    if markers != num_images:
        raise MllmError(
            f"the messages hold {markers} {image_token} marker(s) but {num_images} image(s) were given"
        )
    return messages


class MultimodalProcessor:
    """Tokenizes conversations for one model: its tokenizer, image token and tokens per image."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        image_token: str,
        num_image_tokens: int,
        system_prompt: str | None = None,
        max_length: int | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.image_token = image_token
        self.image_token_id: int = tokenizer.convert_tokens_to_ids(image_token)
        if self.image_token_id == tokenizer.unk_token_id:
            raise ValueError(f"image token {image_token!r} is not in the tokenizer")
        self.num_image_tokens = num_image_tokens
        self.system_prompt = system_prompt
        self.max_length = max_length

    def with_system(self, messages: Sequence[Message]) -> list[Message]:
        """The messages with the configured system prompt first, unless they bring their own."""
        messages = list(messages)
        if self.system_prompt and (not messages or messages[0]["role"] != "system"):
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return messages

    def render(self, messages: Sequence[Message], add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def _expand(self, ids: list[int], labels: list[int] | None, sample_id: str) -> Encoded:
        """Replace each image token by `num_image_tokens` copies (label -100)."""
        out_ids: list[int] = []
        out_labels: list[int] = []
        count = 0
        for position, token in enumerate(ids):
            if token == self.image_token_id:
                if labels is not None and labels[position] != IGNORE_INDEX:
                    raise SampleError(
                        f"record {sample_id}: an {self.image_token} marker is inside an assistant reply"
                    )
                count += 1
                out_ids.extend([token] * self.num_image_tokens)
                out_labels.extend([IGNORE_INDEX] * self.num_image_tokens)
            else:
                out_ids.append(token)
                out_labels.append(labels[position] if labels is not None else IGNORE_INDEX)
        encoded = Encoded(out_ids, out_labels if labels is not None else None, count)
        if self.max_length is not None and len(encoded) > self.max_length:
            raise SampleTooLong(
                f"record {sample_id}: {len(encoded)} tokens, longer than the context of {self.max_length}"
            )
        return encoded

    def encode_prompt(self, messages: Sequence[Message], sample_id: str = "prompt") -> Encoded:
        """Tokens of a conversation followed by the assistant's generation prompt (for inference)."""
        text = self.render(self.with_system(messages), add_generation_prompt=True)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self._expand(ids, None, sample_id)

    def reply_spans(self, messages: Sequence[Message], full: str, sample_id: str) -> list[tuple[int, int]]:
        """Character spans of each assistant reply (through its end-of-turn token) in the rendered `full`."""
        spans = []
        for index, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prefix = self.render(messages[:index], add_generation_prompt=True)
            upto = self.render(messages[: index + 1], add_generation_prompt=False)
            if not (upto.startswith(prefix) and full.startswith(upto)):
                raise SampleError(
                    f"record {sample_id}: turn {index}: the chat template does not render the conversation as a "
                    "growing prefix, so the assistant reply cannot be located exactly"
                )
            end = len(upto.rstrip())
            if end <= len(prefix) or not str(message["content"]).strip():
                raise SampleError(f"record {sample_id}: turn {index}: empty assistant reply")
            spans.append((len(prefix), end))
        return spans

    def encode_conversation(self, messages: Sequence[Message], sample_id: str = "?") -> Encoded:
        """Tokens and labels of a full conversation for training: only assistant replies are supervised."""
        messages = self.with_system(messages)
        full = self.render(messages, add_generation_prompt=False)
        spans = self.reply_spans(messages, full, sample_id)
        enc = self.tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
        ids: list[int] = enc["input_ids"]
        labels = [IGNORE_INDEX] * len(ids)
        covered = [0] * len(spans)
        for position, (start, end) in enumerate(enc["offset_mapping"]):
            if start == end:
                continue
            for index, (span_start, span_end) in enumerate(spans):
                if start >= span_start and end <= span_end:
                    labels[position] = ids[position]
                    covered[index] += 1
                elif start < span_end and end > span_start:
                    raise SampleError(
                        f"record {sample_id}: a token crosses the edge of assistant reply {index + 1} "
                        f"(characters {start}-{end} vs reply {span_start}-{span_end}); cannot mask labels exactly"
                    )
        for index, count in enumerate(covered):
            if count == 0:
                raise SampleError(f"record {sample_id}: assistant reply {index + 1} maps to no tokens")
        return self._expand(ids, labels, sample_id)

    def encode_llava(self, record: dict[str, Any]) -> Encoded:
        """Encode a LLaVA record `{"id", "image"?, "conversations"}` for training."""
        sample_id = str(record.get("id", "?"))
        images = record.get("image")
        num_images = 0 if images is None else (1 if isinstance(images, str) else len(images))
        messages = place_images(
            llava_to_messages(record["conversations"], sample_id),
            num_images,
            self.image_token,
            first_turn=True,
        )
        encoded = self.encode_conversation(messages, sample_id)
        if encoded.num_images != num_images:
            raise SampleError(
                f"record {sample_id}: {encoded.num_images} image markers for {num_images} image(s)"
            )
        return encoded
