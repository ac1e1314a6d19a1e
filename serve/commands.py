"""`mllm vqa | eval | serve | api | export`: the serving subcommands, added to the front door (serve/cli.py)
by `register(subparsers)`.

Module imports stay light: each command imports torch, gradio or uvicorn when it runs. Logs go to stderr,
results to stdout or the named file; user errors are raised as MllmError (one line, exit code 1).
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from mllm.errors import MllmError
from mllm.limits import INFERENCE_PRECISIONS

if TYPE_CHECKING:
    from mllm.assistant import Assistant

log = logging.getLogger(__name__)
_FORMATTER = argparse.RawDescriptionHelpFormatter  # keeps the epilog's example lines as written
MODEL_HELP = "`default` (the shipped assistant), a checkpoint folder, or a model config YAML"


def add_model_args(parser: argparse.ArgumentParser, quantization: bool = True) -> None:
    """--model, and --load-4bit / --load-8bit when the command runs inference."""
    parser.add_argument(
        "--model", default="default", help=f"model to load: {MODEL_HELP} (default: %(default)s)"
    )
    if quantization:
        group = parser.add_mutually_exclusive_group()
        group.add_argument(
            "--load-4bit", action="store_true", help="load the LLM in 4-bit (bitsandbytes NF4)"
        )
        group.add_argument("--load-8bit", action="store_true", help="load the LLM in 8-bit (bitsandbytes)")
        parser.add_argument(
            "--precision",
            choices=INFERENCE_PRECISIONS,
            default="auto",
            help="weights of the LLM's linear layers when decoding: fp16 halves the bytes read per token on a "
            "CPU; bf16 does too and runs prompts several times faster on CPUs with AMX (bf16 matmul inputs and "
            "outputs); int8 quarters them but also quantizes activations (much less accurate on small LLMs); "
            "auto is bf16 on CPUs with AMX (and, for mllm vqa over a questions file, with AVX-512 BF16), else "
            "fp16 where the kernels exist, else fp32; on a GPU fp16 and bf16 cast the LLM's weights and auto is "
            "bf16 where the GPU has it (default: %(default)s)",
        )
        parser.add_argument(
            "--device",
            default="auto",
            help="where to run: auto (a CUDA GPU when there is one, else the CPU), cpu, cuda or cuda:N "
            "(default: %(default)s)",
        )


def load_assistant(args: argparse.Namespace, batches: bool = False) -> Assistant:
    """The Assistant named by --model (with --load-4bit / --load-8bit, --precision); `batches` for a command
    that answers many prompts at once (mllm.load)."""
    import mllm

    log.info("loading model %s", args.model)
    return mllm.load(
        args.model,
        load_in_4bit=getattr(args, "load_4bit", False),
        load_in_8bit=getattr(args, "load_8bit", False),
        precision=getattr(args, "precision", "auto"),
        batches=batches,
        device=getattr(args, "device", "auto"),
    )


def add_sampling_args(parser: argparse.ArgumentParser, max_new_tokens: int, temperature: float) -> None:
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=max_new_tokens,
        help="longest reply in tokens (default: %(default)s)",
    )
    parser.add_argument(
        "--temperature",
        type=float,
        default=temperature,
        help="sampling temperature; 0 is greedy (default: %(default)s)",
    )
    parser.add_argument(
        "--top-p", type=float, default=1.0, help="nucleus sampling mass (default: %(default)s)"
    )


def _check_sampling(args: argparse.Namespace) -> None:
    if args.max_new_tokens < 1:
        raise MllmError(f"--max-new-tokens {args.max_new_tokens}: must be at least 1")
    if args.temperature < 0:
        raise MllmError(f"--temperature {args.temperature}: must be >= 0")
    if not 0 < args.top_p <= 1:
        raise MllmError(f"--top-p {args.top_p}: must be in (0, 1]")


def _vqa(args: argparse.Namespace) -> int:
    _check_sampling(args)
    single = args.question is not None
    if single == (args.questions is not None):
        raise MllmError(
            "give either --question (with --image) or --questions with --image-folder and --answers"
        )
    if args.questions is not None and (args.image_folder is None or args.answers is None):
        raise MllmError("--questions needs --image-folder and --answers")
    if single and (args.image_folder is not None or args.answers is not None):
        raise MllmError("--image-folder and --answers go with --questions, not --question")
    assistant = load_assistant(args, batches=not single)
    if single:
        from mllm.batch import answer_batch

        images = [Path(p) for p in args.image or []]
        (answer,) = answer_batch(
            assistant, [(images, args.question)], args.max_new_tokens, 1, args.temperature, args.top_p
        )
        print(answer)
        return 0
    from serve.vqa import run_questions

    summary = run_questions(
        assistant,
        Path(args.questions),
        Path(args.image_folder),
        Path(args.answers),
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        model_id=args.model_id,
        progress=not args.no_progress,
    )
    log.info(
        "answered %d, errors %d, skipped (already answered) %d -> %s",
        summary.answered,
        summary.errors,
        summary.skipped,
        args.answers,
    )
    return 0


def _eval(args: argparse.Namespace) -> int:
    from serve.evaluate import evaluate, format_json, format_table

    counts = evaluate(Path(args.answers), Path(args.gold))
    print(format_json(counts) if args.json else format_table(counts))
    return 0


def _serve(args: argparse.Namespace) -> int:
    from serve.ui import UISettings, launch

    settings = UISettings(
        host=args.host,
        port=args.port,
        concurrency=args.concurrency,
        max_queue=args.max_queue,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        max_file_mb=args.max_file_mb,
    )
    launch(load_assistant(args), settings)
    return 0


def _api(args: argparse.Namespace) -> int:
    from serve.api import ApiSettings, run_server

    key = args.api_key if args.api_key is not None else os.environ.get("MLLM_API_KEY") or None
    settings = ApiSettings(
        api_key=key,
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        max_image_pixels=args.max_image_pixels,
        max_tokens_limit=args.max_tokens_limit,
        default_max_tokens=min(args.default_max_tokens, args.max_tokens_limit),
        allow_remote_images=args.allow_remote_images,
        local_image_folder=Path(args.allow_local_images) if args.allow_local_images else None,
        concurrency=args.concurrency,
        max_queue=args.max_queue,
    )
    run_server(load_assistant(args), settings, host=args.host, port=args.port)
    return 0


def _export(args: argparse.Namespace) -> int:
    from serve.export import export

    folder = export(args.model, args.format, Path(args.out), overwrite=args.overwrite)
    print(f"exported {args.model} as {args.format} to {folder}")
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be at least 1")
    return value


def _register_vqa(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "vqa",
        help="answer questions about images (one, or a LLaVA questions file, batched)",
        description="Answer one question about an image, or a LLaVA model_vqa questions file into an answers file "
        "(batched with left padding, resumable, bad lines become error records).",
        formatter_class=_FORMATTER,
        epilog="Examples:\n  mllm vqa --model default --image shapes.png --question 'What color is the circle?'\n"
        "  mllm vqa --model runs/sft --questions data/test/vqa_questions.jsonl \\\n"
        "      --image-folder data/test/images --answers answers.jsonl --batch-size 16",
    )
    add_model_args(p)
    p.add_argument("--image", action="append", metavar="PATH", help="image file (repeat for several images)")
    p.add_argument("--question", metavar="TEXT", help="one question; the answer is printed")
    p.add_argument(
        "--questions", metavar="Q.jsonl", help='questions file: {"question_id", "image", "text"} per line'
    )
    p.add_argument("--image-folder", metavar="DIR", help="folder the questions' image names are relative to")
    p.add_argument("--answers", metavar="OUT.jsonl", help="answers file (appended; answered ids are skipped)")
    p.add_argument(
        "--batch-size",
        type=_positive,
        default=16,
        help="prompts per batch (default: %(default)s, the fastest of 8, 16, 32 and 64 on a 2-core CPU)",
    )
    p.add_argument("--model-id", help="model_id written in the answers (default: the model's name)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_sampling_args(p, max_new_tokens=128, temperature=0.0)
    p.set_defaults(func=_vqa)


def _register_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="score VQA answers against gold answers (normalized exact match)",
        description="Normalized exact match (case, punctuation, articles, number words, synonyms) overall and "
        'per question type. Gold lines: {"question_id", "answer", "type"}.',
        formatter_class=_FORMATTER,
        epilog="Example:\n  mllm eval --answers answers.jsonl --gold data/test/vqa_answers.jsonl --json",
    )
    p.add_argument("--answers", required=True, metavar="OUT.jsonl", help="answers file written by `mllm vqa`")
    p.add_argument("--gold", required=True, metavar="GOLD.jsonl", help="gold answers file")
    p.add_argument("--json", action="store_true", help='print one JSON line {"overall": ..., "<type>": ...}')
    p.set_defaults(func=_eval)


def _register_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="Gradio chat UI in the browser",
        description="Multimodal chat in the browser: attach images, streamed replies, stop / regenerate / undo / "
        "clear, sampling controls. Each browser session keeps its own conversation.",
        formatter_class=_FORMATTER,
        epilog="Example:\n  mllm serve --model default --host 127.0.0.1 --port 7860 --concurrency 2",
    )
    add_model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    p.add_argument("--port", type=int, default=7860, help="port (default: %(default)s)")
    p.add_argument(
        "--concurrency", type=_positive, default=1, help="replies generated at once (default: %(default)s)"
    )
    p.add_argument(
        "--max-queue", type=_positive, default=32, help="requests that may wait (default: %(default)s)"
    )
    p.add_argument(
        "--max-file-mb", type=float, default=20.0, help="largest uploaded image (default: %(default)s MB)"
    )
    add_sampling_args(p, max_new_tokens=256, temperature=0.2)
    p.set_defaults(func=_serve)


def _register_api(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "api",
        help="OpenAI-compatible HTTP API (/v1/chat/completions, /v1/models)",
        description="OpenAI-compatible chat completions with image_url parts (base64 data URLs), streaming "
        "(server-sent events), token usage, an optional API key and request limits.",
        formatter_class=_FORMATTER,
        epilog="Example:\n  MLLM_API_KEY=secret mllm api --model default --port 8000\n"
        "  then: OpenAI(base_url='http://127.0.0.1:8000/v1', api_key='secret')",
    )
    add_model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    p.add_argument("--api-key", help="required bearer key (default: env MLLM_API_KEY; none: no key needed)")
    p.add_argument(
        "--concurrency", type=_positive, default=1, help="replies generated at once (default: %(default)s)"
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=8,
        help="requests that may wait for a slot; more are answered 429 (default: %(default)s)",
    )
    p.add_argument(
        "--max-body-mb", type=float, default=20.0, help="largest request body (default: %(default)s MB)"
    )
    p.add_argument(
        "--max-image-pixels",
        type=_positive,
        default=4096 * 4096,
        help="largest image, width x height (default: %(default)s)",
    )
    p.add_argument(
        "--max-tokens-limit",
        type=_positive,
        default=2048,
        help="largest max_tokens a request may ask for (default: %(default)s)",
    )
    p.add_argument(
        "--default-max-tokens",
        type=_positive,
        default=512,
        help="max_tokens when a request gives none (default: %(default)s)",
    )
    p.add_argument(
        "--allow-remote-images", action="store_true", help="fetch http(s) image URLs (off by default)"
    )
    p.add_argument(
        "--allow-local-images",
        metavar="DIR",
        help="accept file paths / file:// URLs of images inside DIR (off by default)",
    )
    p.set_defaults(func=_api)


def _register_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a model: transformers LLaVA folder, or a merged mllm checkpoint",
        description="hf-llava: a transformers LlavaForConditionalGeneration folder (LoRA merged; config, "
        "safetensors, processor) that loads with transformers alone. merged: an mllm checkpoint with the "
        "LoRA merged into the LLM.",
        formatter_class=_FORMATTER,
        epilog="Examples:\n  mllm export --model runs/sft --format hf-llava --out exported/llava\n"
        "  mllm export --model runs/sft --format merged --out exported/merged",
    )
    add_model_args(p, quantization=False)
    p.add_argument("--format", required=True, choices=("hf-llava", "merged"), help="what to write")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing, non-empty output folder")
    p.set_defaults(func=_export)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add vqa, eval, serve, api and export to the `mllm` front door."""
    _register_vqa(subparsers)
    _register_eval(subparsers)
    _register_serve(subparsers)
    _register_api(subparsers)
    _register_export(subparsers)
