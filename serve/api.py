"""`mllm api`: an OpenAI-compatible HTTP API (FastAPI + uvicorn) over an Assistant.

Endpoints: `POST /v1/chat/completions` (OpenAI messages with image_url parts; `"stream": true` answers with
server-sent events), `GET /v1/models`, `GET /v1/models/{id}` and `GET /health`. Every refusal uses OpenAI's
error shape `{"error": {"message", "type", "param", "code"}}` with a 4xx status: a wrong or missing API key
(401), a body over the size limit (413), invalid JSON or fields (400), a `model` other than the served model's
id or the alias "default" (404 `model_not_found`), a full queue (429).

Generation runs in worker threads, at most `concurrency` at once with at most `max_queue` requests waiting;
a client that disconnects mid-stream cancels its generation.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from mllm.assistant import Assistant
from mllm.errors import MllmError
from mllm.generation import GenerationStats
from serve.api_runtime import CancellingStream, GenerationGate, Reply, ServerStats
from serve.openai_format import ApiError, ChatRequest, ImagePolicy, parse_chat_request
from serve.session import stream_reply

log = logging.getLogger(__name__)
_DONE = object()
LOOPBACK = ("127.0.0.1", "localhost", "::1")
MODEL_ALIAS = "default"


@dataclass
class ApiSettings:
    """Limits and access rules of the API server."""

    api_key: str | None = None
    max_body_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096
    max_tokens_limit: int = 2048
    default_max_tokens: int = 512
    allow_remote_images: bool = False
    local_image_folder: Path | None = None
    concurrency: int = 1
    max_queue: int = 8


def _error(exc: ApiError) -> JSONResponse:
    headers = {"Retry-After": "1"} if exc.status == 429 else None
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


class ApiServer:
    """The FastAPI application over one Assistant (`.app`), with its limits and counters."""

    def __init__(self, assistant: Assistant, settings: ApiSettings) -> None:
        self.assistant = assistant
        self.settings = settings
        self.stats = ServerStats()
        self.policy = ImagePolicy(
            max_pixels=settings.max_image_pixels,
            max_bytes=settings.max_body_bytes,
            allow_remote=settings.allow_remote_images,
            local_folder=settings.local_image_folder,
        )
        self.created = int(time.time())
        self._gate: GenerationGate | None = None
        self.app = self._build()

    @property
    def gate(self) -> GenerationGate:
        if self._gate is None:  # created on first use, inside the server's event loop
            self._gate = GenerationGate(self.settings.concurrency, self.settings.max_queue)
        return self._gate

    def _build(self) -> FastAPI:
        app = FastAPI(title="mllm API", version="1", docs_url=None, redoc_url=None, openapi_url=None)

        @app.exception_handler(ApiError)
        async def api_error(request: Request, exc: ApiError) -> JSONResponse:
            return _error(exc)

        @app.exception_handler(StarletteHTTPException)
        async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
            code = "not_found" if exc.status_code == 404 else None
            return _error(
                ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", code=code)
            )

        @app.get("/health")
        async def health() -> dict[str, Any]:
            return {"status": "ok", "model": self.assistant.name}

        @app.get("/v1/models")
        async def models(request: Request) -> dict[str, Any]:
            self._authorize(request)
            return {"object": "list", "data": [self._model_card()]}

        @app.get("/v1/models/{model_id}")
        async def model(model_id: str, request: Request) -> dict[str, Any]:
            self._authorize(request)
            if model_id != self.assistant.name:
                raise ApiError(
                    404,
                    f"model {model_id!r} not found; this server has {self.assistant.name!r}",
                    "model",
                    "model_not_found",
                )
            return self._model_card()

        @app.post("/v1/chat/completions")
        async def chat_completions(request: Request) -> Any:
            self._authorize(request)
            self.gate.check()  # refuse a full queue before reading the body and decoding its images
            body = await self._read_json(request)
            self._check_model(body)
            chat = await anyio.to_thread.run_sync(self._parse, body)
            return await self._complete(chat)

        return app

    def _model_card(self) -> dict[str, Any]:
        return {"id": self.assistant.name, "object": "model", "created": self.created, "owned_by": "mllm"}

    def _authorize(self, request: Request) -> None:
        key = self.settings.api_key
        if key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), key.encode()):
            raise ApiError(
                401,
                "Incorrect or missing API key: send 'Authorization: Bearer <key>'",
                code="invalid_api_key",
            )

    def _check_model(self, body: Any) -> None:
        """Refuse a request for a model this server does not have (the served id and "default" are accepted)."""
        if not isinstance(body, dict):
            return  # parse_chat_request explains what the body should be
        model = body.get("model")
        served = self.assistant.name
        if not isinstance(model, str) or not model:
            raise ApiError(
                400, f"model: expected the model id as a string ({served!r} or {MODEL_ALIAS!r})", "model"
            )
        if model not in (served, MODEL_ALIAS):
            raise ApiError(
                404,
                f"model {model!r} not found; this server has {served!r} (or use {MODEL_ALIAS!r})",
                "model",
                "model_not_found",
            )

    async def _read_json(self, request: Request) -> Any:
        limit = self.settings.max_body_bytes
        declared = request.headers.get("content-length")
        too_big = ApiError(
            413, f"the request body is larger than the limit of {limit} bytes", code="request_too_large"
        )
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():  # read to the end (bounded) so the client sees the 413 cleanly
            size += len(chunk)
            if size <= limit:
                chunks.append(chunk)
            elif size > 4 * limit or (declared is not None and int(declared) > 4 * limit):
                raise too_big
        if size > limit:
            raise too_big
        try:
            return json.loads(b"".join(chunks))
        except UnicodeDecodeError:
            raise ApiError(400, "the request body is not UTF-8 JSON", code="invalid_json") from None
        except json.JSONDecodeError as exc:
            raise ApiError(
                400, f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}", code="invalid_json"
            ) from None

    def _parse(self, body: Any) -> ChatRequest:
        return parse_chat_request(
            body,
            self.policy,
            self.settings.max_tokens_limit,
            self.settings.default_max_tokens,
            self.assistant.model.config.max_images,
        )

    async def _start(self, chat: ChatRequest) -> Reply:
        """Wait for a slot, then start generating in a worker thread; pieces arrive on the reply's queue."""
        await self.gate.enter()
        loop = asyncio.get_running_loop()
        reply = Reply()
        try:
            pieces = await anyio.to_thread.run_sync(
                lambda: stream_reply(self.assistant, chat.turns, chat.settings, reply.cancel, reply.stats)
            )
        except MllmError as exc:
            self.gate.release()
            code = "context_length_exceeded" if "context" in str(exc) else None
            raise ApiError(400, str(exc), "messages", code) from None
        except BaseException:
            self.gate.release()
            raise

        def work() -> None:
            self.stats.started()
            try:
                for piece in pieces:
                    loop.call_soon_threadsafe(reply.queue.put_nowait, piece)
            except BaseException as exc:  # handed to the request's task, raised or reported there
                loop.call_soon_threadsafe(reply.queue.put_nowait, exc)
            finally:
                abandoned = reply.abandoned.is_set()  # read before _DONE lets the request close the reply
                # one callback frees the slot and then ends the reply, so the client never has its answer (or
                # sees the counters move) while the slot is still taken
                loop.call_soon_threadsafe(self._finish, reply)
                self.stats.ended(reply.stats, abandoned)
                if abandoned:
                    log.info(
                        "client went away: generation stopped after %d token(s)",
                        reply.stats.completion_tokens,
                    )

        threading.Thread(target=work, name="mllm-api-reply", daemon=True).start()
        return reply

    def _finish(self, reply: Reply) -> None:
        """On the event loop: free the generation slot, then mark the reply done."""
        self.gate.release()
        reply.queue.put_nowait(_DONE)

    async def _complete(self, chat: ChatRequest) -> Any:
        reply = await self._start(chat)
        reply_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if chat.stream:
            return CancellingStream(self._events(reply, chat, reply_id, created), reply)
        parts: list[str] = []
        try:
            while (item := await reply.queue.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                parts.append(item)
        finally:
            reply.close()
        stats = reply.stats
        return {
            "id": reply_id,
            "object": "chat.completion",
            "created": created,
            "model": self.assistant.name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(parts)},
                    "finish_reason": stats.finish_reason,
                    "logprobs": None,
                }
            ],
            "usage": _usage(stats),
        }

    async def _events(
        self, reply: Reply, chat: ChatRequest, reply_id: str, created: int
    ) -> AsyncIterator[str]:
        def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
            data = {
                "id": reply_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": self.assistant.name,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
            }
            return f"data: {json.dumps(data)}\n\n"

        yield chunk({"role": "assistant", "content": ""})
        while (item := await reply.queue.get()) is not _DONE:
            if isinstance(item, BaseException):
                log.error("generation failed: %s", item, exc_info=item)
                error = ApiError(500, f"generation failed: {item}", type="server_error")
                yield f"data: {json.dumps(error.body())}\n\n"
                return
            yield chunk({"content": item})
        yield chunk({}, reply.stats.finish_reason)
        if chat.include_usage:
            data = {
                "id": reply_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": self.assistant.name,
                "choices": [],
                "usage": _usage(reply.stats),
            }
            yield f"data: {json.dumps(data)}\n\n"
        yield "data: [DONE]\n\n"


def _usage(stats: GenerationStats) -> dict[str, int]:
    return {
        "prompt_tokens": stats.prompt_tokens,
        "completion_tokens": stats.completion_tokens,
        "total_tokens": stats.prompt_tokens + stats.completion_tokens,
    }


def run_server(
    assistant: Assistant, settings: ApiSettings, host: str = "127.0.0.1", port: int = 8000
) -> None:
    """Serve the API until interrupted (blocking)."""
    import uvicorn

    if host not in LOOPBACK and settings.api_key is None:
        log.warning(
            "binding %s without an API key: anyone who can reach this address can use the model", host
        )
    server = ApiServer(assistant, settings)
    log.info(
        "mllm API for %s at http://%s:%d/v1 (key %s)",
        assistant.name,
        host,
        port,
        "required" if settings.api_key else "not required",
    )
    uvicorn.run(server.app, host=host, port=port, log_level="info")
