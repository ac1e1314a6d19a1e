"""`mllm api` driven by the official `openai` client against a real uvicorn server on 127.0.0.1: models,
completions with base64 images (streaming and not), sampling limits, stop strings, usage, the API key, size
and pixel limits, image source rules, the queue limit and cancellation on disconnect. Every error case is
followed by a normal request that succeeds."""

from __future__ import annotations

import base64
import functools
import http.server
import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from PIL import Image
from serve_support import free_port, lively_assistant, write_images

from mllm.assistant import Assistant
from serve.api import ApiServer, ApiSettings
from serve.background import ServerThread

KEY = "test-key-123"


@pytest.fixture(scope="module")
def assistant() -> Assistant:
    return lively_assistant()


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_images(tmp_path_factory.mktemp("allowed"))


@pytest.fixture(scope="module")
def server(assistant: Assistant, images: dict[str, Path]) -> Iterator[ApiServer]:
    settings = ApiSettings(
        api_key=KEY,
        max_body_bytes=512 * 1024,
        max_image_pixels=200 * 200,
        max_tokens_limit=1500,
        default_max_tokens=16,
        local_image_folder=images["red"].parent,
        concurrency=1,
        max_queue=0,
    )
    api = ApiServer(assistant, settings)
    thread = ServerThread(api.app, "127.0.0.1", free_port()).start()
    api.url = thread.url  # type: ignore[attr-defined]
    yield api
    thread.stop()


@pytest.fixture()
def client(server: ApiServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)  # type: ignore[attr-defined]


def data_url(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def ask(question: str, url: str) -> list[dict]:
    return [
        {
            "role": "user",
            "content": [{"type": "text", "text": question}, {"type": "image_url", "image_url": {"url": url}}],
        }
    ]


def assert_works(client: openai.OpenAI, images: dict[str, Path]) -> None:
    """A normal request succeeds (the server is healthy after an error)."""
    reply = client.chat.completions.create(
        model="tiny-test", messages=ask("Color?", data_url(images["red"])), max_tokens=3, temperature=0
    )
    assert reply.choices[0].message.content is not None
    assert reply.usage is not None and reply.usage.completion_tokens == 3


def test_models(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["tiny-test"]
    assert client.models.retrieve("tiny-test").owned_by == "mllm"


def test_completion_stream_and_not(
    client: openai.OpenAI, assistant: Assistant, images: dict[str, Path]
) -> None:
    messages = ask("What color is the object?", data_url(images["split"]))
    reply = client.chat.completions.create(model="tiny-test", messages=messages, max_tokens=12, temperature=0)
    text = reply.choices[0].message.content
    assert reply.object == "chat.completion" and reply.model == "tiny-test"
    assert reply.choices[0].finish_reason == "length"
    expected = assistant.chat(
        [{"role": "user", "content": "What color is the object?"}],
        images=[Image.open(images["split"])],
        max_new_tokens=12,
    )
    assert text == expected
    assert reply.usage.completion_tokens == 12 and reply.usage.prompt_tokens > 16  # 16 image tokens
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 12

    stream = client.chat.completions.create(
        model="tiny-test",
        messages=messages,
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    deltas = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len([d for d in deltas if d]) > 1, "the reply should arrive in several pieces"
    assert "".join(deltas) == text
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12


def test_stop_and_sampling(client: openai.OpenAI, images: dict[str, Path]) -> None:
    messages = ask("Describe it.", data_url(images["blue"]))
    full = client.chat.completions.create(model="tiny-test", messages=messages, max_tokens=12, temperature=0)
    text = full.choices[0].message.content
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    cut = client.chat.completions.create(
        model="tiny-test", messages=messages, max_tokens=12, temperature=0, stop=[stop]
    )
    assert cut.choices[0].message.content == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    sampled = client.chat.completions.create(
        model="tiny-test", messages=messages, max_tokens=5, temperature=0.9, top_p=0.8
    )
    assert sampled.usage.completion_tokens == 5
    multi = [
        {"role": "system", "content": "Be brief."},
        *ask("Color?", data_url(images["red"])),
        {"role": "assistant", "content": "Red."},
        {"role": "user", "content": "Are you sure?"},
    ]
    assert (
        client.chat.completions.create(
            model="tiny-test", messages=multi, max_tokens=2
        ).usage.completion_tokens
        == 2
    )


def test_error_cases_then_success(client: openai.OpenAI, server: ApiServer, images: dict[str, Path]) -> None:
    url = server.url  # type: ignore[attr-defined]
    bad_cases = [
        (ask("x", "data:image/png;base64,@@not-base64@@"), {}, openai.BadRequestError, "invalid_base64"),
        (
            ask("x", "data:image/png;base64," + base64.b64encode(b"not an image").decode()),
            {},
            openai.BadRequestError,
            "invalid_image",
        ),
        (ask("x", data_url(images["red"])), {"max_tokens": 0}, openai.BadRequestError, "invalid_value"),
        (ask("x", data_url(images["red"])), {"max_tokens": 100_000}, openai.BadRequestError, "invalid_value"),
        (ask("x", data_url(images["red"])), {"temperature": 5}, openai.BadRequestError, "invalid_value"),
        (ask("x", "https://example.com/cat.png"), {}, openai.BadRequestError, "remote_images_disabled"),
        (ask("x", "/etc/passwd"), {}, openai.PermissionDeniedError, "path_not_allowed"),
        (
            [{"role": "user", "content": "x"}] * 1 + [{"role": "robot", "content": "y"}],
            {},
            openai.BadRequestError,
            None,
        ),
    ]
    for messages, extra, error, code in bad_cases:
        with pytest.raises(error) as info:
            client.chat.completions.create(model="tiny-test", messages=messages, **extra)
        assert info.value.body is not None and "message" in info.value.body
        if code is not None:
            assert info.value.code == code, info.value.body
        assert_works(client, images)

    big = Image.effect_noise((300, 300), 64).convert("RGB")  # 90,000 pixels > 40,000 allowed
    buffer = io.BytesIO()
    big.save(buffer, format="PNG")
    small_url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="tiny-test", messages=ask("x", small_url))
    assert info.value.code == "image_too_large"
    assert_works(client, images)

    huge = "data:image/png;base64," + "A" * (600 * 1024)  # body over the 512 KiB limit
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="tiny-test", messages=ask("x", huge))
    assert info.value.status_code == 413 and info.value.code == "request_too_large"
    assert_works(client, images)

    response = httpx.post(
        url + "/v1/chat/completions",
        content=b'{"model": "tiny-test", "messages": [',
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"
    assert_works(client, images)

    for key in ("wrong-key", None):
        headers = {} if key is None else {"Authorization": f"Bearer {key}"}
        response = httpx.get(url + "/v1/models", headers=headers)
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    wrong = openai.OpenAI(base_url=url + "/v1", api_key="wrong-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model="tiny-test", messages=ask("x", data_url(images["red"])))
    assert_works(client, images)

    assert httpx.get(url + "/v1/nowhere").json()["error"]["code"] == "not_found"


def test_local_image_inside_allowed_folder(client: openai.OpenAI, images: dict[str, Path]) -> None:
    for ref in (str(images["green"]), images["green"].as_uri(), "green.png"):
        reply = client.chat.completions.create(model="tiny-test", messages=ask("Color?", ref), max_tokens=2)
        assert reply.usage.completion_tokens == 2
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="tiny-test", messages=ask("x", "../../etc/hosts"))


def test_remote_images_only_when_allowed(
    client: openai.OpenAI, server: ApiServer, images: dict[str, Path]
) -> None:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(images["red"].parent))
    handler.log_message = lambda *args: None  # type: ignore[method-assign]
    files = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=files.serve_forever, daemon=True).start()
    remote = f"http://127.0.0.1:{files.server_address[1]}/blue.png"
    try:
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="tiny-test", messages=ask("x", remote))
        server.policy.allow_remote = True
        reply = client.chat.completions.create(
            model="tiny-test", messages=ask("Color?", remote), max_tokens=2
        )
        assert reply.usage.completion_tokens == 2
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(
                model="tiny-test", messages=ask("x", remote.replace("blue", "nope"))
            )
        assert info.value.code == "image_fetch_failed"
    finally:
        server.policy.allow_remote = False
        files.shutdown()


def test_queue_limit_and_disconnect_cancels(
    client: openai.OpenAI, server: ApiServer, images: dict[str, Path]
) -> None:
    before = server.stats.cancelled
    stream = client.chat.completions.create(
        model="tiny-test",
        messages=ask("Talk.", data_url(images["red"])),
        max_tokens=1400,
        temperature=0,
        stream=True,
    )
    pieces = iter(stream)
    next(pieces), next(pieces)  # generation is running and holds the only slot
    with pytest.raises(openai.RateLimitError) as info:  # concurrency 1, max_queue 0
        client.chat.completions.create(
            model="tiny-test", messages=ask("x", data_url(images["red"])), max_tokens=2
        )
    assert info.value.status_code == 429 and info.value.code == "queue_full"
    stream.close()  # the client goes away mid-stream
    deadline = time.monotonic() + 20
    while server.stats.cancelled == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.stats.cancelled == before + 1
    assert server.stats.finished[-1].completion_tokens < 1400
    assert_works(client, images)  # the slot was released


def test_concurrent_requests_queue_up(server: ApiServer, images: dict[str, Path]) -> None:
    """With max_queue 0 a second request is refused; both succeed when they do not overlap."""
    results: list[int] = []
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=3)  # type: ignore[attr-defined]

    def one() -> None:
        reply = client.chat.completions.create(
            model="tiny-test", messages=ask("x", data_url(images["red"])), max_tokens=2
        )
        results.append(reply.usage.completion_tokens)

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [2, 2]
