"""`mllm data synth`: write a shapes-world data set (images, scenes, contrastive pairs, stage-1 alignment and
stage-2 instruction records, VQA questions and gold answers), deterministically for (split, seed).

Every image draws from its own random generators, derived from (split, seed, index, purpose), so an image
does not depend on how many were written before it, and each output (scene, instruction turns, VQA
questions, ...) has its own stream: changing the VQA phrasing changes only the wording of the VQA files.
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

from tqdm import tqdm

from data_tools.llava import CAPTION_PROMPTS, SHORT_ANSWER_SUFFIX, make_record
from data_tools.synth.general import general_conversation
from data_tools.synth.questions import (
    DESCRIBE_PROMPTS,
    PHRASINGS,
    QUESTION_TYPES,
    available_types,
    caption,
    count_summary,
    description,
    make_question,
)
from data_tools.synth.world import (
    ALL_PAIRS,
    HELD_OUT_PAIRS,
    MIN_IMAGE_SIZE,
    SEEN_PAIRS,
    SPLITS,
    Scene,
    draw_scene,
    sample_scene,
)
from mllm.errors import MllmError

FORMAT_VERSION = 1
OUTPUT_FILES = (
    "scenes.jsonl",
    "pairs.jsonl",
    "align.json",
    "instruct.json",
    "vqa_questions.jsonl",
    "vqa_answers.jsonl",
    "synth.json",
)
QA = tuple[str, str]


TURN_TYPES: tuple[str, ...] = (*QUESTION_TYPES, "describe")


@dataclass(frozen=True)
class SynthConfig:
    """What `mllm data synth` writes; `text_fraction` is the share of text-only records in instruct.json;
    `turn_weights` weighs how often an instruction turn is of a type (a question type or `describe`; 1 for any
    type not named), e.g. more position and count turns, the two skills the shipped model learns last."""

    out: Path
    num_images: int
    seed: int
    image_size: int = 128
    split: str = "train"
    phrasing: str = "train"  # templates of the VQA files; instruct.json always uses the training phrasing
    questions_per_image: int = 2
    max_turns: int = 5
    text_fraction: float = 0.1
    turn_weights: Mapping[str, float] = field(default_factory=dict)
    # instruction turns only (the VQA files keep the natural mix): the chance that a count turn of one colour or
    # shape asks about one the image holds more than once; at 0 nearly all such answers are 0 or 1
    count_repeated: float = 0.0
    # align.json only: each caption opens with the scene's counts (`count_summary`), so that the align stage's
    # projector learns to present counts the frozen LLM reads; the clip pairs keep the plain caption
    align_counts: bool = False
    overwrite: bool = False
    progress: bool = True

    def check(self) -> None:
        """Refuse impossible settings with a message naming the option."""
        if self.split not in SPLITS:
            raise MllmError(f"--split {self.split!r}: valid splits are {', '.join(SPLITS)}")
        if self.phrasing not in PHRASINGS:
            raise MllmError(f"--phrasing {self.phrasing!r}: valid phrasings are {', '.join(PHRASINGS)}")
        if self.num_images < 1:
            raise MllmError(f"--num-images {self.num_images}: must be at least 1")
        if self.image_size < MIN_IMAGE_SIZE:
            raise MllmError(f"--image-size {self.image_size}: must be at least {MIN_IMAGE_SIZE}")
        if self.questions_per_image < 0:
            raise MllmError(f"--questions-per-image {self.questions_per_image}: must be 0 or more")
        if not 0 <= self.text_fraction < 1:
            raise MllmError(f"--text-fraction {self.text_fraction}: must be in [0, 1)")
        for kind, weight in self.turn_weights.items():
            if kind not in TURN_TYPES:
                raise MllmError(f"--turn-weight {kind}={weight}: valid types are {', '.join(TURN_TYPES)}")
            if not weight > 0:
                raise MllmError(f"--turn-weight {kind}={weight}: the weight must be positive")
        if not 0 <= self.count_repeated <= 1:
            raise MllmError(f"--count-repeated {self.count_repeated}: must be in [0, 1]")


@dataclass(frozen=True)
class SynthSummary:
    """Counts of what was written and how long it took."""

    images: int
    instruct_records: int
    text_records: int
    vqa_questions: int
    seconds: float


def rng_for(split: str, seed: int, index: int, purpose: str) -> random.Random:
    """The generator of one item and purpose; seeded from a string, so the same on every platform and run."""
    return random.Random(f"mllm-shapes/{split}/{seed}/{index}/{purpose}")


def image_name(index: int, num_images: int) -> str:
    """'000001.png' for index 1 (six digits, more when needed)."""
    return f"{index:0{max(6, len(str(num_images)))}d}.png"


def focus_pairs(split: str) -> tuple[tuple[str, str], ...]:
    """Pairs that questions about a compositional image prefer to target: the held-out ones."""
    return HELD_OUT_PAIRS if split == "compositional" else ()


def exist_pairs(split: str) -> tuple[tuple[str, str], ...]:
    """Pairs an exist question may ask about: train and test never mention the held-out pairs."""
    return ALL_PAIRS if split == "compositional" else SEEN_PAIRS


def instruct_turns(
    scene: Scene,
    rng: random.Random,
    split: str,
    max_turns: int = 5,
    weights: Mapping[str, float] | None = None,
    count_repeated: float = 0.0,
) -> list[QA]:
    """1 to `max_turns` distinct question/answer turns: typed questions (a short answer when the question asks
    for one, else a sentence) and at most one detailed description; each turn's type is drawn from those the
    scene can answer, in proportion to `weights` (1 for a type not named); `count_repeated`: see
    make_question."""
    weights = weights or {}
    types = [*available_types(scene), "describe"]
    turns: list[QA] = []
    for _ in range(rng.randint(1, max_turns)):
        qtype = rng.choices(types, [weights.get(t, 1.0) for t in types])[0]
        if qtype == "describe":
            types.remove("describe")
            question, answer = rng.choice(DESCRIBE_PROMPTS), description(scene)
        else:
            q = make_question(
                qtype, scene, rng, "train", exist_pairs(split), focus_pairs(split), count_repeated
            )
            if rng.random() < 0.5:
                question, answer = f"{q.text}\n{SHORT_ANSWER_SUFFIX}", q.short
            else:
                question, answer = q.text, q.sentence
        if all(question != asked for asked, _ in turns):
            turns.append((question, answer))
    return turns


def vqa_rows(
    scene: Scene, rng: random.Random, cfg: SynthConfig, qid_prefix: str
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(question row, answer row) for up to `questions_per_image` questions of different types."""
    types = available_types(scene)
    chosen = rng.sample(types, min(cfg.questions_per_image, len(types)))
    rows = []
    for k, qtype in enumerate(chosen):
        q = make_question(qtype, scene, rng, cfg.phrasing, exist_pairs(cfg.split), focus_pairs(cfg.split))
        qid = f"{qid_prefix}-{k}"
        rows.append(
            (
                {"question_id": qid, "image": scene.image, "text": f"{q.text}\n{SHORT_ANSWER_SUFFIX}"},
                {"question_id": qid, "answer": q.short, "type": q.type},
            )
        )
    return rows


class _JsonList:
    """Writes a JSON list one item at a time."""

    def __init__(self, path: Path) -> None:
        self.file: TextIO = path.open("w", encoding="utf-8")
        self.count = 0

    def write(self, item: dict[str, Any]) -> None:
        self.file.write(("[\n" if self.count == 0 else ",\n") + json.dumps(item, ensure_ascii=False))
        self.count += 1

    def __enter__(self) -> _JsonList:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if kind is None:  # after an error the file stays unterminated, so it cannot pass for a complete list
            self.file.write("\n]\n" if self.count else "[]\n")
        self.file.close()


def _prepare(cfg: SynthConfig) -> Path:
    images = cfg.out / "images"
    if cfg.out.exists() and not cfg.out.is_dir():
        raise MllmError(f"{cfg.out}: exists and is not a folder (--out)")
    if cfg.out.is_dir() and any(cfg.out.iterdir()):
        if not cfg.overwrite:
            raise MllmError(f"{cfg.out}: folder is not empty; choose a new --out or pass --overwrite")
        for name in OUTPUT_FILES:
            (cfg.out / name).unlink(missing_ok=True)
        if images.is_dir():
            for png in images.glob("*.png"):
                png.unlink()
    images.mkdir(parents=True, exist_ok=True)
    return images


def _jsonl_line(row: dict[str, Any]) -> str:
    return json.dumps(row, ensure_ascii=False) + "\n"


def synthesize(cfg: SynthConfig) -> SynthSummary:
    """Write the data set described in the module docstring into `cfg.out`."""
    cfg.check()
    start = time.perf_counter()
    images_dir = _prepare(cfg)
    out = cfg.out
    text_ratio = cfg.text_fraction / (1 - cfg.text_fraction)
    texts = questions = 0
    with (
        (out / "scenes.jsonl").open("w", encoding="utf-8") as scenes_file,
        (out / "pairs.jsonl").open("w", encoding="utf-8") as pairs_file,
        (out / "vqa_questions.jsonl").open("w", encoding="utf-8") as questions_file,
        (out / "vqa_answers.jsonl").open("w", encoding="utf-8") as answers_file,
        _JsonList(out / "align.json") as align,
        _JsonList(out / "instruct.json") as instruct,
        tqdm(
            total=cfg.num_images,
            file=sys.stderr,
            disable=not cfg.progress,
            unit="img",
            desc=f"synth {cfg.split}",
        ) as progress,
    ):
        for index in range(1, cfg.num_images + 1):
            name = image_name(index, cfg.num_images)
            tag = f"{cfg.split}-{cfg.seed}-{index:06d}"
            scene = sample_scene(
                rng_for(cfg.split, cfg.seed, index, "scene"), name, cfg.image_size, cfg.split
            )
            draw_scene(scene).save(images_dir / name, format="PNG")
            scenes_file.write(_jsonl_line(scene.to_json()))
            scene_caption = caption(scene)  # the clip pair's text; the align answer, after any counts
            pairs_file.write(_jsonl_line({"image": name, "caption": scene_caption}))
            align_rng = rng_for(cfg.split, cfg.seed, index, "align")
            align_answer = f"{count_summary(scene)} {scene_caption}" if cfg.align_counts else scene_caption
            caption_turn = (align_rng.choice(CAPTION_PROMPTS), align_answer)
            align.write(make_record(tag, [name], [caption_turn], image_first=align_rng.random() < 0.9))
            chat_rng = rng_for(cfg.split, cfg.seed, index, "instruct")
            turns = instruct_turns(
                scene, chat_rng, cfg.split, cfg.max_turns, cfg.turn_weights, cfg.count_repeated
            )
            instruct.write(make_record(tag, [name], turns, image_first=chat_rng.random() < 0.9))
            for question_row, answer_row in vqa_rows(
                scene, rng_for(cfg.split, cfg.seed, index, "vqa"), cfg, tag
            ):
                questions_file.write(_jsonl_line(question_row))
                answers_file.write(_jsonl_line(answer_row))
                questions += 1
            while texts < round(index * text_ratio):
                texts += 1
                text_rng = rng_for(cfg.split, cfg.seed, texts, "text")
                instruct.write(
                    make_record(
                        f"text-{cfg.split}-{cfg.seed}-{texts:06d}", [], general_conversation(text_rng)
                    )
                )
            progress.update(1)
        instruct_count = instruct.count
    _write_metadata(cfg)
    return SynthSummary(cfg.num_images, instruct_count, texts, questions, time.perf_counter() - start)


def _write_metadata(cfg: SynthConfig) -> None:
    meta = {
        "format_version": FORMAT_VERSION,
        "generator": "mllm data synth",
        "split": cfg.split,
        "seed": cfg.seed,
        "num_images": cfg.num_images,
        "image_size": cfg.image_size,
        "vqa_phrasing": cfg.phrasing,
        "questions_per_image": cfg.questions_per_image,
        "text_fraction": cfg.text_fraction,
        "max_turns": cfg.max_turns,
        "turn_weights": {t: cfg.turn_weights.get(t, 1.0) for t in TURN_TYPES},
        "count_repeated": cfg.count_repeated,
        "align_counts": cfg.align_counts,
        "held_out_pairs": [list(p) for p in HELD_OUT_PAIRS],
        "notes": "train and test exclude the held-out (color, shape) pairs and never share a scene (a hash of "
        "the scene content decides which of the two may hold it); every compositional image holds at "
        "least one held-out pair.",
    }
    (cfg.out / "synth.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
