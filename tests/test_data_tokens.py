"""Tests of the `--model` token-length path on the tiny test model (random weights, SmolLM2's real tokenizer,
16 image tokens, context 2048): image markers count as the model's image tokens, long records are errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_tools.schema import load_records
from data_tools.tokens import token_lengths
from data_tools.validate import validate_file


def _record(rid: str, question: str, image: str | None = None) -> dict[str, object]:
    record: dict[str, object] = {"id": rid}
    if image:
        record["image"] = image
        question = f"<image>\n{question}"
    record["conversations"] = [{"from": "human", "value": question}, {"from": "gpt", "value": "Fine."}]
    return record


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tok") / "d.json"
    records = [
        _record("plain", "What is 2 + 2?"),
        _record("img", "What is 2 + 2?", image="a.png"),
        _record("long", "word " * 3000),
    ]
    path.write_text("[\n" + ",\n".join(json.dumps(r) for r in records) + "\n]\n")
    return path


TINY_MODEL = Path(__file__).resolve().parent.parent / "configs" / "model" / "tiny-test.yaml"


def test_token_lengths_and_context(data: Path) -> None:
    tiny_config_path = TINY_MODEL
    records = load_records(data)
    lengths = token_lengths(records, str(tiny_config_path))
    plain, with_image, long = lengths.values
    assert lengths.unit == "tokens" and lengths.context == 2048 and not lengths.failures
    assert with_image - plain >= 16  # the marker became the model's 16 image tokens
    assert long > 3000
    report = validate_file(data, model=str(tiny_config_path))
    assert report.errors == [
        f"{data}:4: record long: conversations: {long} tokens, over the model's context of 2048"
    ]
    assert [r.id for r in report.valid] == ["plain", "img"]
