"""Bad input gives one clear line and loses nothing (issue 7): images, data records, broken checkpoints and user
errors of every `mllm` subcommand. Complements tests/test_core_images.py (empty, text-as-PNG, truncated PNG,
pixel limit, every mode, GIF, EXIF), tests/test_core_checkpoint.py (the library-level checkpoint errors),
tests/test_data_validate.py and test_data_tokens.py (each record error kind; too long for a real model's
context) and tests/test_core_cli.py (`mllm chat` with an unknown model or a missing image)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from serve_support import TINY_CONFIG

from data_tools.validate import validate_file
from mllm.checkpoint import save_checkpoint
from mllm.config import load_model_config
from mllm.errors import MllmError
from mllm.images import load_image
from mllm.model import MultimodalModel
from serve.cli import main

REPO = Path(__file__).resolve().parent.parent


def jpeg_bytes(size: tuple[int, int] = (64, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise(size, 60).convert("RGB").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def one_error_line(err: str, command: str) -> str:
    """The stderr of a failed command holds exactly one `mllm COMMAND: error:` line and no traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith(f"mllm {command}: error: ")]
    assert len(lines) == 1, err
    return lines[0]


def test_truncated_jpeg_and_jpeg_named_png(tmp_path: Path) -> None:
    data = jpeg_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(MllmError, match="cut.jpg: corrupt or truncated image"):
        load_image(path)
    disguised = tmp_path / "photo.png"  # the content decides, not the name
    disguised.write_bytes(data)
    assert load_image(disguised).size == (64, 64)


def test_huge_image_is_refused_by_mllm_chat(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    huge = tmp_path / "huge.png"
    Image.new("1", (10000, 10000)).save(huge)  # 100 megapixels, over the 40 M default limit
    assert main(["chat", "--model", str(TINY_CONFIG), "--message", "hi", "--image", str(huge)]) == 1
    line = one_error_line(capsys.readouterr().err, "chat")
    assert (
        "huge.png: image is 10000x10000, over the limit of" in line
        or "huge.png: image is over the limit" in line
    )


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    return save_checkpoint(MultimodalModel.build(load_model_config(TINY_CONFIG)), tmp_path / "ckpt")


def _edit_meta(folder: Path, **changes: object) -> None:
    meta = json.loads((folder / "mllm.json").read_text())
    for key, value in changes.items():
        if key == "projector_type":
            meta["config"]["projector"]["type"] = value
        else:
            meta[key] = value
    (folder / "mllm.json").write_text(json.dumps(meta))


BROKEN = {
    "truncated": (
        lambda f: (f / "projector.safetensors").write_bytes(b"\x10\x00"),
        "projector.safetensors: cannot read safetensors",
    ),
    "missing": (lambda f: (f / "projector.safetensors").unlink(), "projector.safetensors: file is missing"),
    "incompatible": (
        lambda f: _edit_meta(f, projector_type="linear"),
        "projector.safetensors: does not fit the model",
    ),
    "version": (
        lambda f: _edit_meta(f, format_version=99),
        "mllm.json: field format_version: 99 is not supported",
    ),
    "bad-json": (lambda f: (f / "mllm.json").write_text('{"format": '), "mllm.json: invalid JSON at line 1"),
    "no-vision": (
        lambda f: __import__("shutil").rmtree(f / "vision"),
        "vision: folder is missing or has no config.json",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_checkpoint_is_one_line(
    case: str, checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    breaks, message = BROKEN[case]
    breaks(checkpoint)
    assert main(["chat", "--model", str(checkpoint), "--message", "hi"]) == 1
    line = one_error_line(capsys.readouterr().err, "chat")
    assert message in line and str(checkpoint) in line, line


def test_broken_checkpoint_real_process(checkpoint: Path) -> None:
    """The installed entry point itself: one line on stderr, no traceback, exit code 1."""
    (checkpoint / "projector.safetensors").write_bytes(b"\x10\x00")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "serve.cli", "chat", "--model", str(checkpoint), "--message", "hi"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    line = one_error_line(result.stderr, "chat")
    assert f"{checkpoint / 'projector.safetensors'}: cannot read safetensors" in line


def _user_errors(tmp: Path) -> list[tuple[list[str], str]]:
    """(argv, expected text of the single error line) for every subcommand."""
    tiny = str(TINY_CONFIG)
    questions = tmp / "q.jsonl"
    questions.write_text('{"question_id": 1, "image": "a.png", "text": "hi"}\n')
    bad_yaml = tmp / "bad.yaml"
    bad_yaml.write_text("stage: [unclosed\n")
    full = tmp / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine\n")
    return [
        (
            [
                "vqa",
                "--model",
                tiny,
                "--questions",
                str(questions),
                "--image-folder",
                str(tmp / "none"),
                "--answers",
                str(tmp / "a.jsonl"),
            ],
            "image folder not found",
        ),
        (["vqa", "--model", tiny, "--question", "hi", "--image", str(tmp / "none.png")], "none.png"),
        (["vqa", "--model", tiny, "--question", "hi", "--max-new-tokens", "0"], "--max-new-tokens 0"),
        (["eval", "--answers", str(questions), "--gold", str(tmp / "none-gold.jsonl")], "none-gold.jsonl"),
        (["serve", "--model", str(tmp / "nope")], "not found"),
        (["api", "--model", str(tmp / "nope")], "not found"),
        (
            ["export", "--model", str(tmp / "nope"), "--format", "merged", "--out", str(tmp / "o")],
            "not found",
        ),
        (["data", "validate", str(tmp / "none.json")], "none.json"),
        (["data", "stats", str(tmp / "none.json")], "none.json"),
        (["data", "convert", "captions", str(tmp / "none.csv"), "--out", str(tmp / "o.json")], "none.csv"),
        (["data", "synth", "--out", str(full), "--num-images", "2", "--seed", "0"], str(full)),
        (["train", str(tmp / "missing.yaml")], "missing.yaml"),
        (["train", str(bad_yaml)], "bad.yaml"),
    ]


def test_every_subcommand_user_error_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv, expected in _user_errors(tmp_path):
        code = main(argv)
        err = capsys.readouterr().err
        command = argv[0]
        assert code not in (0, None), argv
        line = one_error_line(err, command)
        assert expected in line, (argv, line)
    with pytest.raises(SystemExit) as info:  # argparse's own errors: usage plus one error line, exit 2
        main(["chat", "--max-new-tokens", "many"])
    assert info.value.code == 2 and "invalid int value: 'many'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"id": "r1", "image": "a.png", "conversations": []}, "record r1: conversations:"),
        (
            {"id": "r1", "conversations": [{"from": "human", "value": 5}, {"from": "gpt", "value": "x"}]},
            "record r1: conversations[0].value:",
        ),
        (
            {
                "id": "r1",
                "image": "a.png",
                "conversations": [
                    {"from": "human", "value": "<image><image>Q"},
                    {"from": "gpt", "value": "A"},
                ],
            },
            "record r1: conversations: 2 <image> markers for 1 image",
        ),
        ("just a string", "record #2: record: expected an object, got string"),
    ],
)
def test_more_bad_records_are_reported_and_the_rest_kept(
    tmp_path: Path, record: object, message: str
) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    good = {
        "id": "ok",
        "image": "a.png",
        "conversations": [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}],
    }
    path = tmp_path / "d.json"
    path.write_text("[\n" + json.dumps(good) + ",\n" + json.dumps(record) + "\n]\n")
    report = validate_file(path, tmp_path)
    assert len(report.errors) == 1 and report.errors[0].startswith(f"{path}:3: {message}"), report.errors
    assert [r.id for r in report.valid] == ["ok"]


def test_vqa_image_names_cannot_leave_the_image_folder(tmp_path: Path) -> None:
    from serve.vqa import image_path

    folder = tmp_path / "images"
    folder.mkdir()
    (tmp_path / "secret.png").write_bytes(b"x")
    (folder / "link.png").symlink_to(tmp_path / "secret.png")
    assert image_path(folder, "sub/../a.png") == (folder / "a.png").resolve()
    for name, message in [
        ("../secret.png", "outside the image folder"),
        ("link.png", "outside the image folder"),
        ("/etc/passwd", "absolute path"),
        ("a\x00.png", "NUL"),
    ]:
        with pytest.raises(MllmError, match=message):
            image_path(folder, name)


def test_too_many_images_for_mllm_chat(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "red.png"
    Image.new("RGB", (8, 8), "red").save(image)
    argv = ["chat", "--model", str(TINY_CONFIG), "--message", "hi"] + ["--image", str(image)] * 5
    assert main(argv) == 1
    assert "5 images given; this model accepts at most 4" in one_error_line(capsys.readouterr().err, "chat")


def test_data_validate_refuses_a_symlink_out_of_the_image_folder(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "secret.png")
    (folder / "link.png").symlink_to(tmp_path / "secret.png")
    record = {
        "id": "r1",
        "image": "link.png",
        "conversations": [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}],
    }
    path = tmp_path / "d.json"
    path.write_text(json.dumps([record]))
    report = validate_file(path, folder)
    assert len(report.errors) == 1 and "escapes the image folder" in report.errors[0], report.errors
    assert report.valid == []
