"""Pieces of the release recipe that need no training: the text-skills judge and its shipped list, and the
asset install (size budget, resume state left out)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mllm.errors import MllmError
from train.evaluate import VQAItem
from train.release import install, write_answers
from train.text_skills import QUESTIONS_FILE, is_correct, load_questions


def test_text_skills_list_and_judge() -> None:
    questions, max_new_tokens = load_questions()
    assert len(questions) == 20 and max_new_tokens > 0
    assert len({q["question"] for q in questions}) == 20
    assert is_correct("The capital of France is Paris.", ["Paris"])
    assert not is_correct("Comparison is hard.", ["Paris"])
    assert is_correct("A week is 7 days.", ["seven", "7"]) and not is_correct("It is 17.", ["7"])
    assert json.loads(QUESTIONS_FILE.read_text())["about"]


def test_install_copies_without_state_and_checks_size(tmp_path: Path) -> None:
    checkpoint = tmp_path / "final"
    (checkpoint / "state").mkdir(parents=True)
    (checkpoint / "mllm.json").write_text("{}")
    (checkpoint / "state" / "optimizer_rank0.pt").write_bytes(b"x")
    target = tmp_path / "assets" / "default"
    target.parent.mkdir()
    install(checkpoint, target)
    assert (target / "mllm.json").is_file() and not (target / "state").exists()
    (checkpoint / "big.bin").write_bytes(b"\0" * (41 * 2**20))
    with pytest.raises(MllmError, match="over the 40 MB budget"):
        install(checkpoint, target)


def test_answers_file_marks_each_question_as_the_score_counts_it(tmp_path: Path) -> None:
    items = [
        VQAItem("q1", Path("images/000001.png"), "How many circles?", "2", "count"),
        VQAItem("q2", Path("images/000002.png"), "Where is the red star?", "top left", "position"),
    ]
    write_answers(tmp_path / "answers" / "test.jsonl", items, ["Two.", "top"])
    rows = [json.loads(line) for line in (tmp_path / "answers" / "test.jsonl").read_text().splitlines()]
    assert [(r["question_id"], r["gold"], r["answer"], r["correct"]) for r in rows] == [
        ("q1", "2", "Two.", True),
        ("q2", "top left", "top", False),
    ]
    assert rows[1]["image"] == "000002.png" and rows[1]["type"] == "position"
