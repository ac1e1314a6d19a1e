"""Run an ASGI app (the API, or any FastAPI app) with uvicorn in a background thread of this process:
for tests and for embedding the server in another program."""

from __future__ import annotations

import threading
import time
from typing import Any


class ServerThread:
    """Run an ASGI app with uvicorn in a background thread (tests, embedding); `stop()` shuts it down."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 8000) -> None:
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, name="mllm-api-server", daemon=True)
        self.url = f"http://{host}:{port}"

    def start(self, timeout_s: float = 30.0) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server at {self.url} did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
