"""`python -m train.interpolate`: scaling a checkpoint's LoRA update. Scale 1 gives the same logits, scale 0 the
base LLM's (the adapter switched off), 0.5 halves every lora_B; bad scales and LoRA-less checkpoints fail clearly."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from mllm.checkpoint import load_checkpoint, save_checkpoint
from mllm.errors import MllmError
from tests.test_core_checkpoint import logits, perturb
from train.interpolate import interpolate


@pytest.fixture
def trained(tiny_model, tmp_path):
    perturb(tiny_model)
    return tiny_model, save_checkpoint(
        tiny_model, tmp_path / "ckpt", stage="instruct", step=9, data={"train": "x"}
    )


def test_scales_the_lora_update(trained, tmp_path):
    model, folder = trained
    half = interpolate(folder, tmp_path / "half", 0.5)
    before = load_file(folder / "adapter" / "adapter_model.safetensors")
    after = load_file(half / "adapter" / "adapter_model.safetensors")
    assert before.keys() == after.keys() and any("lora_B" in k for k in before)
    for key, value in before.items():
        torch.testing.assert_close(after[key], value * 0.5 if "lora_B" in key else value, rtol=0, atol=0)
    meta = json.loads((half / "mllm.json").read_text())
    assert meta["stage"] == "instruct" and meta["step"] == 9
    assert meta["data"] == {"train": "x", "lora_scale": 0.5, "lora_scale_of": str(folder)}
    again = interpolate(half, tmp_path / "quarter", 0.5)  # scales multiply through
    assert json.loads((again / "mllm.json").read_text())["data"]["lora_scale"] == 0.25

    torch.testing.assert_close(
        logits(load_checkpoint(interpolate(folder, tmp_path / "one", 1.0))), logits(model)
    )
    zero = load_checkpoint(interpolate(folder, tmp_path / "zero", 0.0))
    with model.llm.disable_adapter():
        base = logits(model)
    assert not torch.allclose(logits(model), base)  # the perturbed adapter does change the logits
    torch.testing.assert_close(logits(zero), base)


def test_refuses_bad_input(trained, tiny_config, tmp_path):
    from mllm.model import MultimodalModel

    _model, folder = trained
    for scale in (-0.1, float("nan")):
        with pytest.raises(MllmError, match="expected a number >= 0"):
            interpolate(folder, tmp_path / "bad", scale)
    with pytest.raises(MllmError, match="is the source checkpoint"):
        interpolate(folder, folder, 0.5)
    tiny_config.lora.enabled = False
    plain = save_checkpoint(MultimodalModel.build(tiny_config), tmp_path / "plain")
    with pytest.raises(MllmError, match=f"{plain}: has no LoRA adapter"):
        interpolate(plain, tmp_path / "out", 0.5)
    assert not (tmp_path / "out").exists() and not (tmp_path / "bad").exists()

    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "train.interpolate",
            str(plain),
            "--out",
            str(tmp_path / "out"),
            "--lora-scale",
            "1",
        ],
        capture_output=True,
        text=True,
    )
    assert cli.returncode == 2 and "has no LoRA adapter" in cli.stderr and "Traceback" not in cli.stderr
