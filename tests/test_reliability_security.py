"""Security rules of issue 7, checked for real: the code never unpickles (a scan of every module), model loading
makes no network attempt without MLLM_ALLOW_NETWORK=1 (a child process pointed at a local recorder as its hub
and proxy), the API key is compared in constant time, servers bind 127.0.0.1 by default and the Gradio UI
refuses uploads over its limit with 413. Path traversal is covered by tests/test_api_openai.py and
test_reliability_api.py (API), test_reliability_input.py (vqa) and test_data_validate.py (data validate)."""

from __future__ import annotations

import ast
import inspect
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from serve_support import TINY_CONFIG, free_port, lively_assistant

REPO = Path(__file__).resolve().parent.parent
SOURCE_DIRS = ("mllm", "serve", "data_tools", "train", "bench")
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def python_files() -> Iterator[Path]:
    for folder in SOURCE_DIRS:
        yield from sorted((REPO / folder).rglob("*.py"))


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def test_nothing_is_unpickled() -> None:
    problems: list[str] = []
    files = list(python_files())
    assert len(files) > 20
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        where = path.relative_to(REPO)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                for name in names:
                    if name.split(".")[0] in UNSAFE_MODULES:
                        problems.append(f"{where}:{node.lineno}: imports {name}")
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            func = ast.unparse(node.func)
            if func == "torch.load":
                flag = _keyword(node, "weights_only")
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    problems.append(f"{where}:{node.lineno}: torch.load without weights_only=True")
            if func in ("np.load", "numpy.load"):
                flag = _keyword(node, "allow_pickle")
                if flag is not None and not (isinstance(flag, ast.Constant) and flag.value is False):
                    problems.append(f"{where}:{node.lineno}: np.load with allow_pickle")
            if node.func.attr == "from_pretrained":
                flag = _keyword(node, "trust_remote_code")
                if flag is not None and not (isinstance(flag, ast.Constant) and flag.value is False):
                    problems.append(f"{where}:{node.lineno}: trust_remote_code")
    assert problems == []


class Recorder:
    """A TCP listener on 127.0.0.1 that counts connections (stands in for the hub and any proxy)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.running = True
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while self.running:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.running = False
        self.thread.join(2)
        self.sock.close()


@pytest.mark.parametrize("part", ["llm", "vision"])
def test_uncached_hub_id_fails_fast_without_network(part: str, tmp_path: Path) -> None:
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config[part]["source"] = "someorg/not-a-cached-model"
    if part == "llm":
        config["llm"].pop("init_config")
    model = tmp_path / "hub.yaml"
    model.write_text(yaml.safe_dump(config))
    recorder = Recorder()
    hub = f"http://127.0.0.1:{recorder.port}"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "MLLM_ALLOW_NETWORK", "NO_PROXY", "no_proxy")
    }
    env.update(
        {
            "HF_HOME": str(tmp_path / "hf"),
            "HF_ENDPOINT": hub,
            "HTTP_PROXY": hub,
            "HTTPS_PROXY": hub,
            "http_proxy": hub,
            "https_proxy": hub,
            "ALL_PROXY": hub,
            "OMP_NUM_THREADS": "1",
        }
    )
    start = time.monotonic()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "serve.cli", "chat", "--model", str(model), "--message", "hi"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        recorder.close()
    elapsed = time.monotonic() - start
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("mllm chat: error: ")]
    assert len(lines) == 1, result.stderr
    assert "someorg/not-a-cached-model" in lines[0] and "MLLM_ALLOW_NETWORK=1" in lines[0], lines[0]
    assert recorder.connections == 0, "model loading tried the network"
    assert elapsed < 120


@pytest.mark.parametrize("command", ["serve", "api"])
def test_servers_make_no_network_attempt(command: str, tmp_path: Path) -> None:
    """`mllm serve` / `mllm api` start and answer with every proxy pointed at a recorder: nothing goes out
    (Gradio's telemetry would call api.gradio.app; HF_HUB_OFFLINE is unset on purpose)."""
    recorder = Recorder()
    proxy = f"http://127.0.0.1:{recorder.port}"
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "GRADIO_ANALYTICS_ENABLED", "MLLM_ALLOW_NETWORK")
    }
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        env[name] = proxy
    env.update(
        {
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
            "HF_ENDPOINT": proxy,
            "HF_HOME": str(tmp_path / "hf"),
            "OMP_NUM_THREADS": "1",
        }
    )
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [sys.executable, "-m", "serve.cli", command, "--model", str(TINY_CONFIG), "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        ready = base + ("/" if command == "serve" else "/health")
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, f"mllm {command} exited with {process.returncode}"
            try:
                if httpx.get(ready, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.25)
        if command == "serve":
            from gradio_client import Client

            reply = Client(base + "/", verbose=False).predict(
                {"text": "Hi", "files": []}, 0.0, 1.0, 2, api_name="/chat"
            )
            assert isinstance(reply, str)
        else:
            body = {"model": "default", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
            assert httpx.post(base + "/v1/chat/completions", json=body, timeout=60).status_code == 200
        time.sleep(1.0)
    finally:
        process.terminate()
        process.wait(timeout=30)
        recorder.close()
    assert recorder.connections == 0, f"mllm {command} tried the network"


def test_api_key_is_compared_in_constant_time() -> None:
    from serve.api import ApiServer

    source = inspect.getsource(ApiServer._authorize)
    assert "hmac.compare_digest(" in source
    tree = ast.parse(inspect.getsource(sys.modules["serve.api"]))
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(isinstance(op, ast.Eq | ast.NotEq) for op in node.ops):
            assert "key" not in ast.unparse(node).lower(), ast.unparse(node)


def test_servers_bind_loopback_by_default() -> None:
    from serve.api import run_server
    from serve.cli import build_parser
    from serve.ui import UISettings

    parser = build_parser()
    for command in ("serve", "api"):
        args = parser.parse_args([command])
        assert args.host == "127.0.0.1", command
    assert UISettings().host == "127.0.0.1"
    assert inspect.signature(run_server).parameters["host"].default == "127.0.0.1"


def test_gradio_upload_size_is_limited() -> None:
    from serve.ui import ChatUI, UISettings

    ui = ChatUI(lively_assistant(), UISettings(port=free_port(), max_file_mb=0.05))
    ui.launch(block=False)
    try:
        url = f"http://127.0.0.1:{ui.settings.port}/gradio_api/upload"
        small = httpx.post(url, files={"files": ("ok.png", b"x" * 1000, "image/png")}, timeout=30)
        assert small.status_code == 200, small.text
        big = httpx.post(url, files={"files": ("big.png", b"x" * 200_000, "image/png")}, timeout=30)
        assert big.status_code == 413, big.text
        assert httpx.get(f"http://127.0.0.1:{ui.settings.port}/", timeout=30).status_code == 200
    finally:
        ui.close()
