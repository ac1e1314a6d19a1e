"""`mllm chat`: answer one message and exit, or a multi-turn REPL (`/image PATH`, `/reset`, `/quit`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from serve.commands import add_model_args, add_sampling_args, load_assistant

if TYPE_CHECKING:
    from mllm.assistant import Assistant

REPL_HELP = "commands: /image PATH (attach to the next message), /reset (new conversation), /quit"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "chat",
        help="chat with a model in the terminal",
        description="Answer one message (--message) and exit, or start a multi-turn chat. " + REPL_HELP,
        epilog="Example: mllm chat --model default --message 'What shapes are there?' --image shapes.png",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_args(parser)
    add_sampling_args(parser, max_new_tokens=256, temperature=0.0)
    parser.add_argument("--message", help="answer this message and exit (otherwise start a REPL)")
    parser.add_argument(
        "--image", action="append", default=[], metavar="PATH", help="attach an image (repeatable)"
    )
    parser.add_argument("--system", help="system prompt")
    parser.set_defaults(func=run_chat)


def check_images(paths: list[str]) -> None:
    """Fail early, with the path, on an image that does not exist."""
    from mllm.errors import MllmError

    for path in paths:
        if not Path(path).is_file():
            raise MllmError(f"{path}: image file not found")


def run_chat(args: argparse.Namespace) -> int:
    check_images(args.image)
    assistant = load_assistant(args)
    gen = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_p": args.top_p}
    system = [{"role": "system", "content": args.system}] if args.system else []
    if args.message is not None:
        messages = [*system, {"role": "user", "content": args.message}]
        for piece in assistant.stream(messages, images=args.image, **gen):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return 0
    return repl(assistant, system, args.image, gen, sys.stdin, sys.stdout)


def repl(
    assistant: Assistant, system: list[dict], images: list[str], gen: dict, stdin: TextIO, stdout: TextIO
) -> int:
    """Multi-turn chat on stdin/stdout; errors in one turn are shown and the chat goes on."""
    from mllm.errors import MllmError

    messages: list[dict] = list(system)
    conversation_images: list[str] = []
    pending: list[str] = list(images)
    stdout.write(f"mllm chat with {assistant.name}. {REPL_HELP}\n")
    while True:
        stdout.write(">>> ")
        stdout.flush()
        line = stdin.readline()
        if not line:
            stdout.write("\n")
            return 0
        line = line.strip()
        if not line:
            continue
        if line in ("/quit", "/exit"):
            return 0
        if line == "/reset":
            messages, conversation_images, pending = list(system), [], []
            stdout.write("(new conversation)\n")
            continue
        if line.startswith("/image"):
            path = line[len("/image") :].strip()
            if not Path(path).is_file():
                stdout.write(f"error: {path or '(no path)'}: image file not found\n")
                continue
            pending.append(path)
            stdout.write(f"(attached {path})\n")
            continue
        marker = assistant.model.config.llm.image_token
        content = marker * len(pending) + ("\n" if pending else "") + line
        turn = [*messages, {"role": "user", "content": content}]
        try:
            reply = ""
            for piece in assistant.stream(turn, images=[*conversation_images, *pending], **gen):
                reply += piece
                stdout.write(piece)
                stdout.flush()
            stdout.write("\n")
        except MllmError as exc:
            stdout.write(f"error: {exc}\n")
            continue
        messages = [*turn, {"role": "assistant", "content": reply}]
        conversation_images.extend(pending)
        pending = []
