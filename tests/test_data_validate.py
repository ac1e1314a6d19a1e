"""Tests of LLaVA reading and `mllm data validate`: each error kind with its message and FILE:LINE: record ID:
field location, the `<image>` marker fix, the --fix round trip and the strict loader."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from data_tools import validate as validate_module
from data_tools.llava import read_source_records, write_records
from data_tools.schema import load_records
from data_tools.tokens import Lengths
from data_tools.validate import print_report, validate_file, write_fixed
from mllm.errors import MllmError


def _record(
    rid: str, image: Any = "a.png", first: str = "<image>\nWhat is this?", reply: str = "A cat.", **extra: Any
) -> dict[str, Any]:
    record: dict[str, Any] = {"id": rid}
    if image is not None:
        record["image"] = image
    record["conversations"] = [{"from": "human", "value": first}, {"from": "gpt", "value": reply}]
    record.update(extra)
    return record


def _write_list(path: Path, records: list[Any]) -> Path:
    """A JSON list with record i on line i + 2."""
    path.write_text("[\n" + ",\n".join(json.dumps(r) for r in records) + "\n]\n")
    return path


def _write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(folder / "a.png")
    Image.new("RGB", (8, 8), (0, 255, 0)).save(folder / "b.png")
    Image.new("RGB", (100, 100), (0, 0, 255)).save(folder / "big.png")
    (folder / "text.png").write_text("not an image at all")
    noisy = Image.frombytes("RGB", (64, 64), random.Random(0).randbytes(64 * 64 * 3))
    noisy.save(folder / "noisy.png")
    (folder / "truncated.png").write_bytes((folder / "noisy.png").read_bytes()[:3000])
    return folder


def _only_error(report: validate_module.ValidationReport) -> str:
    assert len(report.errors) == 1, report.errors
    return report.errors[0]


def test_json_list_lines_and_clean_file(tmp_path: Path, images: Path) -> None:
    path = _write_list(
        tmp_path / "d.json",
        [_record("r1"), _record("r2", image=["a.png", "b.png"], first="<image>\n<image>\nCompare.")],
    )
    assert [s.line for s in read_source_records(path)] == [2, 3]
    report = validate_file(path, images)
    assert report.ok and report.records == 2 and report.images == 3 and report.turns == 4
    assert len(report.valid) == 2


def test_json_syntax_error_in_list_has_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text('[\n{"id": "r1", "conversations": []},\n{"id": "r2" "conversations": []}\n]\n')
    report = validate_file(path)
    assert (
        report.errors[-1] == f"{path}:3: record #2: json: invalid JSON at column 13: Expecting ',' delimiter"
    )
    assert report.errors_by_kind["json"] == 1


def test_jsonl_syntax_error_is_per_line(tmp_path: Path, images: Path) -> None:
    path = _write_jsonl(
        tmp_path / "d.jsonl", [json.dumps(_record("r1")), '{"id": "r2", ', json.dumps(_record("r3"))]
    )
    report = validate_file(path, images)
    assert _only_error(report).startswith(f"{path}:2: record #2: json: invalid JSON at column 14: ")
    assert len(report.valid) == 2


@pytest.mark.parametrize(
    ("record", "kind", "message"),
    [
        (
            {"id": "r1", "image": "a.png"},
            "missing_field",
            "record r1: conversations: required field is missing",
        ),
        (
            {"image": "a.png", "conversations": _record("x")["conversations"]},
            "missing_field",
            "record #2: id: required field is missing",
        ),
        (_record("r1", image=5), "bad_type", "record r1: image: expected a path or a list of paths, got int"),
        (
            {"id": "r1", "conversations": "hi"},
            "bad_type",
            "record r1: conversations: expected a list of turns, got string",
        ),
        (
            {"id": "r1", "conversations": [{"from": "human"}, {"from": "gpt", "value": "x"}]},
            "missing_field",
            "record r1: conversations[0].value: required field is missing",
        ),
        (["not", "an", "object"], "bad_type", "record #2: record: expected an object, got list"),
        (
            _record(
                "r1",
                image=None,
                first="Hi",
                reply="Hello",
                conversations=[{"from": "gpt", "value": "Hi"}, {"from": "human", "value": "Hello"}],
            ),
            "bad_role",
            "record r1: conversations[0].from: expected 'human' at the start, got 'gpt'",
        ),
        (
            {
                "id": "r1",
                "conversations": [{"from": "human", "value": "a"}, {"from": "system", "value": "b"}],
            },
            "bad_role",
            "record r1: conversations[1].from: expected 'gpt' after a human turn, got 'system' "
            "(a system turn may only come first)",
        ),
        (
            {"id": "r1", "conversations": [{"from": "human", "value": "a"}, {"from": "robot", "value": "b"}]},
            "bad_role",
            "record r1: conversations[1].from: unknown role 'robot'; valid: human, gpt, system",
        ),
        (
            {"id": "r1", "conversations": [{"from": "human", "value": "a"}]},
            "bad_role",
            "record r1: conversations[0].from: conversation ends with a human turn (no reply to learn from)",
        ),
        (_record("r1", reply="  "), "empty_turn", "record r1: conversations[1].value: empty gpt turn"),
        (
            _record("r1", image=["a.png", "b.png"]),
            "image_marker",
            "record r1: conversations: 1 <image> marker for 2 images",
        ),
        (
            _record("r1", image=None),
            "image_marker",
            "record r1: conversations: 1 <image> marker for 0 images",
        ),
        (
            _record("r1", reply="<image> here"),
            "image_marker",
            "record r1: conversations[1].value: <image> marker in a gpt turn; markers belong in human turns",
        ),
        (
            _record("r1", image="../outside.png"),
            "image_path",
            "record r1: image: path '../outside.png' escapes",
        ),
        (_record("r1", image="/etc/passwd"), "image_path", "record r1: image: absolute path '/etc/passwd'"),
        (_record("r1", image="nope.png"), "image_missing", "record r1: image: image file not found: "),
        (
            _record("r1", image="text.png"),
            "image_invalid",
            "record r1: image: not an image (format not recognized)",
        ),
        (_record("r1", image="truncated.png"), "image_invalid", "record r1: image: image does not decode"),
        (
            _record("r1", image="big.png"),
            "image_too_large",
            "record r1: image: image is 100x100 = 10000 pixels, over the limit of 5000 (--max-pixels)",
        ),
    ],
)
def test_each_error_kind_has_location_field_and_message(
    tmp_path: Path, images: Path, record: Any, kind: str, message: str
) -> None:
    path = _write_list(tmp_path / "d.json", [_record("ok"), record])
    report = validate_file(path, images, max_pixels=5000)
    line = _only_error(report)
    assert line.startswith(f"{path}:3: {message}"), line
    assert report.errors_by_kind == {kind: 1}
    assert [r.id for r in report.valid] == ["ok"]


def test_leading_system_turn_and_int_id_are_valid(tmp_path: Path) -> None:
    record = {
        "id": 7,
        "conversations": [
            {"from": "system", "value": "Be brief."},
            {"from": "human", "value": "Hi"},
            {"from": "gpt", "value": "Hello"},
        ],
    }
    report = validate_file(_write_list(tmp_path / "d.json", [record]))
    assert report.ok and report.valid[0].id == "7"


def test_missing_marker_is_fixed_not_an_error(tmp_path: Path, images: Path) -> None:
    path = _write_list(tmp_path / "d.json", [_record("r1", first="What is this?")])
    report = validate_file(path, images)
    assert report.ok and report.errors == []
    assert report.fixes == [
        f"{path}:2: record r1: conversations[0].value: prepended the missing <image> marker "
        "for the record's one image"
    ]
    assert report.valid[0].turns[0].value == "<image>\nWhat is this?"


def test_fix_round_trip_writes_valid_and_fixed_records(tmp_path: Path, images: Path) -> None:
    good, unmarked, bad = (
        _record("r1"),
        _record("r2", first="Where?", extra="kept"),
        _record("r3", image="nope.png"),
    )
    path = _write_list(tmp_path / "d.json", [good, unmarked, bad])
    report = validate_file(path, images)
    assert not report.ok and report.errors_by_kind == {"image_missing": 1}
    out = tmp_path / "fixed.jsonl"
    assert write_fixed(report, out) == 2
    again = validate_file(out, images)
    assert again.ok and again.fixes == [] and again.records == 2
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0] == good
    assert rows[1]["conversations"][0]["value"] == "<image>\nWhere?" and rows[1]["extra"] == "kept"
    assert unmarked["conversations"][0]["value"] == "Where?"  # the input dict is not modified


def test_duplicate_ids_are_warnings(tmp_path: Path, images: Path) -> None:
    path = _write_list(tmp_path / "d.json", [_record("r1"), _record("r1")])
    report = validate_file(path, images)
    assert report.ok
    assert report.warnings == [f"{path}:3: record r1: id: duplicate id (first at line 2)"]


def test_too_long_with_a_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fake(records: list[Any], model: str | None) -> Lengths:
        return Lengths([10 * (i + 1) for i in range(len(records))], "tokens", f"fake {model}", context=15)

    monkeypatch.setattr(validate_module, "measure_lengths", fake)
    path = _write_list(
        tmp_path / "d.json", [_record("r1", image=None, first="Hi"), _record("r2", image=None, first="Yo")]
    )
    report = validate_file(path, model="tiny")
    assert (
        _only_error(report)
        == f"{path}:3: record r2: conversations: 20 tokens, over the model's context of 15"
    )
    assert [r.id for r in report.valid] == ["r1"]


def test_summary_counts_errors_by_kind(
    tmp_path: Path, images: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write_list(
        tmp_path / "d.json",
        [_record("r1", image="nope.png"), _record("r2", image="x/../../y.png"), _record("r3", first="Q?")],
    )
    report = validate_file(path, images)
    print_report(report, __import__("sys").stdout)
    out = capsys.readouterr().out
    assert f"{path}: 3 records (1 valid), 3 images, 6 turns" in out
    assert "errors: 2 (image_path 1, image_missing 1)" in out
    assert "fixes: 1 (image_marker 1)" in out
    assert "(fixed)" in out


def test_bom_empty_list_and_trailing_comma(tmp_path: Path) -> None:
    empty = tmp_path / "e.json"
    empty.write_text("\ufeff[ ]\n")
    assert validate_file(empty).records == 0
    trailing = tmp_path / "t.json"
    trailing.write_text('[\n{"id": "a"},\n]\n')
    report = validate_file(trailing)
    assert (
        report.errors[-1]
        == f"{trailing}:3: record #2: json: invalid JSON at column 1: trailing comma before ']'"
    )


def test_single_object_json_file_is_explained(tmp_path: Path) -> None:
    path = tmp_path / "one.json"
    path.write_text(json.dumps(_record("r1"), indent=2))
    report = validate_file(path)
    assert report.errors == [
        f"{path}:1: record #1: json: the file holds one JSON object over several lines; "
        "expected a JSON list of records, or JSONL with one record a line"
    ]


def test_nul_in_image_path_is_a_path_error(tmp_path: Path, images: Path) -> None:
    report = validate_file(_write_list(tmp_path / "d.json", [_record("r1", image="a\u0000.png")]), images)
    assert report.errors_by_kind == {"image_path": 1}


def test_load_records_raises_with_location(tmp_path: Path) -> None:
    path = _write_list(
        tmp_path / "d.json", [_record("r1", image=None, first="Hi"), {"id": "r2", "conversations": []}]
    )
    with pytest.raises(
        MllmError, match=r"d\.json:3: record r2: conversations: no turns; run `mllm data validate"
    ):
        load_records(path)
    with pytest.raises(MllmError, match="data file not found"):
        load_records(tmp_path / "missing.json")


def test_write_records_json_and_jsonl_read_back(tmp_path: Path) -> None:
    records = [_record(f"r{i}", image=None, first="Q") for i in range(3)]
    for name in ("out.json", "out.jsonl"):
        write_records(records, tmp_path / name)
        assert [s.data for s in read_source_records(tmp_path / name)] == records
