"""Reliability of `mllm api` against bad requests and vanishing clients (issue 7), on a real uvicorn server on
127.0.0.1 driven by the official `openai` client and raw httpx. Complements tests/test_api_openai.py (bad
base64, non-images, max_tokens 0 / 100000, temperature, remote and `/etc/passwd` images, the body limit, invalid
JSON, the API key, 429 and cancel-on-disconnect): here the model name rules, too many images, empty messages,
wrong-typed fields, a real 10000x10000 image, a chunked oversized body, a symlink out of the image folder and
timing evidence that a disconnected stream frees its slot. Every refusal is followed by a normal request."""

from __future__ import annotations

import base64
import io
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from PIL import Image
from serve_support import free_port, lively_assistant, write_images

from serve.api import ApiServer, ApiSettings
from serve.background import ServerThread

MODEL = "tiny-test"


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    paths = write_images(tmp_path_factory.mktemp("allowed"))
    outside = tmp_path_factory.mktemp("outside") / "secret.png"
    Image.new("RGB", (8, 8), "white").save(outside)
    link = paths["red"].parent / "escape.png"
    link.symlink_to(outside)
    paths["escape"] = link
    return paths


@pytest.fixture(scope="module")
def server(images: dict[str, Path]) -> Iterator[ApiServer]:
    settings = ApiSettings(
        max_body_bytes=1024 * 1024,
        max_tokens_limit=1500,
        default_max_tokens=8,
        local_image_folder=images["red"].parent,
        concurrency=1,
        max_queue=4,
    )
    api = ApiServer(lively_assistant(), settings)
    thread = ServerThread(api.app, "127.0.0.1", free_port()).start()
    api.url = thread.url  # type: ignore[attr-defined]
    yield api
    thread.stop()


@pytest.fixture()
def client(server: ApiServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)  # type: ignore[attr-defined]


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def ask(question: str, *urls: str) -> list[dict]:
    parts = [{"type": "text", "text": question}] + [
        {"type": "image_url", "image_url": {"url": u}} for u in urls
    ]
    return [{"role": "user", "content": parts}]


def red(images: dict[str, Path]) -> str:
    return data_url(images["red"].read_bytes())


def assert_works(client: openai.OpenAI, images: dict[str, Path], max_tokens: int = 3) -> float:
    """A normal request succeeds; returns its latency in seconds."""
    start = time.monotonic()
    reply = client.chat.completions.create(
        model=MODEL, messages=ask("Color?", red(images)), max_tokens=max_tokens, temperature=0
    )
    assert reply.usage is not None and reply.usage.completion_tokens == max_tokens
    return time.monotonic() - start


def post(server: ApiServer, body: bytes | Iterator[bytes]) -> httpx.Response:
    return httpx.post(
        server.url + "/v1/chat/completions",  # type: ignore[attr-defined]
        content=body,
        headers={"Content-Type": "application/json"},
        timeout=60,
    )


def test_model_names(client: openai.OpenAI, server: ApiServer, images: dict[str, Path]) -> None:
    for name in (MODEL, "default"):
        reply = client.chat.completions.create(model=name, messages=ask("Hi", red(images)), max_tokens=2)
        assert reply.model == MODEL and reply.usage is not None and reply.usage.completion_tokens == 2
    for name in ("gpt-4o", "tiny-test ", "DEFAULT"):
        with pytest.raises(openai.NotFoundError) as info:
            client.chat.completions.create(model=name, messages=ask("Hi", red(images)))
        assert info.value.code == "model_not_found" and info.value.body["param"] == "model", info.value.body
        assert_works(client, images)
    response = post(server, b'{"messages": [{"role": "user", "content": "Hi"}]}')
    assert response.status_code == 400 and response.json()["error"]["param"] == "model"
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert_works(client, images)


def test_bad_requests_get_4xx_then_the_next_works(
    client: openai.OpenAI, server: ApiServer, images: dict[str, Path]
) -> None:
    five = [red(images)] * 5  # the tiny model accepts 4
    cases = [
        (ask("x", *five), {}, "too_many_images"),
        ([{"role": "user", "content": ""}], {}, "empty_message"),
        ([{"role": "user", "content": [{"type": "text", "text": "  "}]}], {}, "empty_message"),
        ([{"role": "user", "content": "Hi"}], {"max_tokens": -1}, "invalid_value"),
        ([{"role": "user", "content": "Hi"}], {"max_tokens": 1501}, "invalid_value"),
        ([{"role": "user", "content": "Hi"}], {"top_p": 0}, "invalid_value"),
        ([{"role": "user", "content": 42}], {}, None),
        ([{"role": "user", "content": [{"type": "video", "video": "x"}]}], {}, None),
        ([{"role": "assistant", "content": "I spoke first"}], {}, None),
    ]
    for messages, extra, code in cases:
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model=MODEL, messages=messages, **extra)
        assert info.value.code == code and info.value.body["message"], info.value.body
        assert_works(client, images)
    for body in (
        b'{"model": "tiny-test", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": "ten"}',
        b'{"model": "tiny-test", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1.5}',
        b'{"model": "tiny-test", "messages": [{"role": "user", "content": "Hi"}], "stream": "yes"}',
        b"[1, 2, 3]",
        b"\xff\xfe not utf-8",
        b"",
    ):
        response = post(server, body)
        assert response.status_code == 400, (body, response.text)
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
        assert_works(client, images)


def test_huge_image_and_chunked_oversized_body(
    client: openai.OpenAI, server: ApiServer, images: dict[str, Path]
) -> None:
    buffer = io.BytesIO()
    Image.new("1", (10000, 10000)).save(buffer, format="PNG")  # 100 megapixels, a few kB of PNG
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=ask("x", data_url(buffer.getvalue())))
    assert info.value.code == "image_too_large" and "over the limit" in info.value.message
    assert_works(client, images)

    def chunks() -> Iterator[bytes]:  # no Content-Length: the server must count as it reads
        yield b'{"model": "tiny-test", "messages": [{"role": "user", "content": "'
        for _ in range(40):
            yield b"A" * 64 * 1024
        yield b'"}]}'

    response = post(server, chunks())
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"
    assert_works(client, images)


def test_symlink_out_of_the_image_folder_is_refused(client: openai.OpenAI, images: dict[str, Path]) -> None:
    for ref in ("escape.png", str(images["escape"]), images["escape"].as_uri(), "sub/../../x.png"):
        with pytest.raises(openai.PermissionDeniedError) as info:
            client.chat.completions.create(model=MODEL, messages=ask("x", ref))
        assert info.value.code == "path_not_allowed"
    assert_works(client, images)


def test_disconnect_mid_stream_frees_the_slot_at_once(
    client: openai.OpenAI, server: ApiServer, images: dict[str, Path]
) -> None:
    """Concurrency 1: after a client drops a 1400-token stream, the next request takes about as long as on an
    idle server, not as long as the abandoned generation would have."""
    idle = statistics.median(assert_works(client, images, max_tokens=8) for _ in range(3))
    cancelled_before, finished_before = server.stats.cancelled, len(server.stats.finished)
    stream = client.chat.completions.create(
        model=MODEL, messages=ask("Talk.", red(images)), max_tokens=1400, temperature=0, stream=True
    )
    pieces = iter(stream)
    for _ in range(3):
        next(pieces)
    stream.close()
    after = assert_works(client, images, max_tokens=8)
    deadline = time.monotonic() + 10
    while server.stats.cancelled == cancelled_before and time.monotonic() < deadline:
        time.sleep(0.02)
    abandoned = server.stats.finished[finished_before]  # the slot is freed before the next request runs
    per_token = idle / 8
    print(
        f"idle request {idle:.3f}s, request right after a disconnect {after:.3f}s; the abandoned stream "
        f"stopped after {abandoned.completion_tokens} of 1400 tokens (~{per_token * 1400:.1f}s if it had run on)"
    )
    assert server.stats.cancelled == cancelled_before + 1
    assert abandoned.completion_tokens < 1400
    assert after < 3 * idle + 1.0, (after, idle)
