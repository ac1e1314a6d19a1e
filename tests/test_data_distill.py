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
from data_tools.llava import Record, write_records
from data_tools.schema import load_records
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


def _loaded(tmp_path: Path, records: list[dict]) -> list[Record]:
    """`records` as the command reads them (written, then loaded by the strict loader)."""
    write_records(records, tmp_path / "instruct.json")
    return load_records(tmp_path / "instruct.json")


def test_last_sentence() -> None:
    assert last_sentence("Paris is the capital. It is big") == "Paris is the capital."
    assert last_sentence('He said "yes." Then') == 'He said "yes."'
    assert last_sentence("Is it? Yes! No") == "Is it? Yes!"
    assert last_sentence("3.5 is a number") is None
    assert last_sentence("no end at all") is None


def test_answers_are_the_models_own_turn_by_turn_and_batched(tmp_path: Path) -> None:
    assistant = lively_assistant(seed=0)
    records = [
        _text_record("t1", "What is 2 + 2?", "And 3 + 3?"),
        IMAGE_RECORD,
        _text_record("t2", "Name a colour."),
        _text_record("t3", "Say hello.", "Again.", "Once more."),
        {
            "id": "t4",
            "conversations": [
                {"from": "system", "value": "Be brief."},
                *_text_record("", "Hi?")["conversations"],
            ],
        },
    ]
    tokens = 16
    out, summary = distill_text_records(
        _loaded(tmp_path, records), assistant, max_new_tokens=tokens, batch_size=2
    )
    assert IMAGE_RECORD in out and out.index(IMAGE_RECORD) == [r["id"] for r in out].index("img-1")
    expected_turns = 0
    for record in records:
        if "image" in record:
            continue
        system = [t for t in record["conversations"] if t["from"] == "system"]
        messages = [{"role": "system", "content": t["value"]} for t in system]
        kept = []
        for question in [t["value"] for t in record["conversations"] if t["from"] == "human"]:
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
        assert got[0]["conversations"][: len(system)] == system
        turns = got[0]["conversations"][len(system) :]
        assert [(h["value"], g["value"]) for h, g in zip(turns[::2], turns[1::2])] == kept
        assert all(g["value"] != "templated answer." for g in turns[1::2])
    assert summary.text_records == 4 and summary.turns == expected_turns
    # this seed's replies exercise each branch: a reply cut back to its sentence and kept (so the next
    # question is asked after it), and replies with no full sentence, whose records end or go
    assert summary.cut >= 1 and summary.dropped_records >= 1 and summary.records >= 2
    assert summary.records == len(out)


def test_a_system_turn_leads_every_prompt(tmp_path: Path) -> None:
    """The random tiny model never finishes a sentence after this system turn, so the prompt is checked here."""
    from data_tools.distill import _Conversation

    system = {"from": "system", "value": "Be brief."}
    record = {"id": "s", "conversations": [system, *_text_record("", "Hi?", "Again?")["conversations"]]}
    chat = _Conversation(0, _loaded(tmp_path, [record])[0])
    chat.answers.append("Hello.")
    assert chat.messages() == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi?"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Again?"},
    ]


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
    broken = {"id": "odd", "conversations": [{"from": "human", "value": "hi"}]}
    source.write_text(json.dumps([IMAGE_RECORD, broken], indent=1))
    with pytest.raises(MllmError, match=r"instruct\.json:\d+: record odd: conversations\[0\]\.from"):
        args.func(args)
