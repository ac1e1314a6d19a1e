"""Self-distilled text chats: the text-only records of a LLaVA instruction file answered again by a model
(normally the base LLM the assistant is trained from), greedily, as `mllm chat` would answer them.

Text-only chats are mixed into visual instruction data so the LLM keeps its text skills. With hand-written
answers, training also teaches their wording and facts, which leaks into neighbouring questions ("There are
1000 years in a century." after "There are 1000 grams in a kilogram."). Answered by the base model itself,
the same chats pull the LoRA towards leaving text answers as they were.

Each conversation is answered turn by turn, every later question seeing the model's own earlier answers, many
conversations at a time (left-padded batches; at temperature 0 the same answers as one at a time). A reply cut
by `max_new_tokens` ends at its last full sentence; a reply with none ends the conversation there (the turns
before it are kept, a record with no turn left is dropped). A leading system turn is kept and answered under.
Records come from `data_tools.schema.load_records`: structurally valid (human and gpt turns alternate), with
the fixes `mllm data validate --fix` applies; records with images are copied as they are there.

    mllm data distill-text data/instruct.json --model configs/model/smollm2.yaml --out data/instruct.distilled.json
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from data_tools.llava import GPT, HUMAN, SYSTEM, Record
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


class _Conversation:
    """One text-only record being answered: its system prompt (if any), questions and the answers so far."""

    def __init__(self, index: int, record: Record) -> None:
        self.index = index
        self.system = [t for t in record.turns if t.role == SYSTEM]
        self.questions = [t.value for t in record.turns if t.role == HUMAN]
        self.answers: list[str] = []
        self.done = False

    def messages(self) -> list[dict[str, str]]:
        messages = [{"role": "system", "content": t.value} for t in self.system]
        for question, answer in zip(self.questions, self.answers):
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        return [*messages, {"role": "user", "content": self.questions[len(self.answers)]}]


def distill_text_records(
    records: Sequence[Record],
    assistant: Assistant,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[dict[str, Any]], DistillSummary]:
    """The records to write (JSON objects, as `load_records` fixed them), every text-only record's answers
    replaced by `assistant`'s (see the module docstring). `progress(n)` is called after each batch with the
    number of answers it generated."""
    if batch_size < 1:
        raise MllmError("batch_size must be at least 1")
    chats = [_Conversation(i, r) for i, r in enumerate(records) if not r.images]
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
            out.append(record.data)
        elif chat.answers:
            conversation = [{"from": SYSTEM, "value": t.value} for t in chat.system]
            for question, answer in zip(chat.questions, chat.answers):
                conversation += [{"from": HUMAN, "value": question}, {"from": GPT, "value": answer}]
            out.append({**record.data, "conversations": conversation})
    summary = DistillSummary(
        records=len(out),
        text_records=len(chats),
        turns=turns,
        cut=cut,
        dropped_turns=dropped_turns,
        dropped_records=sum(not c.answers for c in chats),
    )
    return out, summary
