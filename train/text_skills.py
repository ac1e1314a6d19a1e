"""Text skills kept: general text-only questions (train/text_skills.json) asked of a model, each judged
correct when the answer contains one of its accepted words. Compares a model with the base SmolLM2.

    python -m train.text_skills --model default --base configs/model/smollm2.yaml
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mllm.assistant import Assistant, load

QUESTIONS_FILE = Path(__file__).with_name("text_skills.json")


@dataclass
class SkillResult:
    question: str
    answer: str
    correct: bool


def load_questions(path: Path = QUESTIONS_FILE) -> tuple[list[dict[str, Any]], int]:
    data = json.loads(path.read_text(encoding="utf-8"))
    return data["questions"], int(data.get("max_new_tokens", 48))


def is_correct(answer: str, accept: list[str]) -> bool:
    """Whether `answer` contains an accepted word (case-insensitive, as a whole word)."""
    return any(re.search(rf"(?<!\w){re.escape(word)}(?!\w)", answer, re.IGNORECASE) for word in accept)


def ask_all(assistant: Assistant, questions: list[dict[str, Any]], max_new_tokens: int) -> list[SkillResult]:
    results = []
    for item in questions:
        answer = assistant.chat(
            [{"role": "user", "content": item["question"]}], max_new_tokens=max_new_tokens
        )
        results.append(SkillResult(item["question"], answer, is_correct(answer, item["accept"])))
    return results


def check(
    model_spec: str, base_spec: str | None, path: Path = QUESTIONS_FILE, precision: str = "auto"
) -> dict[str, Any]:
    """Ask every question of the model (and the base) as `mllm.load` serves them (at `precision`); counts and
    the per-question answers."""
    questions, max_new_tokens = load_questions(path)
    report: dict[str, Any] = {"questions": len(questions)}
    for name, spec in (("base", base_spec), ("model", model_spec)):
        if spec is None:
            continue
        results = ask_all(load(spec, precision=precision), questions, max_new_tokens)
        report[name] = {
            "spec": spec,
            "correct": sum(r.correct for r in results),
            "answers": [r.__dict__ for r in results],
        }
    if "base" in report:
        base_ok = {r["question"] for r in report["base"]["answers"] if r["correct"]}
        kept = [r for r in report["model"]["answers"] if r["question"] in base_ok and r["correct"]]
        report["base_correct"] = len(base_ok)
        report["kept"] = len(kept)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m train.text_skills",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", default="default", help="model to check (default: the shipped assistant)")
    parser.add_argument(
        "--base", default=None, help="base model to compare with, e.g. configs/model/smollm2.yaml"
    )
    parser.add_argument("--questions", type=Path, default=QUESTIONS_FILE)
    parser.add_argument("--out", type=Path, default=None, help="write the JSON report here")
    args = parser.parse_args(argv)
    report = check(args.model, args.base, args.questions)
    text = json.dumps(report, indent=2)
    if args.out is not None:
        args.out.write_text(text + "\n")
    print(
        json.dumps(
            {k: v for k, v in report.items() if k not in ("base", "model")}
            | {k: report[k]["correct"] for k in ("base", "model") if k in report}
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
