"""Checkpoints: a round trip gives identical logits; a checkpoint that does not fit, a missing or truncated
file, or an unknown format version fails with one clear error naming the file."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from mllm.checkpoint import load_checkpoint, save_checkpoint
from mllm.errors import MllmError


def perturb(model) -> None:
    """Give projector and LoRA non-trivial weights (LoRA B starts at zero)."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=gen) * 0.1)
                assert "lora_" in name or name.startswith("projector.")


def logits(model) -> torch.Tensor:
    ids = torch.tensor(
        [model.processor.encode_prompt([{"role": "user", "content": "<image>hello"}]).input_ids]
    )
    pixels = torch.linspace(-1, 1, 3 * 32 * 32).reshape(1, 3, 32, 32)
    with torch.no_grad():
        return model(ids, pixel_values=pixels).logits


@pytest.fixture
def saved(tiny_model, tmp_path):
    perturb(tiny_model)
    folder = save_checkpoint(
        tiny_model, tmp_path / "ckpt", stage="instruct", step=7, data={"train": "x.json"}
    )
    return tiny_model, folder


def test_round_trip_identical_logits(saved):
    model, folder = saved
    assert sorted(p.name for p in folder.iterdir()) == [
        "adapter",
        "mllm.json",
        "projector.safetensors",
        "vision",
    ]
    meta = json.loads((folder / "mllm.json").read_text())
    assert (
        meta["stage"] == "instruct" and meta["step"] == 7 and meta["config"]["vision"]["source"] == "./vision"
    )
    loaded = load_checkpoint(folder)
    torch.testing.assert_close(logits(loaded), logits(model), rtol=0, atol=0)


def test_overwrite_is_atomic_and_leaves_no_temp(saved):
    model, folder = saved
    save_checkpoint(model, folder, step=8)
    assert json.loads((folder / "mllm.json").read_text())["step"] == 8
    assert [p.name for p in folder.parent.iterdir()] == ["ckpt"]


def test_mismatched_projector_names_both_shapes(saved):
    _, folder = saved
    path = folder / "projector.safetensors"
    state = load_file(str(path))
    state["fc1.weight"] = torch.zeros(7, 3)
    save_file(state, str(path))
    with pytest.raises(
        MllmError,
        match=r"projector.safetensors: tensor fc1.weight has shape \(7, 3\) in the "
        r"checkpoint but \(32, 32\) in the model",
    ):
        load_checkpoint(folder)


def test_projector_type_mismatch_names_keys(saved):
    _, folder = saved
    meta = json.loads((folder / "mllm.json").read_text())
    meta["config"]["projector"]["type"] = "linear"
    (folder / "mllm.json").write_text(json.dumps(meta))
    with pytest.raises(MllmError, match="projector.safetensors: does not fit the model"):
        load_checkpoint(folder)


def test_truncated_safetensors(saved):
    _, folder = saved
    path = folder / "projector.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(MllmError, match="projector.safetensors: cannot read safetensors"):
        load_checkpoint(folder)


def test_missing_file_and_unknown_version(saved):
    _, folder = saved
    meta_path = folder / "mllm.json"
    meta = json.loads(meta_path.read_text())
    meta["format_version"] = 99
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(MllmError, match="mllm.json: field format_version: 99 is not supported"):
        load_checkpoint(folder)
    meta["format_version"] = 1
    meta_path.write_text(json.dumps(meta))
    (folder / "projector.safetensors").unlink()
    with pytest.raises(MllmError, match="projector.safetensors: file is missing"):
        load_checkpoint(folder)
    meta_path.unlink()
    with pytest.raises(MllmError, match="not an mllm checkpoint"):
        load_checkpoint(folder)
