"""The Gradio chat UI without a browser: converting Gradio's history into session turns, the respond
generator (streaming, stop, errors), and the `/chat` protocol through gradio_client (images, multi-turn,
streaming, one conversation per client session)."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import pytest
from serve_support import free_port, lively_assistant, write_images

import serve.ui
from mllm.assistant import Assistant
from serve.session import Turn
from serve.ui import ChatUI, UISettings, history_to_turns, load_examples, message_to_turn


@pytest.fixture(scope="module")
def assistant() -> Assistant:
    return lively_assistant()


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_images(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def ui(assistant: Assistant) -> Iterator[ChatUI]:
    chat = ChatUI(assistant, UISettings(port=free_port(), max_new_tokens=8, temperature=0.0, concurrency=2))
    chat.launch(block=False)
    yield chat
    chat.close()


def test_history_to_turns_both_formats() -> None:
    api_style = [
        {"role": "user", "content": [{"path": "/tmp/a.png"}, "What is it?"]},
        {"role": "assistant", "content": "A square."},
        {"role": "user", "content": ["And the color?"]},
    ]
    ui_style = [  # what the Chatbot hands back after a round trip through the browser
        {
            "role": "user",
            "content": [{"type": "file", "file": {"path": "/tmp/a.png", "mime_type": "image/png"}}],
        },
        {"role": "user", "content": [{"type": "text", "text": "What is it?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A square."}], "metadata": None},
        {"role": "user", "content": [{"type": "text", "text": "And the color?"}]},
    ]
    expected = [
        Turn("user", "What is it?", ["/tmp/a.png"]),
        Turn("assistant", "A square."),
        Turn("user", "And the color?"),
    ]
    assert history_to_turns(api_style) == expected
    assert history_to_turns(ui_style) == expected
    assert message_to_turn({"text": "hi", "files": ["/x.png", {"path": "/y.png"}]}) == Turn(
        "user", "hi", ["/x.png", "/y.png"]
    )


def test_examples_are_shipped() -> None:
    examples = load_examples()
    assert len(examples) == 3
    for example in examples:
        assert example["text"].strip() and all(Path(f).is_file() for f in example["files"])


def test_respond_streams_stops_and_reports(ui: ChatUI, images: dict[str, Path]) -> None:
    message = {"text": "Color?", "files": [str(images["red"])]}
    texts = list(ui.respond(message, [], 0.0, 1.0, 8))
    assert len(texts) > 1 and all(b.startswith(a) for a, b in itertools.pairwise(texts))

    long = ui.respond({"text": "Talk.", "files": []}, [], 0.0, 1.0, 1500)
    next(long), next(long)
    long.close()  # what Gradio does when the user presses stop
    assert not any(t.name == "mllm-generate" and t.is_alive() for t in threading.enumerate())

    with pytest.raises(gr.Error, match="Type a question"):
        next(ui.respond({"text": " ", "files": []}, [], 0.0, 1.0, 8))
    not_image = images["red"].parent / "notes.png"
    not_image.write_text("hello")
    with pytest.raises(gr.Error, match="notes.png"):
        next(ui.respond({"text": "What is this?", "files": [str(not_image)]}, [], 0.0, 1.0, 8))
    with pytest.raises(gr.Error, match="at most 4"):
        next(ui.respond({"text": "Many", "files": [str(images["red"])] * 5}, [], 0.0, 1.0, 8))


def test_respond_spaces_out_updates_of_a_fast_reply(assistant: Assistant) -> None:
    # every piece as it comes, and the same reply at most one update per 50 ms: a browser that re-renders the
    # growing message for each of hundreds of tokens a second stops answering (its Stop button included)
    every = ChatUI(assistant, UISettings(port=free_port(), stream_interval_s=0.0))
    spaced = ChatUI(assistant, UISettings(port=free_port(), stream_interval_s=0.05))
    message = {"text": "Talk.", "files": []}
    pieces = list(every.respond(message, [], 0.0, 1.0, 300))
    stamped = [(time.monotonic(), text) for text in spaced.respond(message, [], 0.0, 1.0, 300)]
    texts = [text for _, text in stamped]
    assert texts[-1] == pieces[-1], "the last update is not the whole reply"
    assert all(b.startswith(a) and b != a for a, b in itertools.pairwise(texts))
    assert 1 < len(texts) < len(pieces) / 2, (len(texts), len(pieces))
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(stamped[:-1])]
    assert min(gaps) >= 0.05, gaps


def test_chat_protocol_with_gradio_client(
    ui: ChatUI, images: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from gradio_client import Client, handle_file

    seen: list[list[Turn]] = []
    original = serve.ui.stream_reply

    def recording(assistant: Assistant, turns: list[Turn], *args: Any, **kwargs: Any) -> Iterator[str]:
        seen.append([Turn(t.role, t.text, list(t.images)) for t in turns])
        return original(assistant, turns, *args, **kwargs)

    monkeypatch.setattr(serve.ui, "stream_reply", recording)
    url = f"http://127.0.0.1:{ui.settings.port}/"
    first, second = Client(url, verbose=False), Client(url, verbose=False)
    reply = first.predict(
        {"text": "What color?", "files": [handle_file(str(images["red"]))]}, 0.0, 1.0, 8, api_name="/chat"
    )
    assert isinstance(reply, str) and reply
    job = first.submit({"text": "Are you sure?", "files": []}, 0.0, 1.0, 8, api_name="/chat")
    outputs = list(job)
    assert len(outputs) > 1 and outputs[-1].startswith(outputs[0]), outputs
    second.predict({"text": "Hello", "files": []}, 0.0, 1.0, 8, api_name="/chat")
    assert [len(turns) for turns in seen] == [1, 3, 1]  # the second client starts its own conversation
    assert seen[1][0].text == "What color?" and len(seen[1][0].images) == 1
    assert seen[1][1].role == "assistant" and seen[1][1].text.strip() == reply.strip()
    deadline = time.monotonic() + 5
    while any(t.name == "mllm-generate" and t.is_alive() for t in threading.enumerate()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
