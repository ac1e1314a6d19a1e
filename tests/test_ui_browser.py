"""The Gradio chat UI in a real headless Chromium (Debian's `chromium`, driven by Python playwright): open the
page, attach an image, ask, watch the answer stream in; regenerate, a second browser session with its own
conversation, stop mid-reply (generation ends on the server), undo and clear. Screenshots go to
test-artifacts/."""

from __future__ import annotations

import itertools
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from serve_support import ARTIFACTS, free_port, lively_assistant, write_images

from mllm.assistant import Assistant
from serve.ui import ChatUI, UISettings

CHROMIUM = shutil.which("chromium")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        CHROMIUM is None, reason="Debian's chromium is not installed (`make test` installs it)"
    ),
]
BROWSER_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
BOT = "#mllm-chat [data-testid=bot]"
USER = "#mllm-chat [data-testid=user]"
LONG_CONTEXT = 16384


@dataclass
class Reply:
    """How one call of the UI's respond ended: the max_new_tokens it was given, how many texts it yielded, and
    whether it was closed (stopped) rather than run to its end."""

    max_new_tokens: int
    pieces: int
    closed: bool


class WatchedUI(ChatUI):
    """The real chat UI, noting how each reply's generator ends. Decoding runs inside that generator (in the
    Gradio worker that calls it), so once it has ended nothing is generated for that reply any more."""

    def __init__(self, assistant: Assistant, settings: UISettings) -> None:
        self.replies: list[Reply] = []
        super().__init__(assistant, settings)

    def respond(
        self,
        message: dict[str, Any] | str,
        history: list[dict[str, Any]],
        temperature: float,
        top_p: float,
        max_new_tokens: float,
    ) -> Iterator[str]:
        inner = super().respond(message, history, temperature, top_p, max_new_tokens)
        pieces, closed = 0, False
        try:
            for text in inner:
                pieces += 1
                yield text
        except GeneratorExit:
            closed = True
            raise
        finally:
            inner.close()
            self.replies.append(Reply(int(max_new_tokens), pieces, closed))


@pytest.fixture(scope="module")
def ui() -> Iterator[WatchedUI]:
    # a long context, so the reply that is stopped mid-way runs for seconds (16k tokens) even on a fast machine,
    # and a model that never ends a reply by itself (a random model's greedy path differs between machines)
    assistant = lively_assistant(context=LONG_CONTEXT, endless=True)
    # 2400 new tokens by default, so a reply streams long enough to be seen growing in several of the UI's
    # updates (at most 10 a second) even where the tiny model decodes thousands of tokens a second
    settings = UISettings(port=free_port(), concurrency=2, max_new_tokens=2400, temperature=0.0)
    ui = WatchedUI(assistant, settings)
    ui.launch(block=False)
    yield ui
    ui.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        yield browser
        browser.close()


def bot_texts(page: object) -> list[str]:
    return page.eval_on_selector_all(BOT, "els => els.map(e => e.innerText.trim())")  # type: ignore[attr-defined]


def watch_reply(page: object, ui: WatchedUI, count: int, timeout_s: float = 60.0) -> list[str]:
    """Poll the last bot message until the server has ended `count` replies in all and the text has settled;
    the texts seen on the way."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    changed = time.monotonic()
    while time.monotonic() < deadline:
        texts = bot_texts(page)
        text = texts[-1] if texts else ""
        if not seen or seen[-1] != text:
            seen.append(text)
            changed = time.monotonic()
        elif text and len(ui.replies) >= count and time.monotonic() - changed > 0.7:
            return seen
        time.sleep(0.03)
    raise AssertionError(
        f"reply {count} did not end and settle within {timeout_s} s; ended: {ui.replies}; saw {seen[-3:]}"
    )


def open_chat(browser: object, url: str) -> object:
    page = browser.new_page(viewport={"width": 1200, "height": 900})  # type: ignore[attr-defined]
    page.goto(url, wait_until="domcontentloaded")
    page.wait_for_selector("#mllm-input textarea", timeout=60_000)
    return page


def set_number(page: object, field: object, value: int, timeout_s: float = 10.0) -> None:
    """Type `value` into a number field and leave it. On a busy machine the slider that owns the field can still
    be mounting when it first shows (the accordion's opening) and then resets it to its initial value: type
    again until the value holds for half a second."""
    deadline = time.monotonic() + timeout_s
    while True:
        field.fill(str(value))  # type: ignore[attr-defined]
        page.keyboard.press("Tab")  # type: ignore[attr-defined]
        time.sleep(0.5)
        if field.input_value() == str(value):  # type: ignore[attr-defined]
            return
        assert time.monotonic() < deadline, f"the field keeps {field.input_value()!r}, not {value}"  # type: ignore[attr-defined]


def test_chat_in_browser(ui: WatchedUI, browser: object, tmp_path: Path) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    images = write_images(tmp_path / "images")
    url = f"http://127.0.0.1:{ui.settings.port}/"
    page = open_chat(browser, url)
    assert "tiny-test" in page.inner_text("#mllm-header")  # type: ignore[attr-defined]

    # attach an image, ask, and watch the answer stream in
    page.set_input_files("#mllm-input input[type=file]", str(images["split"]))  # type: ignore[attr-defined]
    page.wait_for_selector("#mllm-input img", timeout=20_000)  # type: ignore[attr-defined]
    page.fill("#mllm-input textarea", "What colors do you see?")  # type: ignore[attr-defined]
    page.keyboard.press("Enter")  # type: ignore[attr-defined]
    seen = watch_reply(page, ui, 1)
    growing = [s for s in seen if s]
    assert len(growing) >= 3, f"the reply did not stream: {seen}"
    assert all(b.startswith(a[: max(len(a) - 2, 0)]) for a, b in itertools.pairwise(growing)), growing
    assert page.locator(f"{USER} img").count() >= 1, "the image is not shown in the conversation"  # type: ignore[attr-defined]
    first = bot_texts(page)[-1]
    page.screenshot(path=str(ARTIFACTS / "ui_chat.png"), full_page=True)  # type: ignore[attr-defined]
    (ARTIFACTS / "ui_chat.txt").write_text(
        "question: What colors do you see? (image: split.png)\n"
        f"streamed in {len(growing)} visible steps; lengths {[len(s) for s in growing]}\n"
        f"answer: {first}\n",
        encoding="utf-8",
    )

    # regenerate: greedy decoding gives the same reply again
    page.click("#mllm-chat button[aria-label=Retry]")  # type: ignore[attr-defined]
    watch_reply(page, ui, 2)
    assert bot_texts(page) == [first]

    # a second browser session has its own, empty conversation
    other = open_chat(browser, url)
    assert bot_texts(other) == []
    other.close()  # type: ignore[attr-defined]

    # a follow-up that asks for a long reply, stopped mid-way: generation ends on the server
    page.click("text=Sampling")  # type: ignore[attr-defined]
    field = page.locator("#mllm-max-new input[type=number]")  # type: ignore[attr-defined]
    field.wait_for(state="visible")  # the accordion opens with an animation: fill only once the field shows
    set_number(page, field, LONG_CONTEXT - 200)
    page.fill("#mllm-input textarea", "Tell me a very long story.")  # type: ignore[attr-defined]
    page.keyboard.press("Enter")  # type: ignore[attr-defined]
    deadline = time.monotonic() + 30
    while len(bot_texts(page)) < 2 or not bot_texts(page)[-1]:
        assert time.monotonic() < deadline, "the follow-up reply never started"
        time.sleep(0.05)
    time.sleep(0.5)
    assert len(ui.replies) == 2, f"the long reply ended before stop was pressed: {ui.replies}"
    page.click("#mllm-input .stop-button")  # type: ignore[attr-defined]
    stopped = watch_reply(page, ui, 3, timeout_s=10)[-1]
    assert ui.replies[-1].closed, f"generation was not stopped: {ui.replies[-1]}"
    assert ui.replies[-1].max_new_tokens == LONG_CONTEXT - 200, ui.replies[-1]
    time.sleep(0.5)
    assert bot_texts(page)[-1] == stopped
    page.screenshot(path=str(ARTIFACTS / "ui_chat_stopped.png"), full_page=True)  # type: ignore[attr-defined]

    # undo removes the last exchange, clear empties the chat
    page.click("#mllm-chat button[aria-label=Undo] >> nth=-1")  # type: ignore[attr-defined]
    deadline = time.monotonic() + 10
    while len(bot_texts(page)) != 1:
        assert time.monotonic() < deadline, f"undo did not remove the last reply: {bot_texts(page)}"
        time.sleep(0.05)
    page.click("#mllm-chat button[aria-label=Clear]")  # type: ignore[attr-defined]
    deadline = time.monotonic() + 10
    while page.locator(USER).count():  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "clear did not empty the chat"
        time.sleep(0.05)
    page.close()  # type: ignore[attr-defined]
