"""The `mllm` command: one front door that dispatches to the subcommands of each package.

Each package keeps its own subcommands in a `cli` module exposing `register(subparsers)`, which adds
parsers whose defaults carry `func(args) -> int`. Modules are imported lazily per package so that
`mllm --help` stays fast; heavy imports (torch) happen inside the command functions.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from mllm.errors import MllmError
from mllm.hub import ALLOW_ENV

# Packages whose `cli.register` adds subcommands, in the order they appear in `mllm --help`.
COMMAND_MODULES = ("serve.chat_cli", "data_tools.cli", "train.cli", "serve.commands")


def build_parser() -> argparse.ArgumentParser:
    """The full `mllm` parser with every available subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="mllm",
        description="Offline-first LLaVA-style multimodal assistant: chat, data, train, vqa, eval, serve, api, export.",
        epilog="Example: mllm chat --model default --message 'What is in the picture?' --image photo.png",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    parser.add_argument(
        "--allow-network",
        action="store_true",
        help=f"let model loading download from a hub (sets {ALLOW_ENV}=1)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # a real missing dependency inside the module: surface it
                raise
            continue  # that package's commands have not been built yet
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `mllm` console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.verbose:
        # bitsandbytes warns at import that optional hub-downloaded CPU kernels are absent; we never use them
        logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    if args.allow_network:
        os.environ[ALLOW_ENV] = "1"  # read by mllm.hub at each load, and inherited by worker processes
        os.environ["HF_HUB_OFFLINE"] = "0"  # huggingface_hub is not imported yet: commands import it lazily
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except MllmError as exc:
        print(f"mllm {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
