"""`mllm serve`: the Gradio chat UI over an Assistant.

A `gr.ChatInterface` with a multimodal textbox (attach one or more images to a message), streamed replies,
stop / regenerate / undo / clear, sampling controls and example shapes-world images with questions. Gradio
keeps each browser session's conversation; this module only converts it into `serve.session` turns and
streams the reply through `serve.session.stream_reply`. Generation runs through Gradio's queue with at most
`concurrency` replies at once.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from mllm.assistant import Assistant
from mllm.errors import MllmError
from serve.session import GenerationSettings, Turn, stream_reply

log = logging.getLogger(__name__)
EXAMPLES_DIR = Path(__file__).parent / "assets" / "examples"


@dataclass
class UISettings:
    """Where and how the UI serves, and the initial values of its sampling controls."""

    host: str = "127.0.0.1"
    port: int = 7860
    concurrency: int = 1
    max_queue: int = 32
    max_new_tokens: int = 256
    temperature: float = 0.2
    top_p: float = 1.0
    max_file_mb: float = 20.0  # largest upload Gradio accepts, per file (it answers 413 past it)
    # the shortest time between two updates of a streaming reply: a fast model makes hundreds of tokens a
    # second, and a browser that re-renders the growing message for each one stops answering (Stop included)
    stream_interval_s: float = 0.1


def load_examples(folder: Path = EXAMPLES_DIR) -> list[dict[str, Any]]:
    """The shipped example messages `{"text", "files"}` (shapes-world images and questions)."""
    entries = json.loads((folder / "examples.json").read_text(encoding="utf-8"))
    return [{"text": e["question"], "files": [str(folder / e["image"])]} for e in entries]


def _part_to_turn_bits(part: Any) -> tuple[str | None, str | None]:
    """(text, file path) of one piece of Gradio chat content."""
    if isinstance(part, str):
        return part, None
    if isinstance(part, (tuple, list)):
        return None, str(part[0]) if part else None
    if isinstance(part, dict):
        if part.get("type") == "text" or ("text" in part and "file" not in part):
            return str(part.get("text", "")), None
        file = part.get("file", part)
        if isinstance(file, dict) and file.get("path"):
            return None, str(file["path"])
    if hasattr(part, "path"):  # a FileData object
        return None, str(part.path)
    raise MllmError(f"unsupported chat content {type(part).__name__}")


def history_to_turns(history: Sequence[dict[str, Any]]) -> list[Turn]:
    """Gradio's openai-style history (content: text, file dicts or lists of parts) -> turns; consecutive
    messages of one role (Gradio may store a message's files and text separately) are merged."""
    turns: list[Turn] = []
    for message in history:
        role = message.get("role")
        if role not in ("user", "assistant", "system"):
            continue
        content = message.get("content")
        parts = content if isinstance(content, list) else [content]
        texts: list[str] = []
        files: list[str] = []
        for part in parts:
            if part is None:
                continue
            text, path = _part_to_turn_bits(part)
            if text:
                texts.append(text)
            if path:
                files.append(path)
        if role == "assistant" and files:
            continue  # the model never answers with files
        if turns and turns[-1].role == role:
            turns[-1].text = "\n".join(t for t in (turns[-1].text, *texts) if t)
            turns[-1].images.extend(files)
        else:
            turns.append(Turn(role, "\n".join(texts), list(files)))
    return turns


def message_to_turn(message: dict[str, Any] | str) -> Turn:
    """The multimodal textbox's value `{"text", "files"}` -> a user turn."""
    if isinstance(message, str):
        return Turn("user", message)
    files = [f.get("path") if isinstance(f, dict) else str(f) for f in message.get("files") or []]
    return Turn("user", str(message.get("text") or ""), [f for f in files if f])


class ChatUI:
    """The Gradio Blocks of the chat UI over one Assistant."""

    def __init__(self, assistant: Assistant, settings: UISettings) -> None:
        self.assistant = assistant
        self.settings = settings
        self.demo = self._build()

    def respond(
        self,
        message: dict[str, Any] | str,
        history: list[dict[str, Any]],
        temperature: float,
        top_p: float,
        max_new_tokens: float,
    ) -> Iterator[str]:
        """Stream the reply to `message` after `history`, yielding the text so far."""
        turn = message_to_turn(message)
        if not turn.text.strip() and not turn.images:
            raise gr.Error("Type a question or attach an image.")
        turns = history_to_turns(history)
        if turns and turns[-1].role == "user":  # an unanswered message (a stopped reply): join them
            turns[-1].text = "\n".join(t for t in (turns[-1].text, turn.text) if t)
            turns[-1].images.extend(turn.images)
        else:
            turns.append(turn)
        settings = GenerationSettings(
            max_new_tokens=int(max_new_tokens), temperature=float(temperature), top_p=float(top_p)
        )
        try:
            pieces = stream_reply(self.assistant, turns, settings)
        except MllmError as exc:
            raise gr.Error(str(exc)) from None
        text, shown, last = "", "", 0.0
        try:
            for piece in pieces:
                text += piece
                if time.monotonic() - last >= self.settings.stream_interval_s:
                    yield text
                    shown, last = text, time.monotonic()
            if text != shown:
                yield text
        finally:
            pieces.close()  # the user pressed stop (Gradio closes this generator): stop generating

    def _build(self) -> gr.Blocks:
        s = self.settings
        name = self.assistant.name
        with gr.Blocks(title=f"mllm: {name}", fill_height=True, analytics_enabled=False) as demo:
            gr.Markdown(
                f"## mllm chat · model **{name}**\nAttach images with the paperclip (several per message "
                "work), ask about them, and follow up. Replies stream; stop, regenerate and undo are "
                "on the chat.",
                elem_id="mllm-header",
            )
            with gr.Accordion("Sampling", open=False, render=False) as accordion:
                temperature = gr.Slider(
                    0.0,
                    2.0,
                    value=s.temperature,
                    step=0.05,
                    label="temperature",
                    info="0 is greedy",
                    elem_id="mllm-temperature",
                    render=False,
                )
                top_p = gr.Slider(
                    0.05, 1.0, value=s.top_p, step=0.05, label="top_p", elem_id="mllm-top-p", render=False
                )
                max_new = gr.Slider(
                    1,
                    self.assistant.context_length,  # the reply can use whatever the prompt leaves free
                    value=s.max_new_tokens,
                    step=1,
                    label="max new tokens",
                    elem_id="mllm-max-new",
                    render=False,
                )
            examples = [[example] for example in load_examples()]
            gr.ChatInterface(
                self.respond,
                multimodal=True,
                textbox=gr.MultimodalTextbox(
                    file_types=["image"],
                    file_count="multiple",
                    sources=["upload"],
                    placeholder="Ask about an image…",
                    elem_id="mllm-input",
                    stop_btn=True,
                ),
                chatbot=gr.Chatbot(label=name, elem_id="mllm-chat", height="60vh", buttons=["copy"]),
                additional_inputs=[temperature, top_p, max_new],
                additional_inputs_accordion=accordion,
                examples=examples,
                run_examples_on_click=True,
                cache_examples=False,
                concurrency_limit=s.concurrency,
                fill_height=True,
                api_name="chat",
                analytics_enabled=False,  # its own Blocks: telemetry would call api.gradio.app at launch
            )
        demo.queue(default_concurrency_limit=s.concurrency, max_size=s.max_queue)
        return demo

    def launch(self, block: bool = True) -> None:
        """Serve on settings.host:port; `block=False` returns once the server is up (tests)."""
        self.demo.launch(
            server_name=self.settings.host,
            server_port=self.settings.port,
            prevent_thread_lock=not block,
            show_error=True,
            max_file_size=int(self.settings.max_file_mb * 1024 * 1024),
            allowed_paths=[str(EXAMPLES_DIR)],
            footer_links=[],
            quiet=not block,
        )

    def close(self) -> None:
        self.demo.close()


def launch(assistant: Assistant, settings: UISettings) -> None:
    """`mllm serve`: build the UI and serve it until interrupted."""
    log.info(
        "serving %s at http://%s:%d (concurrency %d)",
        assistant.name,
        settings.host,
        settings.port,
        settings.concurrency,
    )
    ChatUI(assistant, settings).launch(block=True)
