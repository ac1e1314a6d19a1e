"""The text anchor (train/anchor.py): on a batch of image and text-only rows the loss is cross-entropy on the
image rows plus W x KL(base || tuned) on the text rows, computed here independently from full logits; it is 0
on text rows while the LoRA is still the identity; the config refuses it without a LoRA; an instruct run with it
trains through DeepSpeed and saves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.train_support import make_data, run_training, write_config

TEXT_CHATS = [
    [("What is 2 + 3?", "2 + 3 = 5."), ("And 4 + 4?", "4 + 4 = 8.")],
    [("What color is a lemon?", "A lemon is yellow.")],
]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny shapes data, its instruction file extended with text-only chats (mixed.json)."""
    folder = make_data(tmp_path_factory.mktemp("anchor-data") / "shapes", num_images=8)
    records = [r for r in json.loads((folder / "instruct.json").read_text()) if "image" in r][:6]
    for i, chat in enumerate(TEXT_CHATS):
        turns = [{"from": who, "value": text} for pair in chat for who, text in zip(("human", "gpt"), pair)]
        records.insert(2 * i + 1, {"id": f"text-{i}", "conversations": turns})
    (folder / "mixed.json").write_text(json.dumps(records))
    return folder


def _model_and_batch(data: Path) -> tuple[object, dict[str, torch.Tensor]]:
    from mllm.config import load_model_config
    from mllm.model import MultimodalModel
    from train.data import Collator, SkipCounter, encode_records, read_records

    torch.manual_seed(0)
    model = MultimodalModel.build(load_model_config("configs/model/tiny-test.yaml"), with_lora=True)
    records = read_records(data / "mixed.json", data / "images", True, 0.0)
    examples = encode_records(records, model.processor, data / "images", SkipCounter())[:5]
    batch = Collator(model.tokenizer.pad_token_id, model.vision, SkipCounter())(examples)
    return model, batch


def _reference(model: object, batch: dict[str, torch.Tensor], weight: float) -> torch.Tensor:
    """CE on image rows + weight * KL(base || tuned) on text rows, per supervised token, from full logits."""
    kwargs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}
    tuned = model(**kwargs).logits.float()  # type: ignore[operator]
    with model.llm.disable_adapter():  # type: ignore[attr-defined]
        base = model(**kwargs).logits.float()  # type: ignore[operator]
    labels = batch["labels"][:, 1:]
    total = torch.zeros(())
    for row in range(labels.shape[0]):
        at = labels[row] != -100
        student, teacher = tuned[row, :-1][at], base[row, :-1][at]
        if (batch["input_ids"][row] == model.image_token_id).any():  # type: ignore[attr-defined]
            total = total + F.cross_entropy(student, labels[row][at], reduction="sum")
        else:
            p = teacher.softmax(-1)
            total = total + weight * (p * (teacher.log_softmax(-1) - student.log_softmax(-1))).sum()
    return total / int((labels != -100).sum())


def test_anchored_loss_is_ce_on_image_rows_and_kl_to_the_base_on_text_rows(data: Path) -> None:
    from train.anchor import anchored_loss
    from train.evaluate import supervised_loss

    model, batch = _model_and_batch(data)
    is_text = ~(batch["input_ids"] == model.image_token_id).any(dim=1)  # type: ignore[attr-defined]
    assert 0 < int(is_text.sum()) < len(is_text)  # both kinds of rows in one batch

    # a fresh LoRA is the identity: the text rows cost nothing, the image rows their cross-entropy
    loss, count = anchored_loss(model, model, batch, 1.0)  # type: ignore[arg-type]
    assert count == int((batch["labels"][:, 1:] != -100).sum())
    torch.testing.assert_close(loss, _reference(model, batch, 1.0), rtol=1e-5, atol=1e-6)
    assert loss.item() < supervised_loss(model, batch)[0].item()  # the text answers' own CE is not in it

    # a LoRA that has moved: the text rows pay W x their KL to the base
    with torch.no_grad():
        for name, param in model.llm.named_parameters():  # type: ignore[attr-defined]
            if "lora_B" in name:
                param.normal_(0, 0.05)
    for weight in (1.0, 3.0):
        loss, _ = anchored_loss(model, model, batch, weight)  # type: ignore[arg-type]
        torch.testing.assert_close(loss, _reference(model, batch, weight), rtol=1e-4, atol=1e-5)
    assert (
        anchored_loss(model, model, batch, 3.0)[0].item() > anchored_loss(model, model, batch, 1.0)[0].item()
    )


def test_config_refuses_an_anchor_without_lora(data: Path, tmp_path: Path) -> None:
    from mllm.errors import MllmError
    from train.config import load_train_config

    config = write_config(tmp_path / "a.yaml", data, tmp_path / "run")
    with pytest.raises(MllmError, match="text_anchor: .*needs llm: lora"):
        load_train_config(config, ["text_anchor=1.0"])  # an align config: llm frozen
    with pytest.raises(MllmError, match="text_anchor: must be 0 or more"):
        load_train_config(config, ["text_anchor=-1", "llm=lora"])


def test_instruct_run_with_the_anchor_trains_and_saves(data: Path, tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "instruct.yaml",
        data,
        tmp_path / "run",
        stage="instruct",
        llm="lora",
        text_anchor=1.0,
        data={"train": str(data / "mixed.json")},
        micro_batch_size=4,
        max_steps=3,
        save_every=0,
    )
    result = run_training(config)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in rows if "loss" in row]
    assert len(losses) == 3 and all(loss == loss and loss > 0 for loss in losses), rows
    assert (tmp_path / "run" / "final" / "adapter").is_dir()
    resolved = (tmp_path / "run" / "final" / "train_config.yaml").read_text()
    assert "text_anchor: 1.0" in resolved
