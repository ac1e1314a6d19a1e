"""The serving commands as real processes: `mllm api` (key from MLLM_API_KEY) answers the openai client and
`mllm serve` serves the chat page; `--load-4bit` / `--load-8bit` reach mllm.load and exclude each other."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest
from serve_support import ROOT, TINY_CONFIG, free_port

import serve.commands
from serve.cli import build_parser, main


@contextmanager
def running(
    args: list[str], url: str, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Start `python -m serve.cli ARGS`, wait until `url` answers, and stop the process afterwards."""
    process = subprocess.Popen(
        [sys.executable, "-m", "serve.cli", *args],
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
            try:
                if httpx.get(url, timeout=2).status_code < 500:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"{args[0]} did not start"
            time.sleep(0.25)
        yield process
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_api_command(tmp_path: Path) -> None:
    port = free_port()
    args = ["api", "--model", str(TINY_CONFIG), "--port", str(port), "--max-tokens-limit", "64"]
    with running(args, f"http://127.0.0.1:{port}/health", env={"MLLM_API_KEY": "from-env"}):
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="from-env", max_retries=0)
        assert [m.id for m in client.models.list()] == ["tiny-test"]
        reply = client.chat.completions.create(
            model="tiny-test", messages=[{"role": "user", "content": "Hi"}], max_tokens=3
        )
        assert reply.usage is not None and reply.usage.completion_tokens == 3
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(
                model="tiny-test", messages=[{"role": "user", "content": "Hi"}], max_tokens=65
            )
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="nope", max_retries=0).models.list()


def test_serve_command() -> None:
    port = free_port()
    args = ["serve", "--model", str(TINY_CONFIG), "--port", str(port), "--concurrency", "2"]
    with running(args, f"http://127.0.0.1:{port}/"):
        page = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
        assert page.status_code == 200 and "mllm: tiny-test" in page.text


def test_quantization_flags(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    for command in ("vqa", "serve", "api"):
        args = parser.parse_args([command, "--model", "m", "--load-4bit"])
        assert args.load_4bit and not args.load_8bit
        with pytest.raises(SystemExit):
            parser.parse_args([command, "--load-4bit", "--load-8bit"])
    capsys.readouterr()
    calls: list[dict[str, object]] = []

    def fake_load(spec: str, **kwargs: object) -> object:
        calls.append({"spec": spec, **kwargs})
        raise serve.commands.MllmError("stop here")

    monkeypatch.setattr("mllm.load", fake_load)
    assert main(["vqa", "--model", "x", "--load-8bit", "--question", "q"]) == 1
    loaded = {"spec": "x", "load_in_4bit": False, "load_in_8bit": False, "batches": False, "device": "auto"}
    assert calls == [{**loaded, "load_in_8bit": True, "precision": "auto"}]
    calls.clear()
    assert main(["vqa", "--model", "x", "--precision", "fp32", "--question", "q"]) == 1
    assert calls == [{**loaded, "precision": "fp32"}]
    calls.clear()  # a questions file is batch work: `auto` may pick bf16 where a batch gains from it
    assert (
        main(["vqa", "--model", "x", "--questions", "q.jsonl", "--image-folder", ".", "--answers", "a"]) == 1
    )
    assert calls == [{**loaded, "precision": "auto", "batches": True}]
    calls.clear()
    assert main(["vqa", "--model", "x", "--device", "cuda:1", "--question", "q"]) == 1
    assert calls == [{**loaded, "precision": "auto", "device": "cuda:1"}]
    assert "stop here" in capsys.readouterr().err
