"""Shared helpers of the training tests: tiny shapes data and training configs for the tiny random model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
TINY_MODEL = REPO / "configs" / "model" / "tiny-test.yaml"


def make_data(folder: Path, num_images: int = 24) -> Path:
    """A tiny shapes-world data set (64 px images)."""
    from data_tools.synth.writer import SynthConfig, synthesize

    synthesize(SynthConfig(out=folder, num_images=num_images, seed=0, image_size=64, progress=False))
    return folder


def write_config(path: Path, data_dir: Path, out: Path, **fields: Any) -> Path:
    """A training YAML for the tiny model; `fields` override the defaults (an align run)."""
    config: dict[str, Any] = {
        "stage": "align",
        "output_dir": str(out),
        "model": str(TINY_MODEL),
        "llm": "frozen",
        "data": {"train": str(data_dir / "align.json"), "image_folder": str(data_dir / "images")},
        "optim": {"lr": 1e-3, "warmup_ratio": 0.1},
        "micro_batch_size": 4,
        "grad_accum": 1,
        "max_steps": 4,
        "save_every": 2,
        "seed": 0,
        "deepspeed": str(REPO / "configs" / "deepspeed" / "zero0.json"),
        "progress": False,
        "num_threads": 1,
        "precision": "fp32",  # the same numbers on every CPU (`auto` is bf16 on CPUs that have it)
    }
    for key, value in fields.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    path.write_text(yaml.safe_dump(config))
    return path


def train_env(**extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")
    }
    env.update(
        {
            "DS_ACCELERATOR": "cpu",  # as CI has it, also on a machine with a GPU (tests/test_gpu.py asks for it)
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
        }
    )
    env.update(extra)
    return env


def start_training(config: Path, *args: str, **env: str) -> subprocess.Popen[str]:
    """`python -m train CONFIG ARGS` in its own process."""
    return subprocess.Popen(
        [sys.executable, "-m", "train", str(config), *args],
        cwd=REPO,
        env=train_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_training(
    config: Path, *args: str, timeout: float = 300, **env: str
) -> subprocess.CompletedProcess[str]:
    """`python -m train CONFIG ARGS` to its end; `env` adds to train_env's variables."""
    proc = start_training(config, *args, **env)
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def write_clip_config(path: Path, data_dir: Path, out: Path, clip: dict[str, Any], **fields: Any) -> Path:
    """A 3-step clip-stage YAML for the tiny model on `data_dir`'s pairs (eval on the same pairs), with tiny
    text-tower sizes; `clip` adds clip-section fields, `fields` override the rest."""
    sizes = {"text_hidden_size": 32, "text_layers": 1, "text_heads": 2, "projection_dim": 16}
    config: dict[str, Any] = {
        "stage": "clip",
        "model": str(TINY_MODEL),
        "data": {
            "train": str(data_dir / "pairs.jsonl"),
            "eval": str(data_dir / "pairs.jsonl"),
            "image_folder": str(data_dir / "images"),
        },
        "clip": {**sizes, **clip},
        "micro_batch_size": 8,
        "max_steps": 3,
        "eval_every": 0,
    }
    return write_config(path, data_dir, out, **{**config, **fields})
