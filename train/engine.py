"""The DeepSpeed side of training: the process group (gloo on CPU with `DS_ACCELERATOR=cpu`, NCCL on GPUs),
the DeepSpeed config filled in from the training config (`auto` values), the optimizer (AdamW) and the
cosine-with-warmup schedule, `deepspeed.initialize`, and the optimizer state as plain tensors for resuming.

A single process started without a launcher becomes rank 0 of a world of 1; the `deepspeed` launcher (or any
launcher that sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT) gives more ranks.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mllm.bf16_linear import native_bf16_available
from mllm.errors import MllmError
from train.config import TrainConfig

log = logging.getLogger(__name__)


def prepare_environment() -> None:
    """Choose DeepSpeed's CPU accelerator when there is no GPU, and single-process rendezvous variables when
    no launcher set them. Call before importing deepspeed."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if "RANK" not in os.environ:
        os.environ.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"})
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        if "MASTER_PORT" not in os.environ:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                os.environ["MASTER_PORT"] = str(sock.getsockname()[1])


def on_gpu() -> bool:
    """Whether DeepSpeed trains on CUDA GPUs here: its accelerator, which `DS_ACCELERATOR=cpu` sets to the CPU
    also on a machine with GPUs (torch.cuda alone would say otherwise)."""
    prepare_environment()
    from deepspeed.accelerator import get_accelerator

    return get_accelerator().device_name() == "cuda"


def init_distributed() -> tuple[int, int]:
    """(rank, world size) after joining the process group: NCCL with one GPU per local rank, else gloo."""
    gpu = on_gpu()
    import deepspeed

    if not torch.distributed.is_initialized():
        backend = "nccl" if gpu else "gloo"
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False)
    if gpu:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if local_rank >= torch.cuda.device_count():
            raise MllmError(
                f"local rank {local_rank} has no GPU of its own ({torch.cuda.device_count()} here): start one "
                "process per GPU, or train on the CPU with DS_ACCELERATOR=cpu"
            )
        torch.cuda.set_device(local_rank)
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def native_bf16() -> bool:
    """Whether the training device multiplies bf16 in hardware: a GPU that supports it, or a CPU with AVX-512
    BF16 or AMX tiles (elsewhere torch emulates bf16 on a CPU, many times slower than fp32)."""
    return torch.cuda.is_bf16_supported() if on_gpu() else native_bf16_available()


def use_bf16(config: TrainConfig) -> bool:
    """bf16 when asked, or on `auto` where the hardware has it (`native_bf16`); fp32 otherwise. Asked for where
    the hardware lacks it, bf16 still runs, with a warning: on a 2-core AMD EPYC without AVX-512 BF16 the release
    align stage's first step took 366 s in bf16 against 19 s in fp32."""
    if config.precision == "auto":
        return native_bf16()
    if config.precision == "bf16" and not native_bf16():
        log.warning(
            "precision bf16: this %s, so bf16 is emulated, many times slower than fp32; precision auto picks "
            "fp32 here",
            "GPU does not support bf16" if on_gpu() else "CPU has neither AVX-512 BF16 nor AMX",
        )
    return config.precision == "bf16"


def deepspeed_config(config: TrainConfig, world: int) -> dict[str, Any]:
    """The DeepSpeed JSON named by `config.deepspeed` with every `auto` value filled from `config`."""
    path = Path(config.deepspeed)
    try:
        ds = json.loads(path.read_text())
    except FileNotFoundError:
        raise MllmError(f"{path}: DeepSpeed config not found (field deepspeed)") from None
    except json.JSONDecodeError as exc:
        raise MllmError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
    filled = {
        "train_micro_batch_size_per_gpu": config.micro_batch_size,
        "gradient_accumulation_steps": config.grad_accum,
        "train_batch_size": config.micro_batch_size * config.grad_accum * world,
        "gradient_clipping": config.optim.max_grad_norm,
    }
    for key, value in filled.items():
        if ds.get(key, "auto") == "auto":
            ds[key] = value
        elif ds[key] != value:
            raise MllmError(
                f'{path}: field {key} is {ds[key]} but the training config gives {value}; set it to "auto"'
            )
    bf16 = use_bf16(config)
    ds["bf16"] = {**ds.get("bf16", {}), "enabled": bf16}
    if config.precision == "fp16":
        ds["fp16"] = {**ds.get("fp16", {}), "enabled": True}
        ds["bf16"]["enabled"] = False
    elif ds.get("fp16", {}).get("enabled") == "auto":
        ds["fp16"]["enabled"] = False
    return ds


def zero_stage(ds: dict[str, Any]) -> int:
    return int(ds.get("zero_optimization", {}).get("stage", 0))


def cosine_lambda(max_steps: int, warmup_steps: int, min_ratio: float):
    """Learning-rate multiplier: linear warmup to 1, then cosine down to `min_ratio` at `max_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def initialize(model: nn.Module, config: TrainConfig, world: int) -> tuple[Any, torch.optim.Optimizer, Any]:
    """(engine, optimizer, scheduler) from `deepspeed.initialize` over the trainable parameters."""
    import deepspeed

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=config.optim.lr, betas=tuple(config.optim.betas), weight_decay=config.optim.weight_decay
    )
    warmup = (
        max(1, round(config.optim.warmup_ratio * config.max_steps)) if config.optim.warmup_ratio > 0 else 0
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, cosine_lambda(config.max_steps, warmup, config.optim.min_lr_ratio)
    )
    ds = deepspeed_config(config, world)
    engine, ds_optimizer, _, ds_scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds, dist_init_required=False
    )
    log.info(
        "DeepSpeed engine on %s: ZeRO stage %d, %s, world size %d",
        engine.device,
        zero_stage(ds),
        "bf16" if engine.bfloat16_enabled() else "fp16" if engine.fp16_enabled() else "fp32",
        world,
    )
    return engine, ds_optimizer, ds_scheduler


def base_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside a ZeRO wrapper (or the optimizer itself)."""
    inner = getattr(optimizer, "optimizer", None)
    return inner if isinstance(inner, torch.optim.Optimizer) else optimizer


@contextlib.contextmanager
def _fp32_param_groups(optimizer: Any) -> Iterator[None]:
    """ZeRO-3 keeps its fp32 partitions out of the torch optimizer's param groups between steps; put them in
    while the state is read or written (as DeepSpeed's own checkpointing does)."""
    if not hasattr(optimizer, "_set_fp32_optimizer_param_groups"):
        yield
        return
    optimizer._set_fp32_optimizer_param_groups()
    try:
        yield
    finally:
        optimizer._clear_fp32_optimizer_param_groups()


def optimizer_state(optimizer: Any) -> dict[str, Any]:
    """This rank's optimizer state (moments and step of its partition): tensors and plain values only."""
    with _fp32_param_groups(optimizer):
        return base_optimizer(optimizer).state_dict()


def load_optimizer_state(optimizer: Any, state: dict[str, Any]) -> None:
    """Restore this rank's optimizer state; the fp32 partitions were built from the restored weights."""
    with _fp32_param_groups(optimizer):
        base_optimizer(optimizer).load_state_dict(state)


@contextlib.contextmanager
def gathered(params: list[nn.Parameter], stage: int) -> Iterator[None]:
    """Under ZeRO-3, the full values of `params` for reading (saving); a no-op otherwise."""
    if stage != 3:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        yield


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def all_sum(values: list[float]) -> list[float]:
    """Element-wise sum of `values` over the ranks."""
    tensor = torch.tensor(values, dtype=torch.float64)
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.all_reduce(tensor)
    return tensor.tolist()
