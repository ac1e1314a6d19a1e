"""`mllm vqa` and `mllm eval` through the front door: one question, a questions file with bad lines (error
records, the run goes on), resuming, batch size B equal to batch size 1, and scoring as a table or JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from serve_support import lively_checkpoint, write_images

from serve.cli import main


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return lively_checkpoint(tmp_path_factory.mktemp("ckpt") / "lively")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("vqa")
    write_images(folder / "images")
    (folder / "images" / "broken.png").write_bytes(b"\x89PNG not really")
    lines = [
        {"question_id": "q1", "image": "red.png", "text": "What color is the object?"},
        {"question_id": "q2", "image": "blue.png", "text": "Which shape is blue?"},
        "{this is not json",
        {"question_id": "q3", "image": "missing.png", "text": "Is it there?"},
        {"question_id": "q4", "image": "broken.png", "text": "What is this?"},
        {"question_id": "q5", "text": 7},
        {"question_id": 6, "image": "split.png", "text": "How many colors are there?"},
        {"question_id": "q7", "image": ["red.png", "green.png"], "text": "Compare the two pictures, please."},
        {"question_id": "q8", "text": "A question without an image."},
    ]
    (folder / "questions.jsonl").write_text(
        "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n"
    )
    return folder


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _run_file(checkpoint: Path, data: Path, out: Path, batch: int) -> int:
    return main(
        [
            "vqa",
            "--model",
            str(checkpoint),
            "--questions",
            str(data / "questions.jsonl"),
            "--image-folder",
            str(data / "images"),
            "--answers",
            str(out),
            "--batch-size",
            str(batch),
            "--max-new-tokens",
            "8",
            "--no-progress",
        ]
    )


def test_single_question(checkpoint: Path, data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "vqa",
            "--model",
            str(checkpoint),
            "--image",
            str(data / "images" / "red.png"),
            "--question",
            "What color is the object?",
            "--max-new-tokens",
            "8",
        ]
    )
    assert code == 0
    assert capsys.readouterr().out.strip() != ""


def test_questions_file_errors_resume_and_batching(
    checkpoint: Path, data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    one, many = tmp_path / "b1.jsonl", tmp_path / "b3.jsonl"
    assert _run_file(checkpoint, data, one, 1) == 0
    records = _read(one)
    good = {str(r["question_id"]): r for r in records if "error" not in r}
    errors = [r for r in records if "error" in r]
    assert set(good) == {"q1", "q2", "6", "q7", "q8"}
    assert {r["question_id"] for r in errors} == {None, "q3", "q4", "q5"}
    by_line = {r["metadata"]["line"]: r["error"] for r in errors}
    assert "questions.jsonl:3" in by_line[3] and "invalid JSON" in by_line[3]
    assert "question_id 'q3'" in by_line[4] and "missing.png" in by_line[4]
    assert "question_id 'q4'" in by_line[5] and "broken.png" in by_line[5]
    assert "field text" in by_line[6]
    assert "missing.png" in caplog.text
    for record in good.values():
        assert set(record) >= {"question_id", "prompt", "text", "answer_id", "model_id"}
        assert record["model_id"] == "tiny-test"
    assert good["6"]["question_id"] == 6  # ids keep their JSON type

    assert _run_file(checkpoint, data, many, 3) == 0
    batched = {str(r["question_id"]): r["text"] for r in _read(many) if "error" not in r}
    assert batched == {qid: r["text"] for qid, r in good.items()}
    assert len({r["text"] for r in good.values()}) > 1

    # resume: keep two answers and a torn line; only the others are answered again, errors are retried
    kept = [json.dumps(good["q1"]), json.dumps(good["q2"])]
    one.write_text("\n".join(kept) + '\n{"question_id": "q7", "te')
    assert _run_file(checkpoint, data, one, 2) == 0
    resumed = _read(one)
    assert [r["answer_id"] for r in resumed[:2]] == [good["q1"]["answer_id"], good["q2"]["answer_id"]]
    answered = [str(r["question_id"]) for r in resumed[2:] if "error" not in r]
    assert sorted(answered) == ["6", "q7", "q8"]
    assert {str(r["question_id"]): r["text"] for r in resumed if "error" not in r} == batched


def test_eval_table_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    answers = tmp_path / "answers.jsonl"
    gold = tmp_path / "gold.jsonl"
    answers.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"question_id": "a", "text": "Red."},
                {"question_id": "b", "text": "two"},
                {"question_id": "c", "text": "", "error": "unreadable image"},
                {"question_id": "d", "text": "Big"},
            ]
        )
        + "\n"
    )
    gold.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"question_id": "a", "answer": "red", "type": "color"},
                {"question_id": "b", "answer": "3", "type": "count"},
                {"question_id": "c", "answer": "yes", "type": "exist"},
                {"question_id": "d", "answer": "large", "type": "size"},
            ]
        )
        + "\n"
    )
    assert main(["eval", "--answers", str(answers), "--gold", str(gold), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result == {"overall": 0.5, "color": 1.0, "count": 0.0, "exist": 0.0, "size": 1.0}
    assert main(["eval", "--answers", str(answers), "--gold", str(gold)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["type", "correct", "total", "accuracy"]
    assert table[-1].split() == ["overall", "2", "4", "50.0%"]


def test_user_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gold = tmp_path / "gold.jsonl"
    gold.write_text('{"question_id": "a", "answer": "red"}\n{"question_id": "b"}\n')
    answers = tmp_path / "answers.jsonl"
    answers.write_text('{"question_id": "a", "text": "red"}\n')
    assert main(["eval", "--answers", str(answers), "--gold", str(gold)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"mllm eval: error: {gold}:2: field answer: expected a string or number"
    assert main(["vqa", "--model", "configs/model/tiny-test.yaml", "--questions", "q.jsonl"]) == 1
    assert "--questions needs --image-folder and --answers" in capsys.readouterr().err
    assert main(["vqa", "--model", str(tmp_path / "nope"), "--question", "hi"]) == 1
    assert "not found" in capsys.readouterr().err


def test_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("vqa", "eval", "serve", "api", "export"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        assert f"mllm {command}" in capsys.readouterr().out
