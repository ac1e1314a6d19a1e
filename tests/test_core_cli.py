"""The `mllm chat` command through the real console script: one answer, the REPL, and one-line user errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

MLLM = [sys.executable, "-m", "serve.cli"]


def run(args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([*MLLM, *args], input=stdin, capture_output=True, text=True, timeout=300, env=env)


def test_chat_one_message_with_image(tiny_config_path, tmp_path):
    image = tmp_path / "red.png"
    Image.new("RGB", (20, 20), "red").save(image)
    result = run(
        [
            "chat",
            "--model",
            str(tiny_config_path),
            "--message",
            "What color?",
            "--image",
            str(image),
            "--max-new-tokens",
            "5",
        ]
    )
    assert result.returncode == 0, result.stderr
    import mllm

    expected = mllm.load(str(tiny_config_path)).chat(
        [{"role": "user", "content": "What color?"}], images=[image], max_new_tokens=5
    )
    assert result.stdout == expected + "\n"


def test_chat_repl(tiny_config_path, tmp_path):
    image = tmp_path / "red.png"
    Image.new("RGB", (20, 20), "red").save(image)
    script = f"hello\n/image {image}\nwhat is it?\n/image {tmp_path}/nope.png\n/reset\n/quit\n"
    result = run(["chat", "--model", str(tiny_config_path), "--max-new-tokens", "3"], stdin=script)
    assert result.returncode == 0, result.stderr
    assert f"(attached {image})" in result.stdout
    assert "nope.png: image file not found" in result.stdout
    assert "(new conversation)" in result.stdout


def test_user_errors_are_one_line_without_traceback(tmp_path):
    result = run(["chat", "--model", "no-such-model", "--message", "hi"])
    assert result.returncode == 1
    error_lines = [line for line in result.stderr.splitlines() if "error" in line.lower() and "mllm" in line]
    assert error_lines == [
        "mllm chat: error: model 'no-such-model' not found: pass 'default', a checkpoint "
        "folder or a model config YAML (shipped: default)"
    ]
    assert "Traceback" not in result.stderr
    result = run(
        ["chat", "--model", str(Path(__file__)), "--message", "hi", "--image", str(tmp_path / "x.png")]
    )
    assert result.returncode == 1 and "x.png: image file not found" in result.stderr


def test_help_has_examples():
    result = run(["chat", "--help"])
    assert result.returncode == 0 and "Example: mllm chat" in result.stdout
