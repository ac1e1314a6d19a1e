"""Projector ablation at the same budget: for each projector (linear, mlp2x_gelu, qformer) the same align and
instruct steps from the same vision tower and data, then VQA accuracy per question type on the test split,
with the time each took. Writes OUT/ablation.json and OUT/ablation.md.

    python -m train.ablation --release runs/release --out runs/ablation --align-steps 15 --instruct-steps 40
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from mllm.errors import MllmError
from train.release import run_stage

log = logging.getLogger("train.ablation")
PROJECTORS: dict[str, list[str]] = {
    "linear": ["projector.type=linear"],
    "mlp2x_gelu": ["projector.type=mlp2x_gelu"],
    "qformer": [
        "projector.type=qformer",
        "projector.num_query_tokens=9",
        "projector.qformer_hidden_size=256",
        "projector.qformer_num_layers=2",
        "projector.qformer_num_heads=4",
    ],
}


def evaluate(checkpoint: Path, data: Path, limit: int) -> dict[str, float]:
    from mllm.assistant import load_model
    from train.evaluate import load_vqa, vqa_accuracy

    items = load_vqa(data / "vqa_questions.jsonl", data / "vqa_answers.jsonl", None, limit)
    return vqa_accuracy(load_model(str(checkpoint)), items, merge_lora=True)


def ablate(release: Path, out: Path, align_steps: int, instruct_steps: int, questions: int) -> dict[str, Any]:
    train, test = release / "data" / "train", release / "data" / "test"
    common = [f"data.image_folder={train / 'images'}", "data.eval=null", "save_every=0"]
    results: dict[str, Any] = {
        "align_steps": align_steps,
        "instruct_steps": instruct_steps,
        "questions": questions,
        "projectors": {},
    }
    for name, overrides in PROJECTORS.items():
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        run_stage(
            "configs/train/align.yaml",
            [
                f"output_dir={folder / 'align'}",
                f"vision_source={release / 'clip' / 'vision'}",
                f"data.train={train / 'align.json'}",
                f"max_steps={align_steps}",
                *common,
                *overrides,
            ],
            folder / "align.log",
            folder / "align",
        )
        run_stage(
            "configs/train/instruct.yaml",
            [
                f"output_dir={folder / 'instruct'}",
                f"init_from={folder / 'align' / 'final'}",
                f"data.train={train / 'instruct.json'}",
                f"max_steps={instruct_steps}",
                "data.vqa_questions=null",
                *common,
            ],
            folder / "instruct.log",
            folder / "instruct",
        )
        train_s = time.perf_counter() - started
        scores = evaluate(folder / "instruct" / "final", test, questions)
        results["projectors"][name] = {"train_s": round(train_s, 1), "vqa": scores}
        log.info("%s: %.0f s, %s", name, train_s, json.dumps(scores))
        (out / "ablation.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "ablation.md").write_text(table(results))
    return results


def table(results: dict[str, Any]) -> str:
    types = sorted({t for r in results["projectors"].values() for t in r["vqa"] if t != "overall"})
    lines = [
        "| projector | train time (s) | overall | " + " | ".join(types) + " |",
        "|---|---|---|" + "---|" * len(types),
    ]
    for name, r in results["projectors"].items():
        cells = [f"{r['vqa'].get(t, 0) * 100:.1f}%" for t in ("overall", *types)]
        lines.append(f"| {name} | {r['train_s']:.0f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m train.ablation",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--release", type=Path, default=Path("runs/release"), help="a release run (data, clip)"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--align-steps", type=int, default=15)
    parser.add_argument("--instruct-steps", type=int, default=40)
    parser.add_argument("--questions", type=int, default=200)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        results = ablate(args.release, args.out, args.align_steps, args.instruct_steps, args.questions)
    except MllmError as exc:
        print(f"ablation: error: {exc}", file=sys.stderr)
        return 1
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
