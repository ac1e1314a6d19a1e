"""Shared parts of the stress scripts: a real `mllm` server process on 127.0.0.1, its resident memory, distinct
per-client images, and the JSON result each script leaves in runs/stress/."""

from __future__ import annotations

import colorsys
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO / "configs" / "model" / "tiny-test.yaml"
RESULTS = REPO / "runs" / "stress"


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a server or trainer child: offline, repository on the path."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "PYTHONPATH": str(REPO),
    }
    env.update(extra)
    return env


@contextmanager
def mllm_process(
    args: list[str], ready_url: str, log_path: Path, threads: int = 1, timeout_s: float = 300
) -> Iterator[subprocess.Popen[bytes]]:
    """Run `python -m serve.cli ARGS` with `threads` torch threads until the block ends; waits until `ready_url`
    answers below 500. (On a small busy machine, one thread per generation is ~10x faster than torch's default
    of one per core: the threads of concurrent generations otherwise fight for the cores.)"""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "serve.cli", *args],
            cwd=REPO,
            env=child_env(OMP_NUM_THREADS=str(threads)),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"mllm {args[0]} exited with {process.returncode}; see {log_path}")
                try:
                    if httpx.get(ready_url, timeout=2).status_code < 500:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"mllm {args[0]} did not answer {ready_url} in {timeout_s}s")
                time.sleep(0.5)
            yield process
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MiB (from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


class PeakMemory:
    """Samples a process's resident memory every 0.2 s in a thread; `.peak` in MiB."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = rss_mb(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, rss_mb(self.pid))

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def settled_rss_mb(pid: int, seconds: float = 3.0) -> float:
    """Resident memory after the process has been idle for `seconds`."""
    time.sleep(seconds)
    return rss_mb(pid)


def client_images(count: int, folder: Path, size: int = 64) -> list[Path]:
    """`count` visibly different PNGs: a hue per client and a square whose place and size vary."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        hue = index / count
        back = tuple(int(255 * c) for c in colorsys.hsv_to_rgb(hue, 0.9, 0.9))
        front = tuple(int(255 * c) for c in colorsys.hsv_to_rgb((hue + 0.5) % 1, 0.8, 0.6))
        image = Image.new("RGB", (size, size), back)
        side = 8 + (index * 7) % (size // 2)
        x, y = (index * 13) % (size - side), (index * 29) % (size - side)
        ImageDraw.Draw(image).rectangle([x, y, x + side, y + side], fill=front)
        paths.append(folder / f"client-{index:02d}.png")
        image.save(paths[-1])
    return paths


def write_result(name: str, result: dict[str, Any]) -> Path:
    """runs/stress/NAME.json, and the result as one JSON line on stdout."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result), flush=True)
    return path
