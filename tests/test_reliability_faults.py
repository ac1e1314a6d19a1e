"""Faults while saving (issue 7): a checkpoint write that fails part-way because the disk is full leaves the
previous checkpoint byte-for-byte intact and loadable, leaves no temporary folder behind and fails with one
clear MllmError naming the folder and the cause. The full disk is real: the save runs in a child process
under RLIMIT_FSIZE with SIGXFSZ ignored, so the kernel refuses the write (EFBIG) as a full disk would.
Two points of failure: the first file (projector.safetensors, 8.7 kB) and a later one (vision/, 99 kB)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from serve_support import TINY_CONFIG

from mllm.checkpoint import load_checkpoint, save_checkpoint
from mllm.config import load_model_config
from mllm.model import MultimodalModel

REPO = Path(__file__).resolve().parent.parent
CHILD = """
import resource, signal, sys
from mllm.checkpoint import save_checkpoint
from mllm.config import load_model_config
from mllm.errors import MllmError
from mllm.model import MultimodalModel

config = load_model_config(sys.argv[1])
config.lora.enabled = True
model = MultimodalModel.build(config)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
try:
    save_checkpoint(model, sys.argv[2], stage="instruct", step=2)
except MllmError as exc:
    print(exc, file=sys.stderr)
    sys.exit(1)
"""


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("limit", [4096, 50_000])
def test_full_disk_while_saving_keeps_the_previous_checkpoint(limit: int, tmp_path: Path) -> None:
    config = load_model_config(TINY_CONFIG)
    config.lora.enabled = True
    folder = save_checkpoint(MultimodalModel.build(config), tmp_path / "ckpt", stage="instruct", step=1)
    before = digest(folder)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(TINY_CONFIG), str(folder), str(limit)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith(f"{folder}: cannot write the checkpoint (")
    assert "File too large" in message and message.endswith("the previous checkpoint is unchanged"), message
    assert digest(folder) == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no .tmp-* or .old-* folder left
    assert json.loads((folder / "mllm.json").read_text())["step"] == 1
    load_checkpoint(folder)
