"""Load on `mllm api` (issue 7): N concurrent clients (default 32), each holding its own multi-turn conversation
of R requests (default 4) about its own image, streaming and non-streaming mixed. Every request must be
answered, or refused with 429/503 past the server's queue limit (the client then retries after Retry-After);
every answer must equal what the same conversation gets when run alone beforehand at temperature 0 (so no
reply lands in another client's conversation); the server's resident memory must settle back within 10% of
its idle value. `--quick` serves the tiny lively model instead of `mllm.load("default")`.

    python -m tests.stress.api_load [--quick] [--clients 32] [--requests 4]
"""

from __future__ import annotations

import argparse
import base64
import random
import shutil
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import openai

from tests.stress.common import PeakMemory, client_images, mllm_process, rss_mb, settled_rss_mb, write_result

QUESTIONS = [
    "What color is the background?",
    "Where is the square?",
    "Describe the picture.",
    "Are you sure?",
]
MAX_ATTEMPTS = 300


@dataclass
class Tally:
    """What the clients saw, shared between their threads."""

    answered: int = 0
    refused: dict[int, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def ask(
    client: openai.OpenAI, model: str, messages: list[dict], stream: bool, max_tokens: int, tally: Tally
) -> str:
    """One request, retried after a 429/503 refusal; returns the reply text."""
    for _ in range(MAX_ATTEMPTS):
        start = time.monotonic()
        try:
            if stream:
                chunks = list(
                    client.chat.completions.create(
                        model=model, messages=messages, max_tokens=max_tokens, temperature=0, stream=True
                    )
                )
                finishes = [
                    c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
                ]
                if len(finishes) != 1:
                    raise RuntimeError(f"stream ended without exactly one finish_reason: {finishes}")
                text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            else:
                reply = client.chat.completions.create(
                    model=model, messages=messages, max_tokens=max_tokens, temperature=0
                )
                text = reply.choices[0].message.content or ""
        except openai.APIStatusError as exc:
            if exc.status_code not in (429, 503):
                raise
            with tally.lock:
                tally.refused[exc.status_code] = tally.refused.get(exc.status_code, 0) + 1
            time.sleep(float(exc.response.headers.get("retry-after", "1")) * random.uniform(0.5, 1.5))
            continue
        with tally.lock:
            tally.answered += 1
            tally.latencies.append(time.monotonic() - start)
        return text
    raise RuntimeError(f"still refused after {MAX_ATTEMPTS} attempts")


def conversation(
    client: openai.OpenAI,
    model: str,
    image: Path,
    turns: int,
    first_stream: bool,
    max_tokens: int,
    tally: Tally,
) -> list[str]:
    """A multi-turn chat about one image (attached to the first message); the replies in order."""
    url = "data:image/png;base64," + base64.b64encode(image.read_bytes()).decode()
    messages: list[dict] = []
    replies = []
    for turn in range(turns):
        parts: list[dict] = [{"type": "text", "text": QUESTIONS[turn % len(QUESTIONS)]}]
        if turn == 0:
            parts.append({"type": "image_url", "image_url": {"url": url}})
        messages.append({"role": "user", "content": parts})
        reply = ask(
            client,
            model,
            messages,
            stream=(turn % 2 == 0) == first_stream,
            max_tokens=max_tokens,
            tally=tally,
        )
        messages.append({"role": "assistant", "content": reply})
        replies.append(reply)
    return replies


def run(
    quick: bool,
    clients: int,
    requests: int,
    concurrency: int,
    max_queue: int,
    max_tokens: int,
    port: int,
    threads: int,
) -> dict:
    work = Path(tempfile.mkdtemp(prefix="mllm-api-load-"))
    if quick:
        from tests.serve_support import lively_checkpoint

        model_spec = str(lively_checkpoint(work / "lively"))
    else:
        model_spec = "default"
    images = client_images(clients, work / "images")
    args = [
        "api",
        "--model",
        model_spec,
        "--port",
        str(port),
        "--concurrency",
        str(concurrency),
        "--max-queue",
        str(max_queue),
        "--max-tokens-limit",
        "64",
    ]
    base = f"http://127.0.0.1:{port}"
    with mllm_process(args, base + "/health", work / "server.log", threads) as server:
        client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=600)
        model = client.models.list().data[0].id
        loaded_rss = rss_mb(server.pid)
        warm = Tally()
        conversation(client, model, images[0], 1, False, max_tokens, warm)
        start = time.monotonic()
        reference = [
            conversation(client, model, images[i], requests, False, max_tokens, warm) for i in range(clients)
        ]
        sequential_s = time.monotonic() - start
        idle_rss = settled_rss_mb(server.pid)

        tally = Tally()
        results: dict[int, list[str]] = {}

        def one_client(index: int) -> None:
            own = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=600)
            try:
                results[index] = conversation(
                    own, model, images[index], requests, index % 2 == 0, max_tokens, tally
                )
            except Exception as exc:  # recorded and reported as a failure of this client
                with tally.lock:
                    tally.failures.append(f"client {index}: {type(exc).__name__}: {exc}")

        workers = [threading.Thread(target=one_client, args=(i,)) for i in range(clients)]
        start = time.monotonic()
        with PeakMemory(server.pid) as peak:
            for thread in workers:
                thread.start()
            for thread in workers:
                thread.join()
        concurrent_s = time.monotonic() - start
        after_rss = settled_rss_mb(server.pid, 5.0)
        health = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=2
        )
    mismatched = [i for i in range(clients) if i in results and results[i] != reference[i]]
    latencies = sorted(tally.latencies)
    result = {
        "script": "api_load",
        "model": model,
        "quick": quick,
        "clients": clients,
        "requests_per_client": requests,
        "concurrency": concurrency,
        "threads": threads,
        "max_queue": max_queue,
        "max_tokens": max_tokens,
        "requests": clients * requests,
        "answered": tally.answered,
        "refused": tally.refused,
        "failures": tally.failures,
        "conversations_mismatched": mismatched,
        "distinct_first_replies": len({r[0] for r in reference}),
        "sequential_s": round(sequential_s, 1),
        "concurrent_s": round(concurrent_s, 1),
        "latency_p50_s": round(statistics.median(latencies), 2) if latencies else None,
        "latency_p95_s": round(latencies[int(0.95 * (len(latencies) - 1))], 2) if latencies else None,
        "rss_loaded_mb": round(loaded_rss),
        "rss_idle_mb": round(idle_rss),
        "rss_peak_mb": round(peak.peak),
        "rss_after_mb": round(after_rss),
        "rss_after_vs_idle": round(after_rss / idle_rss - 1, 3),
        "work": str(work),
        "served_after_load": bool(health.choices[0].message.content is not None),
    }
    result["ok"] = (
        not tally.failures
        and not mismatched
        and tally.answered == clients * requests
        and abs(result["rss_after_vs_idle"]) <= 0.10
        and result["served_after_load"]
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="the tiny lively model instead of `default`")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=4, help="requests (turns) per client")
    parser.add_argument("--concurrency", type=int, default=2, help="the server's --concurrency")
    parser.add_argument("--max-queue", type=int, default=16, help="the server's --max-queue (429 past it)")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads of the server (OMP_NUM_THREADS)"
    )
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args(argv)
    result = run(
        args.quick,
        args.clients,
        args.requests,
        args.concurrency,
        args.max_queue,
        args.max_tokens,
        args.port,
        args.threads,
    )
    write_result("api_load" + ("_quick" if args.quick else ""), result)
    if result["ok"]:
        shutil.rmtree(result["work"])  # kept (logs, checkpoints) when something failed
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
