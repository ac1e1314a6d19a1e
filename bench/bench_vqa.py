"""Batched VQA throughput: questions/s at batch 1, 4 and 16 over shapes-world questions, with batch 1 as the
reference; answers at every batch size must equal batch 1's at temperature 0."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any


def shapes_questions(count: int, seed: int = 7) -> list[tuple[list[Path], str]]:
    """`count` shapes-world test questions with their images, generated into a temp folder."""
    from data_tools.synth.writer import SynthConfig, synthesize

    out = Path(tempfile.mkdtemp(prefix="mllm-bench-vqa-")) / "shapes"
    synthesize(SynthConfig(out=out, num_images=max(8, count // 2), seed=seed, split="test", progress=False))
    items = []
    with (out / "vqa_questions.jsonl").open() as f:
        for line in f:
            record = json.loads(line)
            items.append(([out / "images" / record["image"]], record["text"]))
            if len(items) == count:
                break
    return items


def run(spec: str, count: int = 256, batch_sizes: tuple[int, ...] = (1, 4, 16)) -> list[dict[str, Any]]:
    import mllm
    from mllm.batch import answer_batch

    assistant = mllm.load(spec, batches=True, device="cpu")  # as `mllm vqa` loads it on a CPU
    items = shapes_questions(count)
    answer_batch(assistant, items[:4], max_new_tokens=16, batch_size=4)  # warm-up
    results: dict[int, tuple[float, list[str]]] = {}
    for size in batch_sizes:
        start = time.perf_counter()
        answers = answer_batch(assistant, items, max_new_tokens=16, batch_size=size)
        results[size] = (time.perf_counter() - start, answers)
    base_seconds, base_answers = results[batch_sizes[0]]
    rows = []
    for size, (seconds, answers) in results.items():
        same = sum(a == b for a, b in zip(answers, base_answers))
        rows.append(
            {
                "batch size": size,
                "questions/s": len(items) / seconds,
                "x batch 1": base_seconds / seconds,
                "answers equal to batch 1": f"{same}/{len(items)}",
            }
        )
    return [
        {
            "title": f"Batched VQA throughput over {len(items)} shapes-world questions ({spec})",
            "note": "Reference: batch 1 in the same run. Target: batch 16 >= 6x batch 1, identical answers at "
            "temperature 0.",
            "rows": rows,
        }
    ]
