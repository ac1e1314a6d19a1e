"""Peak resident memory of `mllm serve` (the Gradio UI) while loading, idle and while answering, read from
/proc (VmRSS, VmHWM) of the real server process; the high-water mark is reset (/proc/PID/clear_refs) once the
server is up, so the answering peak is not the loading one."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.bench_decode import shapes_image
from bench.common import status_mb

STOP_TIMEOUT_S = 60  # how long `mllm serve` may take to stop after SIGINT before it is killed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tree_rss_mb(pid: int) -> float:
    """RSS of the process and its children (Gradio may start helpers)."""
    total = status_mb("VmRSS", pid)
    children = Path(f"/proc/{pid}/task/{pid}/children")
    for child in children.read_text().split() if children.is_file() else []:
        total += _tree_rss_mb(int(child))
    return total


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run(spec: str, questions: int = 4) -> list[dict[str, Any]]:
    from gradio_client import Client, handle_file

    port = _free_port()
    server_log = Path(os.environ.get("TMPDIR", "/tmp")) / "mllm-bench-memory-serve.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    log_file = server_log.open("w")  # read back when the server has to be killed
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "serve.cli",
            "serve",
            "--model",
            spec,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--device",
            "cpu",  # resident memory of the CPU server the targets are about
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log_file,
        # as at a terminal: a shell's background job (`make bench &`) ignores SIGINT, and children inherit that
        preexec_fn=_default_sigint,
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.time() + 300
        while True:
            try:
                urllib.request.urlopen(url, timeout=5)
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise RuntimeError("mllm serve did not come up") from None
                time.sleep(1)
        time.sleep(3)
        idle = _tree_rss_mb(server.pid)
        load_peak = status_mb("VmHWM", server.pid)
        Path(f"/proc/{server.pid}/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        image = Path(os.environ.get("TMPDIR", "/tmp")) / "mllm-bench-memory.png"
        shapes_image().save(image)
        client = Client(url, verbose=False)
        api = next(iter(client.view_api(print_info=False, return_format="dict")["named_endpoints"]))
        for _ in range(questions):
            client.predict({"text": "Describe the image.", "files": [handle_file(str(image))]}, api_name=api)
        peak = status_mb("VmHWM", server.pid)
        after = _tree_rss_mb(server.pid)
        client.close()  # its heartbeat stream would otherwise stay open while the server shuts down
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            # the measurements above are taken; a slow shutdown must not lose the other sections' results
            tail = server_log.read_text(errors="replace").splitlines()[-15:]
            print(
                f"mllm serve was still running {STOP_TIMEOUT_S} s after SIGINT: killed; the end of its log "
                f"({server_log}):",
                *tail,
                sep="\n",
                file=sys.stderr,
                flush=True,
            )
            server.kill()
            server.wait()
        log_file.close()
    return [
        {
            "title": f"Memory of `mllm serve --model {spec}`",
            "note": "Resident memory of the server process. Target: peak <= 1.2 GB with the default assistant. "
            "The answering peak is measured after resetting the high-water mark left by loading.",
            "rows": [
                {"state": "peak while loading the model (VmHWM)", "MB": load_peak},
                {"state": "idle after start-up", "MB": idle},
                {"state": f"peak while answering {questions} image questions (VmHWM)", "MB": peak},
                {"state": "after answering", "MB": after},
            ],
        }
    ]
