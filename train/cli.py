"""`mllm train CONFIG.yaml [--resume] [key=value ...]`: one stage of training (clip, align or instruct).

`register(subparsers)` adds the `train` parser to the front door (serve/cli.py); `python -m train` runs the
same command, which is what the `deepspeed` launcher starts on every GPU or node.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import textwrap

EXAMPLES = textwrap.dedent("""\
    examples:
      mllm train configs/train/align.yaml
      mllm train configs/train/instruct.yaml --resume
      mllm train configs/train/instruct.yaml max_steps=20 optim.lr=1e-4 output_dir=runs/try
      deepspeed --num_gpus 8 --module train configs/train/instruct.yaml deepspeed=configs/deepspeed/zero2.json
    """)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="training config YAML (see configs/train/)")
    parser.add_argument(
        "overrides",
        nargs=argparse.REMAINDER,
        metavar="KEY=VALUE",
        help="override config fields, dotted for sections: optim.lr=1e-4 data.max_records=100 "
        "(--resume may come anywhere)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest checkpoint in output_dir (model, optimizer, scheduler, "
        "step, RNG and data position)",
    )
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    """Train one stage; prints the run summary as JSON on stdout (rank 0)."""
    from mllm.errors import MllmError
    from train.config import load_train_config
    from train.trainer import train

    overrides = [o for o in args.overrides if o != "--resume"]
    for option in overrides:
        if (
            option.startswith("-")
            and not option.startswith("--local_rank")
            and not option.startswith("--local-rank")
        ):
            raise MllmError(f"unknown option {option}; overrides are KEY=VALUE")
    overrides = [o for o in overrides if "=" in o or not o.startswith("-")]
    config = load_train_config(args.config, [o for o in overrides if not o.startswith("--")])
    summary = train(config, resume=args.resume or "--resume" in args.overrides)
    if summary.get("rank", 0) == 0:
        print(json.dumps(summary, indent=2))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `mllm train`."""
    parser = subparsers.add_parser(
        "train",
        help="train a stage: clip (vision tower), align (projector), instruct (projector + LoRA)",
        description="Train one stage from a YAML config on DeepSpeed (CPU: gloo; GPUs: start with the "
        "`deepspeed` launcher). Checkpoints, metrics.jsonl and loss.png go to output_dir.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def main(argv: list[str] | None = None) -> int:
    """`python -m train CONFIG ...` (what the deepspeed launcher runs)."""
    from mllm.errors import MllmError

    parser = argparse.ArgumentParser(
        prog="python -m train", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return run(args)
    except MllmError as exc:
        print(f"mllm train: error: {exc}", file=sys.stderr)
        return 1
