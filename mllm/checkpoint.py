"""Checkpoint folders that explain themselves (design.md): `mllm.json`, `projector.safetensors`, `adapter/`
(peft LoRA), `vision/` (our own tower, HF CLIP format) and `llm/` (a fully trained or merged LLM).

Writes go to a temporary sibling folder renamed into place, so a killed run never leaves a half checkpoint.
Weights are safetensors only; nothing is unpickled. A checkpoint that does not fit its model fails with an
error naming the file, the tensor and both shapes.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from mllm.config import ModelConfig, from_dict, resolve_paths, to_dict
from mllm.errors import MllmError
from mllm.model import MultimodalModel

FORMAT = "mllm-checkpoint"
FORMAT_VERSION = 1
META_FILE = "mllm.json"


def _is_hub_id(source: str | None) -> bool:
    """Whether a checkpoint may refer to the tower's `source` instead of holding a copy: only for a hub id.
    A random tower (None) and a local folder are copied in, and so is a path that no longer exists (the
    tower is in memory): a resumed run's tower comes from a checkpoint that the trainer later prunes."""
    if source is None:
        return False
    return not (Path(source).is_dir() or Path(source).is_absolute() or source.startswith("."))


def read_meta(folder: str | Path) -> dict[str, Any]:
    """The parsed `mllm.json` of a checkpoint folder, with its format checked."""
    path = Path(folder) / META_FILE
    if not path.is_file():
        raise MllmError(f"{folder}: not an mllm checkpoint ({META_FILE} is missing)")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise MllmError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise MllmError(f"{path}: field format: expected {FORMAT!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise MllmError(
            f"{path}: field format_version: {meta.get('format_version')!r} is not supported "
            f"(this mllm reads version {FORMAT_VERSION})"
        )
    return meta


def checkpoint_config(folder: str | Path) -> ModelConfig:
    """The resolved model config stored in a checkpoint, with its local sources pointing into the folder."""
    folder = Path(folder)
    config = from_dict(ModelConfig, read_meta(folder).get("config", {}), f"{folder / META_FILE}: config")
    return resolve_paths(config, folder)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise MllmError(f"{path}: file is missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise MllmError(
            f"{path}: cannot read safetensors ({exc}); the file is truncated or corrupt"
        ) from None


def check_state(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], path: Path) -> None:
    """Refuse a state dict whose keys or shapes differ from the model's, naming the file and both shapes."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing or unexpected:
        raise MllmError(f"{path}: does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for key, tensor in expected.items():
        if tuple(found[key].shape) != tuple(tensor.shape):
            raise MllmError(
                f"{path}: tensor {key} has shape {tuple(found[key].shape)} in the checkpoint "
                f"but {tuple(tensor.shape)} in the model"
            )


def load_module_weights(module: nn.Module, path: Path) -> None:
    """Load a safetensors file into `module`, checking every key and shape first."""
    state = _read_safetensors(path)
    check_state(module.state_dict(), state, path)
    module.load_state_dict(state)


def load_adapter_weights(llm: PeftModel, folder: Path) -> None:
    """Load saved LoRA weights into a model already wrapped with the same LoRA config."""
    path = folder / "adapter_model.safetensors"
    state = _read_safetensors(path)
    check_state(get_peft_model_state_dict(llm), state, path)
    set_peft_model_state_dict(llm, state)


def _atomic_folder(target: Path, write: Callable[[Path], None]) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; a checkpoint is an ordinary readable folder
    try:
        write(tmp)
        for root, _dirs, files in os.walk(tmp):  # make the bytes durable before the rename publishes them
            for name in files:
                with open(os.path.join(root, name), "rb") as f:
                    os.fsync(f.fileno())
    except (OSError, SafetensorError) as exc:  # a full disk, a quota, a file size limit: nothing was replaced
        shutil.rmtree(tmp, ignore_errors=True)
        kept = "the previous checkpoint is unchanged" if target.exists() else "nothing was written"
        raise MllmError(f"{target}: cannot write the checkpoint ({exc}); {kept}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        old = None
        if target.exists():
            old = target.parent / f".old-{target.name}-{time.time_ns()}"
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_checkpoint(
    model: MultimodalModel,
    folder: str | Path,
    stage: str = "none",
    step: int = 0,
    data: dict[str, Any] | None = None,
    save_llm: bool = False,
    extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write `model` as a checkpoint folder atomically. `save_llm` stores the full LLM (after full fine-tuning
    or a LoRA merge); `extra(tmp_folder)` may add files (the trainer's `state/`) inside the same atomic write."""
    folder = Path(folder)
    config = from_dict(ModelConfig, to_dict(model.config))  # a deep copy we may edit

    def write(tmp: Path) -> None:
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in model.projector.state_dict().items()},
            str(tmp / "projector.safetensors"),
        )
        if not _is_hub_id(config.vision.source):
            model.vision.model.save_pretrained(tmp / "vision")
            config.vision.source = "./vision"
        if save_llm:
            llm = model.llm
            if isinstance(llm, PeftModel):
                raise ValueError("merge or drop the LoRA adapters before saving the full LLM")
            llm.save_pretrained(tmp / "llm")
            model.tokenizer.save_pretrained(tmp / "llm")
            config.llm.source, config.llm.gguf_file, config.llm.init_config = "./llm", None, None
            config.llm.tokenizer = None
            config.lora.enabled = False
        elif isinstance(model.llm, PeftModel):
            model.llm.save_pretrained(tmp / "adapter")
            config.lora.enabled = True
        else:
            config.lora.enabled = False
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "config": to_dict(config),
            "stage": stage,
            "step": step,
            "data": data or {},
            "num_image_tokens": model.num_image_tokens,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        if extra is not None:
            extra(tmp)

    _atomic_folder(folder, write)
    return folder


def load_checkpoint(
    folder: str | Path, device: torch.device | None = None, **llm_overrides: Any
) -> MultimodalModel:
    """Rebuild the model stored in `folder` (on `device` when given); `llm_overrides` (e.g. load_in_4bit=True)
    adjust the LLM config."""
    folder = Path(folder)
    config = checkpoint_config(folder)
    for key, value in llm_overrides.items():
        setattr(config.llm, key, value)
    for source in (config.vision.source, config.llm.source):
        local = (
            source is not None and Path(source).is_absolute()
        )  # relative paths were resolved into the folder
        if local and not (Path(source) / "config.json").is_file():
            raise MllmError(f"{source}: folder is missing or has no config.json")
    model = MultimodalModel.build(config, device=device)
    load_module_weights(model.projector, folder / "projector.safetensors")
    if config.lora.enabled:
        if not (folder / "adapter").is_dir():
            raise MllmError(f"{folder}: config says LoRA but adapter/ is missing")
        load_adapter_weights(model.llm, folder / "adapter")
    return model
