"""The Gradio chat UI in a real headless Chromium (Debian's `chromium`, driven by Python playwright): open the
page, attach an image, ask, watch the answer stream in; regenerate, a second browser session with its own
conversation, stop mid-reply (generation ends on the server), undo and clear. Screenshots go to
test-artifacts/."""

from __future__ import annotations

import itertools
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from serve_support import ARTIFACTS, free_port, lively_assistant, write_images

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


def generating() -> bool:
    """Whether a reply is being generated in this process (stream_generate's worker thread)."""
    return any(t.name == "mllm-generate" and t.is_alive() for t in threading.enumerate())


@pytest.fixture(scope="module")
def ui_url() -> Iterator[str]:
    port = free_port()
    # a long context, so the reply that is stopped mid-way runs for seconds (16k tokens) even on a fast machine
    assistant = lively_assistant(context=LONG_CONTEXT)
    # 800 new tokens by default, so a reply streams long enough to be seen growing even where the tiny model
    # decodes 160 tokens between two polls
    ui = ChatUI(assistant, UISettings(port=port, concurrency=2, max_new_tokens=800, temperature=0.0))
    ui.launch(block=False)
    yield f"http://127.0.0.1:{port}/"
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


def wait_reply(page: object, timeout_s: float = 60.0) -> list[str]:
    """Poll the last bot message until generation has ended and the text is stable; returns the texts seen."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    stable_since = None
    while time.monotonic() < deadline:
        texts = bot_texts(page)
        text = texts[-1] if texts else ""
        if not seen or seen[-1] != text:
            seen.append(text)
            stable_since = time.monotonic()
        elif text and not generating() and time.monotonic() - (stable_since or 0) > 0.7:
            return seen
        time.sleep(0.03)
    raise AssertionError(f"no finished reply within {timeout_s} s; saw {seen[-3:]}")


def open_chat(browser: object, url: str) -> object:
    page = browser.new_page(viewport={"width": 1200, "height": 900})  # type: ignore[attr-defined]
    page.goto(url, wait_until="domcontentloaded")
    page.wait_for_selector("#mllm-input textarea", timeout=60_000)
    return page


def test_chat_in_browser(ui_url: str, browser: object, tmp_path: Path) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    images = write_images(tmp_path / "images")
    page = open_chat(browser, ui_url)
    assert "tiny-test" in page.inner_text("#mllm-header")  # type: ignore[attr-defined]

    # attach an image, ask, and watch the answer stream in
    page.set_input_files("#mllm-input input[type=file]", str(images["split"]))  # type: ignore[attr-defined]
    page.wait_for_selector("#mllm-input img", timeout=20_000)  # type: ignore[attr-defined]
    page.fill("#mllm-input textarea", "What colors do you see?")  # type: ignore[attr-defined]
    page.keyboard.press("Enter")  # type: ignore[attr-defined]
    seen = wait_reply(page)
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
    time.sleep(0.3)
    wait_reply(page)
    assert bot_texts(page) == [first]

    # a second browser session has its own, empty conversation
    other = open_chat(browser, ui_url)
    assert bot_texts(other) == []
    other.close()  # type: ignore[attr-defined]

    # a follow-up that asks for a long reply, stopped mid-way: generation ends on the server
    page.click("text=Sampling")  # type: ignore[attr-defined]
    page.fill("#mllm-max-new input[type=number]", str(LONG_CONTEXT - 200))  # type: ignore[attr-defined]
    page.keyboard.press("Tab")  # type: ignore[attr-defined]
    page.fill("#mllm-input textarea", "Tell me a very long story.")  # type: ignore[attr-defined]
    page.keyboard.press("Enter")  # type: ignore[attr-defined]
    deadline = time.monotonic() + 30
    while len(bot_texts(page)) < 2 or not bot_texts(page)[-1]:
        assert time.monotonic() < deadline, "the follow-up reply never started"
        time.sleep(0.05)
    time.sleep(0.5)
    page.click("#mllm-input .stop-button")  # type: ignore[attr-defined]
    deadline = time.monotonic() + 10
    while generating():
        assert time.monotonic() < deadline, "generation went on after stop"
        time.sleep(0.05)
    stopped = bot_texts(page)[-1]
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
