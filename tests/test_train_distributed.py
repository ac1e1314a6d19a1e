"""A 2-process DeepSpeed ZeRO-2 run on CPU (world size 2, gloo) on the tiny model: both ranks train, the
checkpoint holds each rank's optimizer partition, and the run resumes with the same two processes."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.train_support import REPO, TINY_MODEL, make_data, run_training, train_env, write_config


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(config: Path, *args: str) -> list[subprocess.CompletedProcess[str]]:
    """What the deepspeed launcher does on one node: one process per rank with the rendezvous variables."""
    port = str(_free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "train", str(config), *args],
            cwd=REPO,
            env=train_env(
                RANK=str(rank),
                LOCAL_RANK=str(rank),
                WORLD_SIZE="2",
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=port,
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return results


@pytest.mark.slow
def test_zero2_two_processes_train_save_and_resume(tmp_path: Path) -> None:
    data = make_data(tmp_path / "data")
    config = write_config(
        tmp_path / "zero2.yaml",
        data,
        tmp_path / "run",
        stage="instruct",
        model=str(TINY_MODEL),
        llm="lora",
        lora={"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"},
        data={"train": str(data / "instruct.json"), "image_folder": str(data / "images")},
        deepspeed=str(REPO / "configs" / "deepspeed" / "zero2.json"),
        micro_batch_size=2,
        max_steps=2,
        save_every=0,
    )
    results = _launch(config)
    for rank, result in enumerate(results):
        assert result.returncode == 0, f"rank {rank}: {result.stderr[-3000:]}"
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 2 and summary["samples"] == 8
    state = tmp_path / "run" / "checkpoints" / "step-000002" / "state"
    assert (state / "optimizer_rank0.pt").is_file() and (state / "optimizer_rank1.pt").is_file()
    assert (tmp_path / "run" / "final" / "adapter" / "adapter_model.safetensors").is_file()

    results = _launch(config, "--resume", "max_steps=3")
    for rank, result in enumerate(results):
        assert result.returncode == 0, f"rank {rank}: {result.stderr[-3000:]}"
    assert "resumed from" in results[0].stderr
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 3


@pytest.mark.slow
@pytest.mark.parametrize("zero", ["zero3", "zero2_offload"])
def test_zero3_and_offload_train_save_and_resume(zero: str, tmp_path: Path) -> None:
    data = make_data(tmp_path / "data", num_images=16)
    config = write_config(
        tmp_path / f"{zero}.yaml",
        data,
        tmp_path / "run",
        stage="instruct",
        model=str(TINY_MODEL),
        llm="lora",
        lora={"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"},
        data={"train": str(data / "instruct.json"), "image_folder": str(data / "images")},
        deepspeed=str(REPO / "configs" / "deepspeed" / f"{zero}.json"),
        max_steps=2,
        save_every=1,
    )
    first = run_training(config)
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = run_training(config, "--resume", "max_steps=3")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr
    from mllm.checkpoint import load_checkpoint

    model = load_checkpoint(tmp_path / "run" / "final")  # ZeRO-3 partitions were gathered for saving
    assert model.vision.model.embeddings.class_embedding.shape == (32,)
