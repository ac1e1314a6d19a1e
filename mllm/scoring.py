"""Normalized exact-match scoring of short VQA answers, overall and per question type.

An answer matches its gold answer when both normalize to the same string: lower case, punctuation
dropped, articles (a, an, the) dropped, number words written as digits, and a few synonyms mapped to one
word (big -> large, grey -> gray, upper -> top, middle -> center, ...).

    from mllm.scoring import normalize_answer, score
    score({"q1": "Red."}, {"q1": ("red", "color")})   # {"overall": 1.0, "color": 1.0}
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping

OVERALL = "overall"
ARTICLES = frozenset({"a", "an", "the"})
NUMBER_WORDS: dict[str, str] = {
    word: str(value)
    for value, word in enumerate(
        [
            "zero",
            "one",
            "two",
            "three",
            "four",
            "five",
            "six",
            "seven",
            "eight",
            "nine",
            "ten",
            "eleven",
            "twelve",
            "thirteen",
            "fourteen",
            "fifteen",
            "sixteen",
            "seventeen",
            "eighteen",
            "nineteen",
            "twenty",
        ]
    )
}
NUMBER_WORDS["none"] = "0"
SYNONYMS: dict[str, str] = {
    "big": "large",
    "huge": "large",
    "tiny": "small",
    "little": "small",
    "grey": "gray",
    "centre": "center",
    "middle": "center",
    "centered": "center",
    "upper": "top",
    "lower": "bottom",
    "yeah": "yes",
    "yep": "yes",
    "nope": "no",
}
_PUNCTUATION = re.compile(r"[^\w\s]|_")


def normalize_answer(text: str) -> str:
    """The canonical form two answers are compared in (see the module docstring)."""
    text = unicodedata.normalize("NFKC", str(text)).lower().strip()
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)  # 1,000 -> 1000
    text = re.sub(r"(?<=\d)\.(?=\d)", "DOT", text)  # keep decimal points
    text = _PUNCTUATION.sub(" ", text).replace("DOT", ".")
    words = []
    for word in text.split():
        word = SYNONYMS.get(word, word)
        word = NUMBER_WORDS.get(word, word)
        if word not in ARTICLES:
            words.append(word)
    return " ".join(words)


def is_match(answer: str, gold: str) -> bool:
    """Whether `answer` equals `gold` after normalization."""
    return normalize_answer(answer) == normalize_answer(gold)


def score_counts(
    answers: Mapping[str, str], gold: Mapping[str, tuple[str, str]]
) -> dict[str, tuple[int, int]]:
    """(correct, total) overall and per type. Every gold question counts; one without an answer is wrong.
    Answers to questions that are not in `gold` are ignored."""
    counts: dict[str, list[int]] = {OVERALL: [0, 0]}
    for qid, (gold_answer, qtype) in gold.items():
        answer = answers.get(qid)
        correct = int(answer is not None and is_match(answer, gold_answer))
        for key in (OVERALL, qtype):
            pair = counts.setdefault(key, [0, 0])
            pair[0] += correct
            pair[1] += 1
    return {key: (pair[0], pair[1]) for key, pair in counts.items()}


def score(answers: Mapping[str, str], gold: Mapping[str, tuple[str, str]]) -> dict[str, float]:
    """Accuracy in [0, 1] under `overall` and under each question type, e.g. {"overall": 0.5, "color": 1.0}.

    `answers` maps question id -> predicted text; `gold` maps question id -> (gold answer, type)."""
    return {
        key: correct / total if total else 0.0
        for key, (correct, total) in score_counts(answers, gold).items()
    }
