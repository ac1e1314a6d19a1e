"""The plumbing of `mllm api` between the event loop and the generation threads: the concurrency gate (slots
and a bounded queue), one reply in flight (pieces on an asyncio queue, cancellation), the streaming response
that cancels its reply however it ends, and the server's counters."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi.responses import StreamingResponse
from starlette.types import Send

from mllm.generation import GenerationStats
from serve.openai_format import ApiError


@dataclass
class ServerStats:
    """Counters for monitoring and tests: finished generations (with their stats) and cancellations."""

    finished: list[GenerationStats] = field(default_factory=list)
    cancelled: int = 0
    active: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def started(self) -> None:
        with self.lock:
            self.active += 1

    def ended(self, stats: GenerationStats, abandoned: bool) -> None:
        with self.lock:
            self.active -= 1
            self.finished.append(stats)
            self.cancelled += int(abandoned)


class GenerationGate:
    """At most `concurrency` generations at once; at most `max_queue` requests waiting for a slot. Lives on
    the event loop; worker threads release their slot through `loop.call_soon_threadsafe`."""

    def __init__(self, concurrency: int, max_queue: int) -> None:
        self.semaphore = asyncio.Semaphore(concurrency)
        self.max_queue = max_queue
        self.waiting = 0

    def check(self) -> None:
        """Refuse (429) when every slot is busy and the queue is full."""
        if self.semaphore.locked() and self.waiting >= self.max_queue:
            raise ApiError(
                429,
                f"the server is busy ({self.waiting} request(s) waiting); retry later",
                code="queue_full",
                type="rate_limit_error",
            )

    async def enter(self) -> None:
        self.check()
        self.waiting += 1
        try:
            await self.semaphore.acquire()
        finally:
            self.waiting -= 1

    def release(self) -> None:
        self.semaphore.release()


class Reply:
    """One generation in flight: pieces (or an exception, then _DONE) arrive on `queue`. `close()` stops it;
    when that happens before generation ended, `abandoned` tells the worker the client went away."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.cancel = threading.Event()
        self.abandoned = threading.Event()
        self.stats = GenerationStats()
        self.finished = False

    def close(self) -> None:
        if not self.finished:
            self.finished = True
            if not self.cancel.is_set():
                self.abandoned.set()
            self.cancel.set()


class CancellingStream(StreamingResponse):
    """A streaming response that closes its reply however it ends (finished, client gone, server stopping)."""

    def __init__(self, content: AsyncIterator[str], reply: Reply) -> None:
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self.reply = reply

    async def stream_response(self, send: Send) -> None:
        try:
            await super().stream_response(send)
        finally:
            self.reply.close()
