"""Tests of `mllm data convert`: captions (CSV / JSONL) -> alignment records and VQA rows -> instruction
records, question and gold files; round trips through validation; errors name FILE:LINE, row and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from data_tools.convert import convert_captions, convert_vqa
from data_tools.schema import load_records
from data_tools.validate import validate_file
from mllm.errors import MllmError

SUFFIX = "Answer the question using a single word or number."


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    for name in ("a.png", "b.png", "sub/c.png"):
        Image.new("RGB", (4, 4), (10, 20, 30)).save(folder / name)
    return folder


def test_captions_csv_round_trip(tmp_path: Path, images: Path) -> None:
    source = tmp_path / "caps.csv"
    source.write_text(
        'image,caption\na.png,A red square.\n"sub/c.png","A cat, sitting\non a mat."\nb.png,Blue.\n'
    )
    out = tmp_path / "align.json"
    assert convert_captions(source, out) == 3
    records = load_records(out)
    assert [r.images for r in records] == [("a.png",), ("sub/c.png",), ("b.png",)]
    assert [r.id for r in records] == ["caps-000001", "caps-000002", "caps-000003"]
    assert records[1].turns[1].value == "A cat, sitting\non a mat."
    assert all(r.turns[0].value.startswith("<image>\n") and len(r.turns) == 2 for r in records)
    assert validate_file(out, images).ok
    again = tmp_path / "again.json"
    convert_captions(source, again)
    assert again.read_bytes() == out.read_bytes()  # deterministic prompt choice


def test_captions_jsonl_keeps_ids_and_custom_keys(tmp_path: Path, images: Path) -> None:
    source = tmp_path / "caps.jsonl"
    source.write_text(
        json.dumps({"id": "x1", "file": "a.png", "text": "Red."})
        + "\n\n"
        + json.dumps({"id": "x2", "file": "b.png", "text": "Blue."})
        + "\n"
    )
    out = tmp_path / "align.jsonl"
    assert convert_captions(source, out, image_key="file", caption_key="text") == 2
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["x1", "x2"] and rows[1]["conversations"][1]["value"] == "Blue."
    assert validate_file(out, images).ok


def test_captions_errors_name_line_row_and_field(tmp_path: Path) -> None:
    source = tmp_path / "caps.csv"
    source.write_text("image,caption\na.png,Fine.\nb.png,\n")
    with pytest.raises(MllmError, match=r"caps\.csv:3: row 2: caption: empty"):
        convert_captions(source, tmp_path / "out.json")
    assert not (tmp_path / "out.json").exists()
    source = tmp_path / "caps.jsonl"
    source.write_text('{"image": "a.png", "caption": "x"}\n{"caption": "y"}\n')
    with pytest.raises(MllmError, match=r"caps\.jsonl:2: row 2: image: missing"):
        convert_captions(source, tmp_path / "out.json")
    source.write_text('{"image": "a.png", "caption": "x"}\n{"image": \n')
    with pytest.raises(MllmError, match=r"caps\.jsonl:2: row 2: invalid JSON at column 11"):
        convert_captions(source, tmp_path / "out.json")


def test_vqa_to_instruct_questions_and_answers(tmp_path: Path, images: Path) -> None:
    source = tmp_path / "vqa.jsonl"
    rows = [
        {"image": "a.png", "question": "What color?", "answer": "red", "type": "color", "question_id": "q1"},
        {"image": "b.png", "question": f"How many?\n{SUFFIX}", "answer": 2},
    ]
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out, questions, answers = tmp_path / "instruct.json", tmp_path / "q.jsonl", tmp_path / "a.jsonl"
    assert convert_vqa(source, out, questions, answers) == 2
    assert [json.loads(x) for x in questions.read_text().splitlines()] == [
        {"question_id": "q1", "image": "a.png", "text": f"What color?\n{SUFFIX}"},
        {"question_id": "vqa-000002", "image": "b.png", "text": f"How many?\n{SUFFIX}"},
    ]
    assert [json.loads(x) for x in answers.read_text().splitlines()] == [
        {"question_id": "q1", "answer": "red", "type": "color"},
        {"question_id": "vqa-000002", "answer": "2", "type": "other"},
    ]
    records = load_records(out)
    assert (
        records[0].turns[0].value == f"<image>\nWhat color?\n{SUFFIX}" and records[0].turns[1].value == "red"
    )
    assert validate_file(out, images).ok


def test_vqa_needs_an_output_and_unique_ids(tmp_path: Path) -> None:
    source = tmp_path / "vqa.csv"
    source.write_text("image,question,answer,id\na.png,Q?,yes,7\nb.png,R?,no,7\n")
    with pytest.raises(MllmError, match="name at least one output"):
        convert_vqa(source)
    with pytest.raises(
        MllmError, match=r"vqa\.csv:3: row 2: question_id: duplicate id '7' \(first at line 2\)"
    ):
        convert_vqa(source, questions=tmp_path / "q.jsonl")
