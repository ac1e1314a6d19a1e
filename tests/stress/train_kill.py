"""SIGKILL a training run at random points and resume it (issue 7). A tiny align run (`mllm train` on the tiny
random model, a checkpoint every step) is first run once to warm up and once uninterrupted; then the same run is
killed with SIGKILL at K random points (default 5: the first anywhere from start-up to its first checkpoint, the
others at a random moment of a step after the run has made progress, so some land while a checkpoint is being
written) and resumed with `--resume` after each. Checked after every kill: the newest visible checkpoint is
complete (mllm.json with its step, projector, resume state; an older one may be caught half-deleted by pruning
and is reported), no `final/` exists, and the next run resumes from the newest complete checkpoint. At the end
the resumed run's weights must equal the uninterrupted run's and its metrics list every step once.

    python -m tests.stress.train_kill [--quick] [--kills 5] [--steps 12] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from tests.stress.common import REPO, write_result
from tests.train_support import make_data, train_env, write_config

RESUMED = re.compile(r"resumed from (\S+) at step (\d+)")


def start(config: Path, log: Path, resume: bool) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "train", str(config), *(["--resume"] if resume else [])]
    with log.open("wb") as out:
        return subprocess.Popen(args, cwd=REPO, env=train_env(), stdout=out, stderr=subprocess.STDOUT)


def scan(run: Path) -> tuple[list[int], list[int]]:
    """(steps of complete checkpoints, steps of visible but incomplete ones). Complete: mllm.json names the
    folder's step, projector and resume state are there. A folder vanishing mid-scan (pruning) is incomplete."""
    complete, incomplete = [], []
    for folder in sorted((run / "checkpoints").glob("step-*")):
        step = int(folder.name.split("-")[1])
        try:
            meta = json.loads((folder / "mllm.json").read_text())
            ok = (
                meta["step"] == step
                and (folder / "state" / "trainer.json").is_file()
                and (folder / "projector.safetensors").is_file()
            )
        except (FileNotFoundError, json.JSONDecodeError):
            ok = False
        (complete if ok else incomplete).append(step)
    return complete, incomplete


def newest_complete(run: Path) -> int | None:
    complete, _ = scan(run)
    return complete[-1] if complete else None


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "projector.safetensors"))


def run(kills: int, steps: int, seed: int) -> dict:
    rng = random.Random(seed)
    work = Path(tempfile.mkdtemp(prefix="mllm-train-kill-"))
    data = make_data(work / "shapes")
    fields = {"max_steps": steps, "save_every": 1}
    # a first start pays one-time costs (DeepSpeed builds a CPU op, ~20 s) that would stretch the timings the
    # kills are placed by: run the job once before the timed uninterrupted run
    warmup = start(
        write_config(work / "warmup.yaml", data, work / "warmup", **fields), work / "warmup.log", False
    )
    if warmup.wait() != 0:
        raise RuntimeError(f"the warm-up run failed; see {work / 'warmup.log'}")
    straight_config = write_config(work / "straight.yaml", data, work / "straight", **fields)
    started = time.monotonic()
    proc = start(straight_config, work / "straight.log", resume=False)
    first_checkpoint_s = None
    while proc.poll() is None:
        if first_checkpoint_s is None and newest_complete(work / "straight") is not None:
            first_checkpoint_s = time.monotonic() - started
        time.sleep(0.05)
    straight_s = time.monotonic() - started
    if proc.returncode != 0 or first_checkpoint_s is None:
        raise RuntimeError(f"the uninterrupted run failed; see {work / 'straight.log'}")
    step_s = (straight_s - first_checkpoint_s) / max(1, steps - 1)

    config = write_config(work / "killed.yaml", data, work / "killed", **fields)
    events = []
    for attempt in range(kills):
        run_dir = work / "killed"
        before = newest_complete(run_dir)
        log = work / f"killed-{attempt}.log"
        began = time.monotonic()
        proc = start(config, log, resume=before is not None)
        if attempt == 0:
            delay = rng.uniform(0.3, 1.0) * first_checkpoint_s
            while proc.poll() is None and time.monotonic() - began < delay:
                time.sleep(0.01)
        else:
            while proc.poll() is None and newest_complete(run_dir) == before:
                time.sleep(0.01)
            delay = rng.uniform(0, step_s)
            pause_until = time.monotonic() + delay
            while proc.poll() is None and time.monotonic() < pause_until:
                time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        text = log.read_text(errors="replace")
        resumed = RESUMED.search(text)
        complete, incomplete = scan(run_dir)
        folder = run_dir / "checkpoints"
        hidden = sorted(p.name for p in folder.glob(".*")) if folder.is_dir() else []
        event = {
            "kill": attempt + 1,
            "killed_after_s": round(time.monotonic() - began, 2),
            "killed": proc.returncode == -signal.SIGKILL,
            "resumed_from_step": int(resumed.group(2)) if resumed else None,
            "expected_resume_step": before,
            "complete_after": complete,
            "incomplete_after": incomplete,
            "hidden_leftovers": hidden,
            "final_exists": (run_dir / "final").exists(),
        }
        event["ok"] = (
            event["killed"]
            and event["resumed_from_step"] == event["expected_resume_step"]
            and not event["final_exists"]
            and all(step < max(complete, default=0) for step in incomplete)
        )
        events.append(event)
        print(json.dumps(event), flush=True)
    last = newest_complete(work / "killed")
    proc = start(config, work / "killed-final.log", resume=last is not None)
    proc.wait()
    final_log = (work / "killed-final.log").read_text(errors="replace")
    resumed = RESUMED.search(final_log)
    a, b = (
        weights(work / "straight" / "final"),
        weights(work / "killed" / "final") if proc.returncode == 0 else {},
    )
    max_diff = max((float((a[k] - b[k]).abs().max()) for k in a if k in b), default=float("inf"))
    rows = [json.loads(line) for line in (work / "killed" / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in rows if r.get("kind", "train") == "train"]
    result = {
        "script": "train_kill",
        "steps": steps,
        "kills": kills,
        "seed": seed,
        "straight_s": round(straight_s, 1),
        "events": events,
        "final_resumed_from_step": int(resumed.group(2)) if resumed else None,
        "final_expected_resume_step": last,
        "final_returncode": proc.returncode,
        "same_keys": a.keys() == b.keys(),
        "max_abs_weight_diff": max_diff,
        "metrics_steps_once": train_steps == list(range(1, steps + 1)),
        "work": str(work),
    }
    result["ok"] = (
        all(e["ok"] for e in events)
        and proc.returncode == 0
        and result["same_keys"]
        and max_diff <= 1e-5
        and result["final_resumed_from_step"] == result["final_expected_resume_step"]
        and result["metrics_steps_once"]
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="2 kills over 6 steps")
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    kills, steps = (2, 6) if args.quick else (args.kills, args.steps)
    result = run(kills, steps, args.seed)
    write_result("train_kill" + ("_quick" if args.quick else ""), result)
    if result["ok"]:
        shutil.rmtree(result["work"])  # kept (logs, checkpoints) when something failed
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
