"""MODEL_CARD.md is rendered from a release run's own files: stage rows (steps, batch, seed, time, anchor),
the VQA table, the balanced counts line and the text-skills line come from release.json, each stage's config
and summary."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from train.model_card import render


def _release(tmp_path: Path, text_anchor: float) -> Path:
    release = tmp_path / "release"
    (release / "data" / "train").mkdir(parents=True)
    (release / "data" / "train" / "synth.json").write_text(
        json.dumps({"num_images": 120, "max_turns": 5, "turn_weights": {"count": 2.0, "color": 1.0}})
    )
    row = {"overall": 0.915, "count": 0.75, "color": 1.0, "questions": 400, "precision": "fp16"}
    report = {
        "timings_s": {"data": 10.0, "clip": 1000.0, "align": 700.0, "instruct": 3100.0, "eval": 260.0},
        "stages": {},
        "eval": {
            "test": row,
            "counts": {
                "overall": 0.5,
                "count 0": 1.0,
                "count 1": 0.96,
                "count 2": 0.04,
                "count 3+": 0.0,
                "questions": 200,
            },
            "text_skills": {"questions": 20, "base_correct": 20, "kept": 18},
        },
    }
    (release / "release.json").write_text(json.dumps(report))
    config = {"max_steps": 2800, "micro_batch_size": 2, "grad_accum": 1, "optim": {"lr": 1e-3}, "seed": 0}
    if text_anchor:
        config["text_anchor"] = text_anchor
    (release / "instruct").mkdir()
    (release / "instruct" / "train_config.yaml").write_text(yaml.safe_dump(config))
    (release / "instruct" / "summary.json").write_text(json.dumps({"eval": {"eval_loss": 0.1044}}))
    return release


def test_card_reads_the_run(tmp_path: Path) -> None:
    card = render(_release(tmp_path, text_anchor=4.0), ablation=None, notes=None)
    instruct = next(line for line in card.splitlines() if line.startswith("| instruct |"))
    assert "| 2800 | 2 | 0.001 | 0 | 3100 s | eval loss 0.104 |" in instruct
    assert "4 x KL to the base LLM" in instruct
    assert "Total: 84.5 minutes wall time.\n" in card  # a run from before hosts were recorded names none
    assert "| test | fp16 | 400 | 91.5% | 100.0% | 75.0% |" in card
    assert "Text skills kept: 18 of the 20" in card
    assert "| counts |" not in card  # not a row of the VQA table (other types) but a line of its own
    assert "by answer: 0: 100.0%, 1: 96.0%, 2: 4.0%, 3+: 0.0% (50.0% overall)." in card
    assert "count turns weighted 2x" in card


def test_card_without_anchor_says_nothing_of_it(tmp_path: Path) -> None:
    card = render(_release(tmp_path, text_anchor=0.0), ablation=None, notes=None)
    assert "KL" not in card


def test_card_counts_the_released_image_tokens(tmp_path: Path) -> None:
    release = _release(tmp_path, text_anchor=0.0)
    assert "a 6x6 grid, 36 image tokens;" in render(release, ablation=None, notes=None)
    final = release / "instruct" / "final"
    final.mkdir()
    config = {"vision": {"feature_select": "full"}, "image_position_step": 8}
    (final / "mllm.json").write_text(json.dumps({"num_image_tokens": 37, "config": config}))
    card = render(release, ablation=None, notes=None)
    assert (
        "a 6x6 grid, 37 image tokens (the class token and the 36 patches), 8 rotary positions apart;" in card
    )
    config["projector"] = {"type": "mlp2x_gelu", "class_tokens": 8}
    (final / "mllm.json").write_text(json.dumps({"num_image_tokens": 44, "config": config}))
    card = render(release, ablation=None, notes=None)
    assert (
        "44 image tokens (8 made of the class token by its own MLP, and the 36 patches), 8 rotary positions apart;"
        in card
    )
    config["projector"] = {"type": "mlp2x_gelu", "pool_tokens": 1}
    (final / "mllm.json").write_text(json.dumps({"num_image_tokens": 38, "config": config}))
    card = render(release, ablation=None, notes=None)
    assert (
        "38 image tokens (1 made of the mean patch feature by its own MLP, the class token and the 36 patches)"
        in card
    )


def test_card_names_the_machines_the_stages_ran_on(tmp_path: Path) -> None:
    release = _release(tmp_path, text_anchor=0.0)
    report = json.loads((release / "release.json").read_text())
    zen4 = {"cpu": "AMD EPYC", "cpu_family_model": "25/17", "cores": 2, "cpu_bf16": True, "gpu": None}
    zen3 = {**zen4, "cpu_family_model": "25/1", "cpu_bf16": False}
    report["hosts"] = {"data": zen4, "clip": zen4, "align": zen3, "instruct": zen3, "eval": zen3}
    (release / "release.json").write_text(json.dumps(report))
    assert (
        "Total: 84.5 minutes wall time. Run on: data, clip on AMD EPYC (cpu family/model 25/17), 2 cores, with "
        "bf16 arithmetic; align, instruct, eval on AMD EPYC (cpu family/model 25/1), 2 cores, without bf16 "
        "arithmetic.\n"
    ) in render(release, ablation=None, notes=None)
    report["resumed"] = {
        "instruct": {"checkpoint": "x", "step": 2500, "seconds_before": 5432.1, "counted": "wall clock"}
    }
    (release / "release.json").write_text(json.dumps(report))
    assert (
        "without bf16 arithmetic. The instruct stage was interrupted and resumed from its step-2500 checkpoint; "
        "its time adds the 5432 s (wall clock) taken before.\n"
    ) in render(release, ablation=None, notes=None)
