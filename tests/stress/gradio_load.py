"""Load on the Gradio queue of `mllm serve` (issue 7): N `gradio_client` clients at once (default 8), each
holding its own two-turn chat about its own image (the follow-up relies on the conversation Gradio keeps per
client). Every reply must equal what the same chat gets when run alone beforehand at temperature 0 (no reply
lands in another client's conversation), and the server's resident memory must settle back within 10% of idle.
`--quick` serves the tiny lively model instead of `mllm.load("default")`.

    python -m tests.stress.gradio_load [--quick] [--clients 8]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

from gradio_client import Client, handle_file

from tests.stress.common import PeakMemory, client_images, mllm_process, rss_mb, settled_rss_mb, write_result

QUESTIONS = ["What color is the background?", "Are you sure?"]


def chat(url: str, image: Path, max_tokens: int, latencies: list[float]) -> list[str]:
    """A fresh client's two-turn chat about `image` (attached to the first message)."""
    client = Client(url, verbose=False)
    replies = []
    for turn, question in enumerate(QUESTIONS):
        files = [handle_file(str(image))] if turn == 0 else []
        start = time.monotonic()
        reply = client.predict({"text": question, "files": files}, 0.0, 1.0, max_tokens, api_name="/chat")
        latencies.append(time.monotonic() - start)
        replies.append(str(reply))
    return replies


def run(quick: bool, clients: int, concurrency: int, max_tokens: int, port: int, threads: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix="mllm-gradio-load-"))
    if quick:
        from tests.serve_support import lively_checkpoint

        model_spec = str(lively_checkpoint(work / "lively"))
    else:
        model_spec = "default"
    images = client_images(clients, work / "images")
    url = f"http://127.0.0.1:{port}/"
    args = [
        "serve",
        "--model",
        model_spec,
        "--port",
        str(port),
        "--concurrency",
        str(concurrency),
        "--max-queue",
        "64",
    ]
    with mllm_process(args, url, work / "server.log", threads) as server:
        loaded_rss = rss_mb(server.pid)
        chat(url, images[0], max_tokens, [])
        start = time.monotonic()
        reference = [chat(url, image, max_tokens, []) for image in images]
        sequential_s = time.monotonic() - start
        idle_rss = settled_rss_mb(server.pid)

        results: dict[int, list[str]] = {}
        failures: list[str] = []
        latencies: list[float] = []

        def one_client(index: int) -> None:
            try:
                results[index] = chat(url, images[index], max_tokens, latencies)
            except Exception as exc:  # recorded and reported as a failure of this client
                failures.append(f"client {index}: {type(exc).__name__}: {exc}")

        workers = [threading.Thread(target=one_client, args=(i,)) for i in range(clients)]
        start = time.monotonic()
        with PeakMemory(server.pid) as peak:
            for thread in workers:
                thread.start()
            for thread in workers:
                thread.join()
        concurrent_s = time.monotonic() - start
        after_rss = settled_rss_mb(server.pid, 5.0)
        served_after = bool(chat(url, images[0], 2, [])[0] is not None)
    mismatched = [i for i in range(clients) if i in results and results[i] != reference[i]]
    result = {
        "script": "gradio_load",
        "quick": quick,
        "model": "tiny-test (lively)" if quick else "default",
        "clients": clients,
        "turns_per_client": len(QUESTIONS),
        "concurrency": concurrency,
        "threads": threads,
        "max_tokens": max_tokens,
        "requests": clients * len(QUESTIONS),
        "answered": len(latencies),
        "failures": failures,
        "conversations_mismatched": mismatched,
        "distinct_first_replies": len({r[0] for r in reference}),
        "sequential_s": round(sequential_s, 1),
        "concurrent_s": round(concurrent_s, 1),
        "latency_p50_s": round(statistics.median(latencies), 2) if latencies else None,
        "rss_loaded_mb": round(loaded_rss),
        "rss_idle_mb": round(idle_rss),
        "rss_peak_mb": round(peak.peak),
        "rss_after_mb": round(after_rss),
        "rss_after_vs_idle": round(after_rss / idle_rss - 1, 3),
        "work": str(work),
        "served_after_load": served_after,
    }
    result["ok"] = (
        not failures
        and not mismatched
        and len(latencies) == clients * len(QUESTIONS)
        and abs(result["rss_after_vs_idle"]) <= 0.10
        and served_after
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="the tiny lively model instead of `default`")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=2, help="the server's --concurrency")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads of the server (OMP_NUM_THREADS)"
    )
    parser.add_argument("--port", type=int, default=7866)
    args = parser.parse_args(argv)
    result = run(args.quick, args.clients, args.concurrency, args.max_tokens, args.port, args.threads)
    write_result("gradio_load" + ("_quick" if args.quick else ""), result)
    if result["ok"]:
        shutil.rmtree(result["work"])  # kept (logs, checkpoints) when something failed
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
