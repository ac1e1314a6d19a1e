"""`mllm data ...` subcommands: validate, stats, convert (captions | vqa), synth and distill-text.

`register(subparsers)` adds the `data` parser to the front door (serve/cli.py). Module-level imports stay light;
each command imports what it needs when it runs. Results go to stdout or the named files, progress to stderr.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Callable
from typing import Any

from data_tools.llava import SHORT_ANSWER_SUFFIX
from mllm.limits import DEFAULT_MAX_PIXELS

_FORMATTER = argparse.RawDescriptionHelpFormatter  # keeps the epilog's example lines as written
_MODEL_HELP = "model whose tokenizer counts tokens: `default`, a checkpoint folder or a model YAML"


def _wrap(text: str) -> str:
    return textwrap.fill(text, 100)


def _validate(args: argparse.Namespace) -> int:
    from data_tools.validate import print_report, validate_file, write_fixed

    report = validate_file(args.file, args.image_folder, args.model, args.max_pixels)
    print_report(report, sys.stdout)
    if args.fix is not None:
        count = write_fixed(report, args.fix)
        print(f"wrote {count} valid records ({len(report.fixes)} fixes applied) to {args.fix}")
    return 0 if report.ok else 1


def _stats(args: argparse.Namespace) -> int:
    from data_tools.schema import load_records
    from data_tools.stats import compute_stats, format_stats, plot_histogram
    from data_tools.tokens import measure_lengths

    records = load_records(args.file)
    lengths = measure_lengths(records, args.model)
    print(format_stats(compute_stats(records, lengths), str(args.file), args.bins))
    if args.plot is not None:
        plot_histogram(lengths, args.plot, f"{args.file}: record lengths")
        print(f"plot: {args.plot}")
    return 0


def _convert_captions(args: argparse.Namespace) -> int:
    from data_tools.convert import convert_captions

    count = convert_captions(args.input, args.out, args.image_key, args.caption_key, args.seed)
    print(f"wrote {count} alignment records to {args.out}")
    return 0


def _convert_vqa(args: argparse.Namespace) -> int:
    from data_tools.convert import convert_vqa

    count = convert_vqa(
        args.input,
        args.out,
        args.questions,
        args.answers,
        args.image_key,
        args.question_key,
        args.answer_key,
        args.suffix,
    )
    written = [str(p) for p in (args.out, args.questions, args.answers) if p is not None]
    print(f"converted {count} questions -> {', '.join(written)}")
    return 0


def _turn_weight(text: str) -> tuple[str, float]:
    """`--turn-weight position=2` -> ("position", 2.0); which types exist is checked by SynthConfig."""
    kind, _, weight = text.partition("=")
    try:
        return kind, float(weight)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected TYPE=WEIGHT, e.g. position=2") from None


def _synth(args: argparse.Namespace) -> int:
    from pathlib import Path

    from data_tools.synth.writer import SynthConfig, synthesize

    config = SynthConfig(
        out=Path(args.out),
        num_images=args.num_images,
        seed=args.seed,
        image_size=args.image_size,
        split=args.split,
        phrasing=args.phrasing,
        questions_per_image=args.questions_per_image,
        max_turns=args.max_turns,
        text_fraction=args.text_fraction,
        turn_weights=dict(args.turn_weight),
        count_repeated=args.count_repeated,
        align_counts=args.align_counts,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    summary = synthesize(config)
    print(
        f"wrote {summary.images} {args.split} images to {args.out}: {summary.instruct_records} instruction "
        f"records ({summary.text_records} text-only), {summary.vqa_questions} VQA questions "
        f"({args.phrasing} phrasing) in {summary.seconds:.1f} s "
        f"({summary.images / max(summary.seconds, 1e-9):.0f} images/s)"
    )
    return 0


def _count_questions(args: argparse.Namespace) -> int:
    from pathlib import Path

    from data_tools.synth.count_questions import ANSWERS_FILE, QUESTIONS_FILE, write_count_questions

    folder = Path(args.split_dir)
    made = write_count_questions(folder, args.per_answer, args.seed, args.phrasing)
    print(
        f"wrote {sum(made.values())} count questions to {folder / QUESTIONS_FILE} and their answers to "
        f"{folder / ANSWERS_FILE}: " + ", ".join(f"{bucket}: {n}" for bucket, n in made.items())
    )
    return 0


def _distill_text(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from data_tools.distill import distill_text_records
    from data_tools.llava import HUMAN, write_records
    from data_tools.schema import load_records
    from mllm.assistant import load

    records = load_records(args.file)
    assistant = load(args.model)
    total = sum(t.role == HUMAN for r in records if not r.images for t in r.turns)
    with tqdm(total=total, file=sys.stderr, unit="answer", desc="distill") as bar:
        out, summary = distill_text_records(
            records, assistant, args.max_new_tokens, args.batch_size, progress=bar.update
        )
    write_records(out, args.out)
    print(
        f"wrote {summary.records} records to {args.out}: {summary.turns} answers of {summary.text_records} "
        f"text-only records by {args.model} ({summary.cut} cut to their last sentence, "
        f"{summary.dropped_turns} turns and {summary.dropped_records} records dropped)"
    )
    return 0


def _help(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """A command function that prints `parser`'s help on stderr (for `mllm data` without a subcommand)."""

    def show(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    return show


def _add_validate(sub: Any) -> None:
    p = sub.add_parser(
        "validate",
        formatter_class=_FORMATTER,
        help="check every record of a LLaVA JSON / JSONL file",
        description=_wrap(
            "Check JSON syntax, fields and types, role order, <image> markers, image files (exist, decode, "
            "pixel limit, inside the image folder) and, with --model, token lengths. Each problem is "
            "printed as FILE:LINE: record ID: field: problem, then a summary. Exit status 1 on any error "
            "(also with --fix, which still writes the good records)."
        ),
        epilog="Example:\n  mllm data validate data/instruct.json --image-folder data/images --fix clean.json",
    )
    p.add_argument("file", help="LLaVA data: a JSON list or JSONL")
    p.add_argument(
        "--image-folder", help="folder the image paths are relative to (images are not checked without)"
    )
    p.add_argument("--model", help=_MODEL_HELP + "; checks each record against its context length")
    p.add_argument(
        "--fix", metavar="OUT", help="write the valid records, fixes applied (JSONL if OUT ends in .jsonl)"
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help=f"refuse images with more pixels (decompression bombs); default {DEFAULT_MAX_PIXELS}",
    )
    p.set_defaults(func=_validate)


def _add_stats(sub: Any) -> None:
    p = sub.add_parser(
        "stats",
        formatter_class=_FORMATTER,
        help="counts and a length histogram of a LLaVA file",
        description=_wrap(
            "Record, image and turn counts and a histogram of record lengths. Without --model, lengths are "
            "whitespace words (said so in the output); with --model, tokens as training encodes them."
        ),
        epilog="Example:\n  mllm data stats data/instruct.json --plot lengths.png",
    )
    p.add_argument("file", help="LLaVA data: a JSON list or JSONL")
    p.add_argument("--model", help=_MODEL_HELP)
    p.add_argument("--plot", metavar="PNG", help="also save the histogram as a PNG")
    p.add_argument("--bins", type=int, default=10, help="histogram bins in the text output (default 10)")
    p.set_defaults(func=_stats)


def _add_convert(sub: Any) -> None:
    p = sub.add_parser(
        "convert",
        formatter_class=_FORMATTER,
        help="captions or VQA tables -> LLaVA records",
        description=_wrap(
            "Convert captions (image, caption) into alignment records, or VQA rows (image, question, "
            "answer) into instruction records and model_vqa question / gold files."
        ),
        epilog="Examples:\n  mllm data convert captions captions.csv --out align.json\n"
        "  mllm data convert vqa vqa.jsonl --out instruct.json --questions q.jsonl --answers a.jsonl",
    )
    kinds = p.add_subparsers(dest="convert_kind", metavar="KIND")
    p.set_defaults(func=_help(p))
    c = kinds.add_parser(
        "captions",
        formatter_class=_FORMATTER,
        help="captions CSV / JSONL -> alignment (stage 1) records",
        description=_wrap(
            "Each row (CSV with a header, or JSONL) gives an image path and its caption; each becomes a "
            "record asking for a brief caption. An `id` column is kept, else ids are FILE-STEM-NNNNNN."
        ),
        epilog="Example:\n  mllm data convert captions captions.csv --out align.json",
    )
    c.add_argument("input", help="CSV (.csv / .tsv, with a header) or JSONL / JSON list")
    c.add_argument("--out", required=True, help="LLaVA records to write (.json list or .jsonl)")
    c.add_argument("--image-key", default="image", help="column of the image path (default image)")
    c.add_argument("--caption-key", default="caption", help="column of the caption (default caption)")
    c.add_argument("--seed", type=int, default=0, help="seed of the prompt choice (default 0)")
    c.set_defaults(func=_convert_captions)
    v = kinds.add_parser(
        "vqa",
        formatter_class=_FORMATTER,
        help="VQA rows -> instruction records and question / gold files",
        description=_wrap(
            "Each row gives image, question, answer (optional question_id or id, and type). Questions get "
            "the short-answer instruction appended. Writes any of: LLaVA instruction records (--out), a "
            "question file {question_id, image, text} (--questions), a gold file {question_id, answer, "
            "type} (--answers)."
        ),
        epilog="Example:\n  mllm data convert vqa vqa.jsonl --out instruct.json --questions q.jsonl --answers a.jsonl",
    )
    v.add_argument("input", help="JSONL / JSON list, or CSV with a header")
    v.add_argument("--out", help="LLaVA instruction records to write")
    v.add_argument("--questions", help="model_vqa question file to write (JSONL)")
    v.add_argument("--answers", help="gold answer file to write (JSONL)")
    v.add_argument("--image-key", default="image", help="column of the image path (default image)")
    v.add_argument("--question-key", default="question", help="column of the question (default question)")
    v.add_argument("--answer-key", default="answer", help="column of the answer (default answer)")
    v.add_argument(
        "--suffix",
        default=SHORT_ANSWER_SUFFIX,
        help=f"appended to each question (default {SHORT_ANSWER_SUFFIX!r})",
    )
    v.set_defaults(func=_convert_vqa)


def _add_synth(sub: Any) -> None:
    p = sub.add_parser(
        "synth",
        formatter_class=_FORMATTER,
        help="generate the synthetic shapes world",
        description=_wrap(
            "Write a deterministic shapes data set: images/*.png, scenes.jsonl, pairs.jsonl (contrastive "
            "captions), align.json (stage 1), instruct.json (stage 2, ~10% text-only), vqa_questions.jsonl "
            "and vqa_answers.jsonl, synth.json. Splits: train; test (same distribution, never the same "
            "scene); compositional (every image holds one of 5 (color, shape) pairs that train and test "
            "never show)."
        ),
        epilog="Examples:\n  mllm data synth --out data/shapes-train --num-images 10000 --seed 0\n"
        "  mllm data synth --out data/shapes-para --num-images 500 --seed 1 --split test --phrasing heldout",
    )
    p.add_argument("--out", required=True, help="folder to write (must be new or empty, unless --overwrite)")
    p.add_argument("--num-images", type=int, required=True, help="how many images")
    p.add_argument(
        "--seed", type=int, required=True, help="seed; the same seed and split give the same files"
    )
    p.add_argument(
        "--image-size", type=int, default=128, help="side of the square canvas in pixels (default 128)"
    )
    p.add_argument(
        "--split", default="train", choices=("train", "test", "compositional"), help="default train"
    )
    p.add_argument(
        "--phrasing",
        default="train",
        choices=("train", "heldout"),
        help="question templates of the VQA files: train, or held-out paraphrases (default train)",
    )
    p.add_argument("--questions-per-image", type=int, default=2, help="VQA questions per image (default 2)")
    p.add_argument(
        "--max-turns", type=int, default=5, help="most question/answer turns per record (default 5)"
    )
    p.add_argument(
        "--text-fraction",
        type=float,
        default=0.1,
        help="share of text-only records in instruct.json (default 0.1)",
    )
    p.add_argument(
        "--turn-weight",
        type=_turn_weight,
        action="append",
        default=[],
        metavar="TYPE=W",
        help="how often instruction turns are of TYPE (color, shape, count, exist, position, size, describe) "
        "relative to the others, which weigh 1; repeat for several types",
    )
    p.add_argument(
        "--count-repeated",
        type=float,
        default=0.0,
        metavar="P",
        help="chance that an instruction turn counting one colour or shape asks about one the image holds more "
        "than once (default 0: any colour or shape, so nearly all such answers are 0 or 1); VQA files unchanged",
    )
    p.add_argument(
        "--align-counts",
        action="store_true",
        help="open each align.json caption with the scene's counts ('4 objects; red: 2, blue: 1, green: 1; "
        "circle: 2, star: 1, square: 1.'); the clip pairs keep the plain caption",
    )
    p.add_argument("--overwrite", action="store_true", help="replace the files of an earlier run in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=_synth)


def _add_count_questions(sub: Any) -> None:
    p = sub.add_parser(
        "count-questions",
        formatter_class=_FORMATTER,
        help="count questions balanced by answer, over a synth split (a diagnostic)",
        description=_wrap(
            "Write count_questions.jsonl and count_answers.jsonl into a split folder written by `mllm data "
            "synth`: questions counting one colour or one shape of its scenes, the same number for each answer "
            "0, 1, 2 and 3+ (typed `count 0` ... `count 3+`), so that `mllm eval` tells which counts a model "
            "reads; in the natural mix of vqa_questions.jsonl nearly all such answers are 0 or 1."
        ),
        epilog="Example:\n  mllm data count-questions data/shapes-test --per-answer 50\n"
        "  mllm vqa --model default --questions data/shapes-test/count_questions.jsonl \\\n"
        "      --image-folder data/shapes-test/images --answers counts.jsonl\n"
        "  mllm eval --answers counts.jsonl --gold data/shapes-test/count_answers.jsonl",
    )
    p.add_argument("split_dir", help="a folder written by `mllm data synth` (its scenes.jsonl and images/)")
    p.add_argument(
        "--per-answer",
        type=int,
        default=50,
        help="questions for each answer 0, 1, 2, 3+ (fewer where the scenes hold fewer; default 50)",
    )
    p.add_argument("--seed", type=int, default=0, help="which questions are drawn (default 0)")
    p.add_argument(
        "--phrasing", default="train", choices=("train", "heldout"), help="question templates (default train)"
    )
    p.set_defaults(func=_count_questions)


def _add_distill_text(sub: Any) -> None:
    p = sub.add_parser(
        "distill-text",
        formatter_class=_FORMATTER,
        help="answer the text-only chats of an instruction file with a (base) model",
        description=_wrap(
            "Replace the answers of every text-only record with the model's own greedy answers, turn by "
            "turn, so training on them keeps the model's text answers instead of teaching new ones. The file "
            "is checked as `validate` checks it (the first error stops it); records with images are copied."
        ),
        epilog="Example:\n  mllm data distill-text data/instruct.json --model configs/model/smollm2.yaml "
        "--out data/instruct.distilled.json",
    )
    p.add_argument("file", help="LLaVA instruction data: a JSON list or JSONL (checked as `validate` does)")
    p.add_argument(
        "--model", required=True, help="the answering model: a model YAML, checkpoint or `default`"
    )
    p.add_argument("--out", required=True, help="file to write: JSONL if it ends in .jsonl, else a JSON list")
    p.add_argument("--max-new-tokens", type=int, default=64, help="longest answer in tokens (default 64)")
    p.add_argument("--batch-size", type=int, default=16, help="answers generated together (default 16)")
    p.set_defaults(func=_distill_text)


def register(subparsers: Any) -> None:
    """Add `data` with its subcommands to the front door's subparsers."""
    data = subparsers.add_parser(
        "data",
        formatter_class=_FORMATTER,
        help="validate, inspect, convert and synthesize training data",
        description=_wrap(
            "Work with LLaVA-format data: validate, stats, convert; generate the shapes world: synth, and "
            "count questions balanced by answer over it: count-questions."
        ),
        epilog="Example:\n  mllm data synth --out data/shapes --num-images 1000 --seed 0",
    )
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    data.set_defaults(func=_help(data))
    _add_validate(sub)
    _add_stats(sub)
    _add_convert(sub)
    _add_synth(sub)
    _add_count_questions(sub)
    _add_distill_text(sub)
