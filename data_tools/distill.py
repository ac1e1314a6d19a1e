"""Self-distilled text chats: the text-only records of a LLaVA instruction file answered again by a model
(normally the base LLM the assistant is trained from), greedily, as `mllm chat` would answer them.

Text-only chats are mixed into visual instruction data so the LLM keeps its text skills. With hand-written
answers, training also teaches their wording and facts, which leaks into neighbouring questions ("There are
1000 years in a century." after "There are 1000 grams in a kilogram."). Answered by the base model itself,
the same chats pull the LoRA towards leaving text answers as they were.

Each conversation is answered turn by turn, every later question seeing the model's own earlier answers, many
conversations at a time (left-padded batches; at temperature 0 the same answers as one at a time). A reply cut
by `max_new_tokens` ends at its last full sentence; a reply with none ends the conversation there (the turns
before it are kept, a record with no turn left is dropped). Records with images are copied unchanged.

    mllm data distill-text data/instruct.json --model configs/model/smollm2.yaml --out data/instruct.distilled.json
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mllm.assistant import Assistant
from mllm.batch import Prompt, generate_prompts
from mllm.errors import MllmError

SENTENCE_END = re.compile(r"[.!?][\"')\]]*(?=\s|$)")


@dataclass
class DistillSummary:
    records: int  # records written
    text_records: int  # text-only records answered
    turns: int  # answers generated
    cut: int  # answers cut back to their last full sentence
    dropped_turns: int  # turns dropped after a reply without a full sentence
    dropped_records: int  # text-only records left with no turn


def last_sentence(text: str) -> str | None:
    """`text` up to the end of its last full sentence, or None when it has none."""
    ends = list(SENTENCE_END.finditer(text))
    return text[: ends[-1].end()].strip() if ends else None


def _turn_pairs(record: dict[str, Any], index: int) -> list[tuple[str, str]]:
    turns = record.get("conversations")
    if not isinstance(turns, list) or len(turns) < 2 or len(turns) % 2:
        raise MllmError(f"record {index} ({record.get('id')}): conversations: expected human/gpt pairs")
    pairs = []
    for human, gpt in zip(turns[::2], turns[1::2]):
        if human.get("from") != "human" or gpt.get("from") != "gpt":
            raise MllmError(f"record {index} ({record.get('id')}): conversations: expected human/gpt pairs")
        pairs.append((human["value"], gpt["value"]))
    return pairs


class _Conversation:
    """One text-only record being answered: its questions and the answers so far."""

    def __init__(self, index: int, questions: list[str]) -> None:
        self.index = index
        self.questions = questions
        self.answers: list[str] = []
        self.done = False

    def messages(self) -> list[dict[str, str]]:
        messages = []
        for question, answer in zip(self.questions, self.answers):
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        return [*messages, {"role": "user", "content": self.questions[len(self.answers)]}]


def distill_text_records(
    records: Sequence[dict[str, Any]],
    assistant: Assistant,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[dict[str, Any]], DistillSummary]:
    """`records` with every text-only record's answers replaced by `assistant`'s (see the module docstring).
    `progress(n)` is called after each batch with the number of answers it generated."""
    if batch_size < 1:
        raise MllmError("batch_size must be at least 1")
    chats = [
        _Conversation(i, [q for q, _ in _turn_pairs(r, i)]) for i, r in enumerate(records) if "image" not in r
    ]
    tokenizer = assistant.tokenizer
    cut = dropped_turns = turns = 0
    while pending := [c for c in chats if not c.done and len(c.answers) < len(c.questions)]:
        for start in range(0, len(pending), batch_size):
            batch = pending[start : start + batch_size]
            prompts = [Prompt(assistant.prepare(c.messages())[0][0].tolist(), None) for c in batch]
            replies = generate_prompts(assistant, prompts, max_new_tokens)
            turns += len(batch)
            for chat, reply in zip(batch, replies):
                if len(tokenizer(reply, add_special_tokens=False).input_ids) >= max_new_tokens - 1:
                    whole = last_sentence(reply)
                    cut += whole is not None and whole != reply
                    reply = whole or ""
                if not reply:
                    chat.done = True
                    dropped_turns += len(chat.questions) - len(chat.answers)
                    continue
                chat.answers.append(reply)
            if progress is not None:
                progress(len(batch))
    answered = {c.index: c for c in chats}
    out: list[dict[str, Any]] = []
    for index, record in enumerate(records):
        chat = answered.get(index)
        if chat is None:
            out.append(record)
        elif chat.answers:
            conversation = []
            for question, answer in zip(chat.questions, chat.answers):
                conversation += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
            out.append({**record, "conversations": conversation})
    summary = DistillSummary(
        records=len(out),
        text_records=len(chats),
        turns=turns,
        cut=cut,
        dropped_turns=dropped_turns,
        dropped_records=sum(not c.answers for c in chats),
    )
    return out, summary
