"""The trainer end to end on the tiny random model: align then instruct (LoRA) runs write checkpoints that
load, metrics.jsonl and the loss plot; a run killed with SIGKILL and resumed ends with the same weights as
one never stopped; bad samples are skipped and counted; a run with nothing trainable refuses to start."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mllm.checkpoint import load_checkpoint, read_meta
from tests.train_support import make_data, run_training, start_training, write_config


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_data(tmp_path_factory.mktemp("train-data") / "shapes")


def _mixed_records(data: Path, folder: Path) -> Path:
    """The align records plus one longer than the context and one naming a missing image."""
    records = json.loads((data / "align.json").read_text())
    long_reply = " ".join(["word"] * 3000)  # longer than the tiny model's 2048-token context
    records.append(
        {
            "id": "too-long",
            "image": records[0]["image"],
            "conversations": [
                {"from": "human", "value": "<image>\nTalk."},
                {"from": "gpt", "value": long_reply},
            ],
        }
    )
    records.append(
        {
            "id": "missing-image",
            "image": "nope.png",
            "conversations": [{"from": "human", "value": "<image>\nHi"}, {"from": "gpt", "value": "Hi"}],
        }
    )
    path = folder / "mixed.json"
    path.write_text(json.dumps(records))
    return path


@pytest.fixture(scope="module")
def align_run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """An align run on data with two bad records; (run folder, its stderr)."""
    folder = tmp_path_factory.mktemp("align")
    config = write_config(
        folder / "align.yaml",
        data,
        folder / "run",
        max_steps=4,
        eval_every=2,
        data={
            "train": str(_mixed_records(data, folder)),
            "eval": str(data / "align.json"),
            "max_eval_samples": 8,
            "vqa_questions": str(data / "vqa_questions.jsonl"),
            "vqa_answers": str(data / "vqa_answers.jsonl"),
            "max_vqa_questions": 4,
        },
    )
    result = run_training(config)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder / "run", result.stderr


def test_align_writes_checkpoints_metrics_and_plot(align_run: tuple[Path, str]) -> None:
    from mllm.checkpoint import load_checkpoint, read_meta

    run = align_run[0]
    assert (run / "loss.png").stat().st_size > 1000
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
    assert all(r["tokens_per_s"] > 0 and r["lr"] > 0 for r in train_rows)
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [2, 4] and "vqa_accuracy" in evals[-1] and "eval_loss" in evals[-1]
    assert evals[-1]["vqa_dtype"] == "float32"
    meta = read_meta(run / "final")
    assert meta["stage"] == "align" and meta["step"] == 4 and not meta["config"]["lora"]["enabled"]
    assert (run / "final" / "train_config.yaml").is_file()
    assert (run / "checkpoints" / "step-000004" / "state" / "optimizer_rank0.pt").is_file()
    model = load_checkpoint(run / "final")
    saved = load_file(str(run / "final" / "projector.safetensors"))
    assert all(torch.equal(model.projector.state_dict()[k], v) for k, v in saved.items())


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    weights = {f"projector.{k}": v for k, v in load_file(str(folder / "projector.safetensors")).items()}
    adapter = folder / "adapter" / "adapter_model.safetensors"
    if adapter.is_file():
        weights.update({f"adapter.{k}": v for k, v in load_file(str(adapter)).items()})
    return weights


def test_instruct_resume_after_sigkill_matches_uninterrupted_run(
    align_run: Path, data: Path, tmp_path: Path
) -> None:
    fields = {
        "stage": "instruct",
        "model": None,
        "init_from": str(align_run[0] / "final"),
        "llm": "lora",
        "lora": {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.1, "target_modules": "all-linear"},
        "data": {
            "train": str(data / "instruct.json"),
            "image_folder": str(data / "images"),
            # the evaluation before the final save must leave the LoRA adapters in the model
            "vqa_questions": str(data / "vqa_questions.jsonl"),
            "vqa_answers": str(data / "vqa_answers.jsonl"),
            "max_vqa_questions": 2,
        },
        "max_steps": 16,
        "save_every": 2,
        "grad_accum": 2,
        "micro_batch_size": 2,
    }
    straight = write_config(tmp_path / "straight.yaml", data, tmp_path / "straight", **fields)
    result = run_training(straight)
    assert result.returncode == 0, result.stderr[-3000:]

    killed = write_config(tmp_path / "killed.yaml", data, tmp_path / "killed", **fields)
    proc = start_training(killed)
    first = tmp_path / "killed" / "checkpoints" / "step-000002" / "state" / "trainer.json"
    deadline = time.monotonic() + 240
    while not first.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (tmp_path / "killed" / "final").exists()
    resumed = run_training(killed, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr

    a, b = _weights(tmp_path / "straight" / "final"), _weights(tmp_path / "killed" / "final")
    assert a.keys() == b.keys() and any(k.startswith("adapter.") for k in a)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)
    # the checkpoint it resumed from has been pruned since; the final one holds its own copy of the tower
    assert not (tmp_path / "killed" / "checkpoints" / "step-000002").exists()
    assert read_meta(tmp_path / "killed" / "final")["config"]["vision"]["source"] == "./vision"
    load_checkpoint(tmp_path / "killed" / "final")
    rows = [json.loads(line) for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == list(range(1, 17))
    assert [r["step"] for r in rows if r["kind"] == "eval"] == [16]


def test_bad_samples_are_skipped_and_counted(align_run: tuple[Path, str]) -> None:
    run, stderr = align_run
    summary = json.loads((run / "summary.json").read_text())
    assert summary["skipped"] == {"too_long": 1}
    assert "invalid record left out" in stderr and "nope.png" in stderr
    assert "skipping sample (too_long): record too-long" in stderr


def test_refuses_to_start_when_nothing_trains(data: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "frozen.yaml", data, tmp_path / "run", train_projector=False)
    result = run_training(config)
    assert result.returncode == 1
    assert "nothing is trainable" in result.stderr
    assert "projector  frozen" in result.stderr


def test_supervised_loss_equals_transformers_loss_with_per_row_logits(data: Path) -> None:
    """The training loss computes logits only at supervised positions, row by row; it must equal
    transformers' own causal-LM loss over the full logits, and come with the right token count."""
    from mllm.config import load_model_config
    from mllm.model import MultimodalModel
    from train.data import Collator, SkipCounter, encode_records, read_records
    from train.evaluate import supervised_loss

    torch.manual_seed(0)
    model = MultimodalModel.build(load_model_config("configs/model/tiny-test.yaml"), with_lora=True)
    records = read_records(data / "instruct.json", data / "images", True, 0.0)
    examples = encode_records(records, model.processor, data / "images", SkipCounter())[:4]
    assert len({len(e) for e in examples}) > 1  # rows of different lengths: padding is exercised
    batch = Collator(model.tokenizer.pad_token_id, model.vision, SkipCounter())(examples)
    loss, count = supervised_loss(model, batch)
    reference = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        pixel_values=batch["pixel_values"],
        labels=batch["labels"],
    ).loss
    assert count == int((batch["labels"][:, 1:] != -100).sum())
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-5)


def test_attn_implementation_is_applied_and_a_bad_name_is_refused(data: Path, tmp_path: Path) -> None:
    from mllm.errors import MllmError
    from train.config import load_train_config
    from train.stages import build_stage_model

    config = load_train_config(
        write_config(tmp_path / "a.yaml", data, tmp_path / "run"), ["attn_implementation=eager"]
    )
    assert build_stage_model(config).llm.config._attn_implementation == "eager"
    bad = load_train_config(
        write_config(tmp_path / "b.yaml", data, tmp_path / "run"), ["attn_implementation=fast"]
    )
    with pytest.raises(MllmError, match="attn_implementation"):
        build_stage_model(bad)
