"""Tests of the balanced count questions (`mllm data count-questions`): every answer 0, 1, 2, 3+ gets the same
number of questions, split between colours and shapes, each answer recomputed from scenes.jsonl by reading
the question's colour or shape word; deterministic; and bad input named by file and line."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from data_tools import cli
from data_tools.synth.count_questions import BUCKETS, balanced_count_questions, write_count_questions
from data_tools.synth.world import COLORS, SHAPES
from data_tools.synth.writer import SynthConfig, synthesize
from mllm.errors import MllmError

PLURALS = {f"{shape}s": shape for shape in SHAPES}


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("test-split")
    synthesize(SynthConfig(out=out, num_images=120, seed=1, split="test", image_size=96, progress=False))
    return out


def _counted(text: str) -> tuple[str, str]:
    """("color" or "shape", the word) that a count question asks about, read off its words."""
    words = text.split("\n")[0].rstrip(".?").split()
    colors = [w for w in words if w in COLORS]
    shapes = [PLURALS[w] for w in words if w in PLURALS]
    assert len(colors) + len(shapes) == 1, text
    return ("color", colors[0]) if colors else ("shape", shapes[0])


def test_balanced_by_answer_and_answers_agree_with_scenes(
    split: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser(prog="mllm")
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["data", "count-questions", str(split), "--per-answer", "8"])
    assert args.func(args) == 0
    assert "count 2: 8" in capsys.readouterr().out
    questions = _jsonl(split / "count_questions.jsonl")
    gold = {row["question_id"]: row for row in _jsonl(split / "count_answers.jsonl")}
    scenes = {row["image"]: row for row in _jsonl(split / "scenes.jsonl")}
    assert len(gold) == len(questions) == 4 * 8
    kinds: Counter[tuple[str, str]] = Counter()
    for question in questions:
        answer = gold[question["question_id"]]
        key, word = _counted(question["text"])
        n = sum(obj[key] == word for obj in scenes[question["image"]]["objects"])
        assert answer["answer"] == str(n)
        assert answer["type"] == BUCKETS[min(n, 3)]
        assert (split / "images" / question["image"]).is_file()
        kinds[(answer["type"], key)] += 1
    # the natural mix would be about half zeros: here each answer has its 8, of colours and of shapes
    for bucket in BUCKETS:
        assert kinds[(bucket, "color")] + kinds[(bucket, "shape")] == 8
        assert kinds[(bucket, "color")] > 0 and kinds[(bucket, "shape")] > 0


def test_deterministic_and_short_buckets_take_what_there_is(split: Path, tmp_path: Path) -> None:
    scenes = split / "scenes.jsonl"
    first = balanced_count_questions(scenes, 6, seed=3)
    assert first == balanced_count_questions(scenes, 6, seed=3)
    assert first != balanced_count_questions(scenes, 6, seed=4)
    assert [q.text for q in first] != [q.text for q in balanced_count_questions(scenes, 6, 3, "heldout")]
    few = tmp_path / "few"
    few.mkdir()
    rows = _jsonl(scenes)[:3]
    (few / "scenes.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    made = write_count_questions(few, per_answer=1000)
    # 3 images x 12 colours and shapes: every one of those questions, none twice
    assert sum(made.values()) == 3 * (len(COLORS) + len(SHAPES))
    assert len(_jsonl(few / "count_answers.jsonl")) == sum(made.values())


def test_bad_input_names_the_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(MllmError, match="no scenes file"):
        write_count_questions(tmp_path, 5)
    (tmp_path / "scenes.jsonl").write_text('{"image": "a.png", "objects": []}\n{"image": "b.png"}\n')
    with pytest.raises(MllmError, match=r"scenes.jsonl: line 2: .*objects"):
        write_count_questions(tmp_path, 5)
    (tmp_path / "scenes.jsonl").write_text('{"image": "a.png", "objects": [3]}\n')
    with pytest.raises(MllmError, match=r"scenes.jsonl: line 1: field objects"):
        write_count_questions(tmp_path, 5)
    (tmp_path / "scenes.jsonl").write_text('{"image": "a.png", "objects": []}\nnot json\n')
    with pytest.raises(MllmError, match=r"scenes.jsonl:2: invalid JSON"):
        write_count_questions(tmp_path, 5)
    with pytest.raises(MllmError, match="--per-answer 0"):
        write_count_questions(tmp_path, 0)
    assert not (tmp_path / "count_questions.jsonl").exists()
