"""mllm.scoring: answer normalization and normalized exact-match accuracy overall and per type."""

from __future__ import annotations

import pytest

from mllm.scoring import is_match, normalize_answer, score, score_counts


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Red.", "red"),
        ("  The RED one!", "red 1"),
        ("Three", "3"),
        ("3", "3"),
        ("top-left", "top left"),
        ("Upper left", "top left"),
        ("in the middle", "in center"),
        ("A big circle", "large circle"),
        ("grey", "gray"),
        ("Yes, ", "yes"),
        ("3.5", "3.5"),
        ("1,000", "1000"),
        ("dotted", "dotted"),
        ("", ""),
    ],
)
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


def test_synonyms_and_number_words_match() -> None:
    assert is_match("Big.", "large")
    assert is_match("two", "2")
    assert is_match("Bottom-Right", "bottom right")
    assert not is_match("small", "large")
    assert not is_match("The circle is red.", "red")  # exact match, not containment


def test_score_overall_and_per_type() -> None:
    gold = {"a": ("red", "color"), "b": ("2", "count"), "c": ("3", "count"), "d": ("no", "exist")}
    answers = {"a": "Red.", "b": "two", "c": "four", "x": "ignored"}  # d has no answer: counts as wrong
    assert score(answers, gold) == {"overall": 0.5, "color": 1.0, "count": 0.5, "exist": 0.0}
    assert score_counts(answers, gold) == {
        "overall": (2, 4),
        "color": (1, 1),
        "count": (1, 2),
        "exist": (0, 1),
    }


def test_score_empty_gold() -> None:
    assert score({}, {}) == {"overall": 0.0}
