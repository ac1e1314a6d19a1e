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
