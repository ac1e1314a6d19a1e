"""Checkpoints of a run and the resume state inside them (`state/`): optimizer (one file per rank),
scheduler, step, data position and RNG (one file per rank), written inside the checkpoint's atomic write and
read back with `torch.load(weights_only=True)` only.

Every rank first writes its own files into a staging folder; rank 0 then writes the checkpoint and moves the
staged files into its `state/` before the folder is renamed into place.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mllm.errors import MllmError
from train.sampler import DataPosition

STATE_DIR = "state"
TRAINER_FILE = "trainer.json"
CHECKPOINTS_DIR = "checkpoints"


@dataclass
class TrainerState:
    """Counters that resume with the run."""

    step: int = 0
    tokens: int = 0
    samples: int = 0
    position: DataPosition = field(default_factory=DataPosition)
    skipped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0  # in training steps
    wall_seconds: float = 0.0  # all of it, set-up, evaluations and checkpoints too (0 in older checkpoints)

    def to_json(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "tokens": self.tokens,
            "samples": self.samples,
            "position": {"epoch": self.position.epoch, "batch": self.position.batch},
            "skipped": self.skipped,
            "seconds": self.seconds,
            "wall_seconds": self.wall_seconds,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainerState:
        position = DataPosition(int(data["position"]["epoch"]), int(data["position"]["batch"]))
        return cls(
            int(data["step"]),
            int(data["tokens"]),
            int(data["samples"]),
            position,
            dict(data.get("skipped", {})),
            float(data.get("seconds", 0.0)),
            float(data.get("wall_seconds", 0.0)),
        )


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch generator states as tensors and plain values (weights_only-loadable)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["kind"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["gauss"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def stage_rank_state(staging: Path, rank: int, optimizer_state: dict[str, Any]) -> None:
    """This rank's optimizer and RNG state, written into the staging folder."""
    staging.mkdir(parents=True, exist_ok=True)
    torch.save(optimizer_state, staging / f"optimizer_rank{rank}.pt")
    torch.save(rng_state(), staging / f"rng_rank{rank}.pt")


def write_state(
    folder: Path, staging: Path, trainer: TrainerState, scheduler_state: dict[str, Any], world: int
) -> None:
    """Fill `folder/state/` (inside the atomic checkpoint write) from the staged per-rank files."""
    state = folder / STATE_DIR
    state.mkdir()
    for rank in range(world):
        for name in (f"optimizer_rank{rank}.pt", f"rng_rank{rank}.pt"):
            if not (staging / name).is_file():
                raise MllmError(f"{staging / name}: rank {rank} did not stage its resume state")
            shutil.move(str(staging / name), str(state / name))
    torch.save(scheduler_state, state / "scheduler.pt")
    (state / TRAINER_FILE).write_text(json.dumps({**trainer.to_json(), "world_size": world}, indent=2) + "\n")
    shutil.rmtree(staging, ignore_errors=True)
    if staging.parent.is_dir() and not any(staging.parent.iterdir()):
        staging.parent.rmdir()


def _load(path: Path) -> Any:
    if not path.is_file():
        raise MllmError(f"{path}: resume state file is missing")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt or unsafe file; name the file instead
        raise MllmError(f"{path}: cannot read resume state ({type(exc).__name__}: {exc})") from None


@dataclass
class ResumeState:
    """Everything `state/` holds for one rank."""

    trainer: TrainerState
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: dict[str, Any]


def read_state(checkpoint: Path, rank: int, world: int) -> ResumeState:
    """This rank's resume state from a checkpoint folder; refuses a different world size."""
    state = checkpoint / STATE_DIR
    try:
        data = json.loads((state / TRAINER_FILE).read_text())
    except FileNotFoundError:
        raise MllmError(
            f"{checkpoint}: has no resume state ({STATE_DIR}/{TRAINER_FILE} is missing)"
        ) from None
    except json.JSONDecodeError as exc:
        raise MllmError(f"{state / TRAINER_FILE}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
    if int(data.get("world_size", 1)) != world:
        raise MllmError(
            f"{checkpoint}: saved with {data.get('world_size')} processes, resuming with {world}; "
            "resume with the same number of processes"
        )
    return ResumeState(
        TrainerState.from_json(data),
        _load(state / f"optimizer_rank{rank}.pt"),
        _load(state / "scheduler.pt"),
        _load(state / f"rng_rank{rank}.pt"),
    )


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Finished checkpoints of a run (with resume state), oldest first."""
    folder = output_dir / CHECKPOINTS_DIR
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("step-*") if (p / STATE_DIR / TRAINER_FILE).is_file())


def prune_checkpoints(output_dir: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints."""
    for old in list_checkpoints(output_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old)
