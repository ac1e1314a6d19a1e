"""Reduced-precision training on the tiny random model: QLoRA (4-bit base weights via bitsandbytes, LoRA on top)
and bf16 training both run on CPU, lower the loss, and save checkpoints that load and answer."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from tests.train_support import TINY_MODEL, make_data, run_training, write_config


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_data(tmp_path_factory.mktemp("precision-data") / "shapes", num_images=16)


def _wide_model(folder: Path) -> Path:
    """The tiny model with a 64-wide LLM saved to disk (4-bit loading quantizes saved weights, and bitsandbytes'
    CPU 4-bit kernels need at least 64 input features)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = yaml.safe_load(TINY_MODEL.read_text())
    init = {**config["llm"].pop("init_config"), "hidden_size": 64, "intermediate_size": 128}
    torch.manual_seed(0)
    llm = AutoModelForCausalLM.from_config(AutoConfig.for_model(**init))
    llm.save_pretrained(folder / "llm")
    config["llm"]["source"] = str(folder / "llm")
    path = folder / "tiny-wide.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _instruct(data: Path, folder: Path, model: Path, **fields: object) -> Path:
    config = write_config(
        folder / "instruct.yaml",
        data,
        folder / "run",
        stage="instruct",
        model=str(model),
        lora={"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"},
        data={"train": str(data / "instruct.json"), "image_folder": str(data / "images")},
        optim={"lr": 3e-3, "warmup_ratio": 0.0},
        max_steps=8,
        save_every=0,
        log_every=1,
        **fields,
    )
    result = run_training(config)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder / "run"


def _losses(run: Path) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["kind"] == "train"]


def test_qlora4_trains_and_its_checkpoint_answers_in_4bit(data: Path, tmp_path: Path) -> None:
    import mllm
    from mllm.checkpoint import read_meta

    run = _instruct(data, tmp_path, _wide_model(tmp_path), llm="qlora4")
    losses = _losses(run)
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses)
    assert min(losses[-3:]) < losses[0]
    meta = read_meta(run / "final")
    assert meta["config"]["llm"]["load_in_4bit"] and (run / "final" / "adapter").is_dir()
    assistant = mllm.load(run / "final", load_in_4bit=True)
    assert type(assistant.model.llm.base_model.model.model.layers[0].mlp.up_proj.base_layer).__name__ == (
        "Linear4bit"
    )
    reply = assistant.chat([{"role": "user", "content": "Hi"}], max_new_tokens=4)
    assert isinstance(reply, str)


def test_bf16_training_on_cpu_saves_a_checkpoint_that_loads_in_fp32(data: Path, tmp_path: Path) -> None:
    import torch

    from mllm.assistant import load_model

    run = _instruct(data, tmp_path, TINY_MODEL, llm="lora", precision="bf16")
    losses = _losses(run)
    assert all(math.isfinite(x) for x in losses) and min(losses[-3:]) < losses[0]
    model = load_model(run / "final")
    assert {p.dtype for p in model.projector.parameters()} == {torch.float32}
    assert {p.dtype for p in model.llm.parameters()} == {torch.float32}
