"""mllm.devices: `auto` is the GPU when torch sees one, else the CPU; unknown or absent devices are refused in
one line, by mllm.load and by the command line, before any weights load."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import mllm
from mllm.devices import resolve_device
from mllm.errors import MllmError
from tests.train_support import REPO, TINY_MODEL

NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where there is no GPU")


def test_auto_and_cpu() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("name", ["gpu0", "cuda:x", "tpu"])
def test_unknown_devices_are_refused(name: str) -> None:
    with pytest.raises(MllmError, match=f"device '{name}'"):
        resolve_device(name)


@NO_GPU
def test_a_gpu_that_is_not_there_is_refused_before_loading() -> None:
    with pytest.raises(MllmError, match="torch sees no CUDA GPU"):
        mllm.load(str(TINY_MODEL), device="cuda")


def test_load_on_the_cpu_keeps_every_part_there() -> None:
    assistant = mllm.load(str(TINY_MODEL), device="cpu")
    assert {p.device.type for p in assistant.model.parameters()} == {"cpu"}


@NO_GPU
def test_the_command_line_names_the_missing_gpu(tmp_path) -> None:
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question_id": 1, "image": "a.png", "text": "hi"}\n')
    command = [sys.executable, "-m", "serve.cli", "vqa", "--model", str(TINY_MODEL), "--device", "cuda:1"]
    files = [
        "--questions",
        str(questions),
        "--image-folder",
        str(tmp_path),
        "--answers",
        str(tmp_path / "a.jsonl"),
    ]
    result = subprocess.run(
        [*command, *files],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "device 'cuda:1': torch sees no CUDA GPU" in result.stderr
    assert "Traceback" not in result.stderr
