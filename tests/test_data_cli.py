"""Tests of the `mllm data` command line through `data_tools.cli.register`: help with examples, exit codes,
results on stdout, and the one-line error of the front door."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from data_tools import cli
from mllm.errors import MllmError


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mllm")
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.mark.parametrize(
    "command",
    [
        ["data"],
        ["data", "validate"],
        ["data", "stats"],
        ["data", "convert"],
        ["data", "convert", "captions"],
        ["data", "convert", "vqa"],
        ["data", "synth"],
        ["data", "count-questions"],
        ["data", "distill-text"],
    ],
)
def test_every_command_has_help_with_an_example(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _run([*command, "--help"])
    assert exit_info.value.code == 0
    assert "Example" in capsys.readouterr().out


def test_bare_data_prints_help_and_returns_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["data"]) == 2
    assert "synth" in capsys.readouterr().err


def test_synth_validate_stats_convert(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "shapes"
    assert (
        _run(["data", "synth", "--out", str(out), "--num-images", "12", "--seed", "5", "--no-progress"]) == 0
    )
    assert f"wrote 12 train images to {out}" in capsys.readouterr().out
    assert _run(["data", "validate", str(out / "instruct.json"), "--image-folder", str(out / "images")]) == 0
    assert "errors: 0" in capsys.readouterr().out
    plot = tmp_path / "len.png"
    assert _run(["data", "stats", str(out / "instruct.json"), "--plot", str(plot)]) == 0
    assert "whitespace words" in capsys.readouterr().out and plot.is_file()
    vqa = tmp_path / "vqa.jsonl"
    vqa.write_text(json.dumps({"image": "000001.png", "question": "Q?", "answer": "yes"}) + "\n")
    assert (
        _run(
            [
                "data",
                "convert",
                "vqa",
                str(vqa),
                "--out",
                str(tmp_path / "i.json"),
                "--answers",
                str(tmp_path / "a.jsonl"),
            ]
        )
        == 0
    )
    assert "converted 1 questions" in capsys.readouterr().out


def test_validate_exits_1_and_fix_writes_good_records(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "d.jsonl"
    good = {"id": "g", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}
    data.write_text(json.dumps(good) + "\n" + json.dumps({"id": "b", "conversations": []}) + "\n")
    fixed = tmp_path / "fixed.jsonl"
    assert _run(["data", "validate", str(data), "--fix", str(fixed)]) == 1
    out = capsys.readouterr().out
    assert f"{data}:2: record b: conversations: no turns" in out
    assert "images: not checked (pass --image-folder)" in out
    assert f"wrote 1 valid records (0 fixes applied) to {fixed}" in out
    assert [json.loads(x) for x in fixed.read_text().splitlines()] == [good]


def test_user_errors_are_mllm_errors(tmp_path: Path) -> None:
    with pytest.raises(MllmError, match="data file not found"):
        _run(["data", "stats", str(tmp_path / "nope.json")])
    with pytest.raises(MllmError, match="image folder not found"):
        _run(["data", "validate", str(tmp_path / "nope.json"), "--image-folder", str(tmp_path / "none")])
    with pytest.raises(MllmError, match="--count-repeated 2.0: must be in"):
        _run(
            [
                "data",
                "synth",
                "--out",
                str(tmp_path / "s"),
                "--num-images",
                "2",
                "--seed",
                "0",
                "--count-repeated",
                "2",
            ]
        )


def test_front_door_prints_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from serve.cli import main

    assert main(["data", "stats", str(tmp_path / "nope.json")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"mllm data: error: {tmp_path / 'nope.json'}: data file not found"]
