"""Offline by default: a hub id that is not in the local cache fails at once with one clear error, without a
network attempt, even when HF_HUB_OFFLINE is not set."""

from __future__ import annotations

import os
import subprocess
import sys
import time

CODE = """
import mllm
from mllm.config import LLMConfig
from mllm.llm import load_llm
try:
    load_llm(LLMConfig(source="someone/not-a-cached-model"))
except mllm.MllmError as exc:
    print(exc)
"""


def test_uncached_hub_id_fails_fast_and_offline(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_HOME=str(tmp_path / "hf"), MLLM_CACHE=str(tmp_path / "mllm"))
    env.pop("MLLM_ALLOW_NETWORK", None)
    # any connection attempt would go to this unroutable proxy and hang or fail differently
    env.update(HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9")
    start = time.time()
    result = subprocess.run(
        [sys.executable, "-c", CODE], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    message = result.stdout.strip()
    assert message.startswith("LLM 'someone/not-a-cached-model': cannot load")
    assert "downloads are off (set MLLM_ALLOW_NETWORK=1 to allow them)" in message
    assert "127.0.0.1:9" not in result.stderr + message
    assert time.time() - start < 60


def test_offline_drops_only_bitsandbytes_hub_kernel_notice(monkeypatch):
    """bitsandbytes' failed fetch of a hub CPU kernel is not news offline; its other warnings still show."""
    import logging

    from mllm.hub import OFFLINE_KERNEL_NOTICES, default_offline_env

    monkeypatch.delenv("MLLM_ALLOW_NETWORK", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    default_offline_env()
    default_offline_env()  # idempotent: one filter
    assert len(OFFLINE_KERNEL_NOTICES) == 2

    def shown(name: str, msg: str) -> bool:
        logger = logging.getLogger(name)
        assert sum(type(f).__name__ == "OfflineKernelNotice" for f in logger.filters) == 1
        return logger.filter(logging.LogRecord(name, logging.WARNING, __file__, 1, msg, None, None))

    for name, notice in OFFLINE_KERNEL_NOTICES.items():
        assert not shown(name, notice + " because Hugging Face Hub is in offline mode.")
        assert shown(name, "Some other warning")
    monkeypatch.setenv("MLLM_ALLOW_NETWORK", "1")  # online, a failed fetch is worth seeing
    for name, notice in OFFLINE_KERNEL_NOTICES.items():
        assert shown(name, notice)


def test_importing_a_model_stack_offline_prints_no_kernel_fetch_warning():
    """The real import, as every command that loads a model does it (peft imports bitsandbytes)."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "MLLM_ALLOW_NETWORK")}
    result = subprocess.run(
        [sys.executable, "-c", "import mllm, peft, bitsandbytes"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "gemm_4bit_forward" not in result.stderr
    assert "kernels-community" not in result.stderr
