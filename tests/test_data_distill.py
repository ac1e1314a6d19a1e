"""`mllm data distill-text`: text-only chats answered again by a model turn by turn (each later question sees
the model's own earlier answers), batched with the answers of one at a time, cut at the last full sentence,
records with images untouched; and the command line around it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from serve_support import TINY_CONFIG, lively_assistant

from data_tools import cli
from data_tools.distill import distill_text_records, last_sentence
from mllm.errors import MllmError

IMAGE_RECORD = {
    "id": "img-1",
    "image": "a.png",
    "conversations": [
        {"from": "human", "value": "<image>\nWhat is it?"},
        {"from": "gpt", "value": "A cat."},
    ],
}


def _text_record(name: str, *questions: str) -> dict:
    turns = []
    for q in questions:
        turns += [{"from": "human", "value": q}, {"from": "gpt", "value": "templated answer."}]
    return {"id": name, "conversations": turns}


def test_last_sentence() -> None:
    assert last_sentence("Paris is the capital. It is big") == "Paris is the capital."
    assert last_sentence('He said "yes." Then') == 'He said "yes."'
    assert last_sentence("Is it? Yes! No") == "Is it? Yes!"
    assert last_sentence("3.5 is a number") is None
    assert last_sentence("no end at all") is None


def test_answers_are_the_models_own_turn_by_turn_and_batched() -> None:
    assistant = lively_assistant(seed=0)
    records = [
        _text_record("t1", "What is 2 + 2?", "And 3 + 3?"),
        IMAGE_RECORD,
        _text_record("t2", "Name a colour."),
        _text_record("t3", "Say hello.", "Again.", "Once more."),
    ]
    tokens = 16
    out, summary = distill_text_records(records, assistant, max_new_tokens=tokens, batch_size=2)
    assert IMAGE_RECORD in out and out.index(IMAGE_RECORD) == [r["id"] for r in out].index("img-1")
    expected_turns = 0
    for record in records:
        if "image" in record:
            continue
        messages, kept = [], []
        for question in [t["value"] for t in record["conversations"][::2]]:
            messages.append({"role": "user", "content": question})
            reply = assistant.chat(messages, max_new_tokens=tokens).strip()
            expected_turns += 1
            if len(assistant.tokenizer(reply, add_special_tokens=False).input_ids) >= tokens - 1:
                reply = last_sentence(reply) or ""
            if not reply:
                break
            kept.append((question, reply))
            messages.append({"role": "assistant", "content": reply})
        got = [r for r in out if r["id"] == record["id"]]
        if not kept:
            assert not got
            continue
        assert [
            (h["value"], g["value"])
            for h, g in zip(got[0]["conversations"][::2], got[0]["conversations"][1::2])
        ] == kept
        assert all(g["value"] != "templated answer." for g in got[0]["conversations"][1::2])
    assert summary.text_records == 3 and summary.turns == expected_turns
    # this seed's replies exercise each branch: a reply cut back to its sentence and kept (so the next
    # question is asked after it), and replies with no full sentence, whose records end or go
    assert summary.cut >= 1 and summary.dropped_records >= 1 and summary.records >= 2
    assert summary.records == len(out)


def test_bad_conversations_are_named() -> None:
    assistant = lively_assistant()
    broken = {"id": "odd", "conversations": [{"from": "human", "value": "hi"}]}
    with pytest.raises(MllmError, match=r"record 1 \(odd\): conversations"):
        distill_text_records([IMAGE_RECORD, broken], assistant)


def test_command_writes_the_records(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "instruct.json"
    source.write_text(json.dumps([IMAGE_RECORD, _text_record("t1", "What is 2 + 2?")]))
    out = tmp_path / "distilled.json"
    parser = argparse.ArgumentParser(prog="mllm")
    cli.register(parser.add_subparsers(dest="command"))
    argv = ["data", "distill-text", str(source), "--model", str(TINY_CONFIG), "--out", str(out)]
    args = parser.parse_args([*argv, "--max-new-tokens", "6"])
    assert args.func(args) == 0
    written = json.loads(out.read_text())
    assert written[0] == IMAGE_RECORD
    assert "wrote" in capsys.readouterr().out
    source.write_text("{not json")
    with pytest.raises(MllmError, match="instruct.json"):
        args.func(args)
