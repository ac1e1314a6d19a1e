"""Count questions balanced by their answer, over the scenes of an existing split: a diagnostic of whether a
model reads how many objects of one colour or one shape an image holds.

In the natural mix of the VQA files, most counts of one colour or shape are 0 or 1 (on the test split 0: 52%,
1: 35%, 2: 10%, 3 or more: 3%), so a model that answers "1" whenever the colour or shape is there, and "0"
otherwise, scores about 87% on them while never telling one object from two. Here every answer 0, 1, 2 and
3+ gets the same number of questions (as many as the scenes hold, up to `per_answer`), typed `count 0` ...
`count 3+`, so that per-type accuracy says which counts the model reads.

    mllm data count-questions data/test --per-answer 50
    mllm vqa --model default --questions data/test/count_questions.jsonl --image-folder data/test/images \
        --answers out.jsonl
    mllm eval --answers out.jsonl --gold data/test/count_answers.jsonl
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_tools.llava import SHORT_ANSWER_SUFFIX
from data_tools.synth.questions import PHRASINGS, TEMPLATES, plural
from data_tools.synth.world import COLORS, SHAPES
from mllm.errors import MllmError
from mllm.jsonl import read_jsonl_numbered

QUESTIONS_FILE = "count_questions.jsonl"
ANSWERS_FILE = "count_answers.jsonl"
TOP = 3  # answers of TOP or more share one bucket
BUCKETS: tuple[str, ...] = (*(f"count {n}" for n in range(TOP)), f"count {TOP}+")


@dataclass(frozen=True)
class CountQuestion:
    """One question about one image: whether it counts a colour or a shape, its text and the count."""

    image: str
    key: str  # "color" or "shape"
    text: str
    answer: int

    @property
    def bucket(self) -> str:
        return BUCKETS[min(self.answer, TOP)]


def _candidates(scenes: Path, phrasing: str, rng: random.Random) -> list[CountQuestion]:
    """Every (image, colour) and (image, shape) of the scenes file as a question, worded from `phrasing`'s
    count templates."""
    templates = TEMPLATES[phrasing]
    found = []
    for number, scene in read_jsonl_numbered(scenes):
        try:
            image, objects = scene["image"], scene["objects"]
            colors = Counter(obj["color"] for obj in objects)
            shapes = Counter(obj["shape"] for obj in objects)
        except KeyError as exc:
            raise MllmError(f"{scenes}: line {number}: not a scene (missing field {exc})") from None
        except TypeError:
            raise MllmError(
                f"{scenes}: line {number}: field objects: expected a list of objects with color and shape"
            ) from None
        for color in COLORS:
            text = rng.choice(templates["count_color"]).format(color=color)
            found.append(CountQuestion(image, "color", text, colors[color]))
        for shape in SHAPES:
            text = rng.choice(templates["count_shape"]).format(shape=shape, shapes=plural(shape))
            found.append(CountQuestion(image, "shape", text, shapes[shape]))
    return found


def balanced_count_questions(
    scenes: Path, per_answer: int, seed: int = 0, phrasing: str = "train"
) -> list[CountQuestion]:
    """Up to `per_answer` questions for each of the answers 0, 1, 2 and 3+, drawn at random (`seed`) from all
    the colour and shape counts of the scenes; each answer's questions split evenly between colours and shapes
    where the scenes allow. Deterministic for (scenes, per_answer, seed, phrasing)."""
    if per_answer < 1:
        raise MllmError(f"--per-answer {per_answer}: must be at least 1")
    if phrasing not in PHRASINGS:
        raise MllmError(f"--phrasing {phrasing!r}: valid phrasings are {', '.join(PHRASINGS)}")
    if not scenes.is_file():
        raise MllmError(f"{scenes}: no scenes file (write the split with `mllm data synth` first)")
    rng = random.Random(f"mllm-counts/{seed}")
    pools: dict[tuple[str, str], list[CountQuestion]] = {}
    for question in _candidates(scenes, phrasing, rng):
        pools.setdefault((question.bucket, question.key), []).append(question)
    chosen: list[CountQuestion] = []
    for bucket in BUCKETS:
        colors, shapes = (
            rng.sample(p, len(p)) for p in (pools.get((bucket, k), []) for k in ("color", "shape"))
        )
        half = min(per_answer // 2, len(colors))
        take_shapes = min(per_answer - half, len(shapes))
        take_colors = min(per_answer - take_shapes, len(colors))  # colours fill in where shapes run out
        chosen += colors[:take_colors] + shapes[:take_shapes]
    return chosen


def write_count_questions(
    split_dir: Path, per_answer: int, seed: int = 0, phrasing: str = "train"
) -> dict[str, int]:
    """Write `count_questions.jsonl` and `count_answers.jsonl` (the `mllm vqa` / `mllm eval` formats) into the
    split folder, next to its `scenes.jsonl` and `images/`; how many questions each answer got."""
    questions = balanced_count_questions(split_dir / "scenes.jsonl", per_answer, seed, phrasing)
    rows: list[tuple[dict[str, Any], dict[str, Any]]] = []
    for k, q in enumerate(questions):
        qid = f"count-{seed}-{k:05d}"
        rows.append(
            (
                {"question_id": qid, "image": q.image, "text": f"{q.text}\n{SHORT_ANSWER_SUFFIX}"},
                {"question_id": qid, "answer": str(q.answer), "type": q.bucket},
            )
        )
    for name, column in ((QUESTIONS_FILE, 0), (ANSWERS_FILE, 1)):
        tmp = split_dir / f".{name}.tmp"
        tmp.write_text("".join(json.dumps(row[column]) + "\n" for row in rows), encoding="utf-8")
        tmp.replace(split_dir / name)
    return {bucket: sum(q.bucket == bucket for q in questions) for bucket in BUCKETS}
