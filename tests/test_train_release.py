"""Pieces of the release recipe: the text-skills judge and its shipped list, the asset install (size budget,
resume state left out), and the recipe driver's stage times and machines (its data stage at a tiny scale, and
its clip stage on the tiny model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mllm.errors import MllmError
from train.evaluate import VQAItem
from train.release import install, write_answers
from train.text_skills import QUESTIONS_FILE, is_correct, load_questions


def test_text_skills_list_and_judge() -> None:
    questions, max_new_tokens = load_questions()
    assert len(questions) == 20 and max_new_tokens > 0
    assert len({q["question"] for q in questions}) == 20
    assert is_correct("The capital of France is Paris.", ["Paris"])
    assert not is_correct("Comparison is hard.", ["Paris"])
    assert is_correct("A week is 7 days.", ["seven", "7"]) and not is_correct("It is 17.", ["7"])
    assert json.loads(QUESTIONS_FILE.read_text())["about"]


def test_install_copies_without_state_and_checks_size(tmp_path: Path) -> None:
    checkpoint = tmp_path / "final"
    (checkpoint / "state").mkdir(parents=True)
    (checkpoint / "mllm.json").write_text("{}")
    (checkpoint / "state" / "optimizer_rank0.pt").write_bytes(b"x")
    target = tmp_path / "assets" / "default"
    target.parent.mkdir()
    install(checkpoint, target)
    assert (target / "mllm.json").is_file() and not (target / "state").exists()
    (checkpoint / "big.bin").write_bytes(b"\0" * (41 * 2**20))
    with pytest.raises(MllmError, match="over the 40 MB budget"):
        install(checkpoint, target)


def test_answers_file_marks_each_question_as_the_score_counts_it(tmp_path: Path) -> None:
    items = [
        VQAItem("q1", Path("images/000001.png"), "How many circles?", "2", "count"),
        VQAItem("q2", Path("images/000002.png"), "Where is the red star?", "top left", "position"),
    ]
    write_answers(tmp_path / "answers" / "test.jsonl", items, ["Two.", "top"])
    rows = [json.loads(line) for line in (tmp_path / "answers" / "test.jsonl").read_text().splitlines()]
    assert [(r["question_id"], r["gold"], r["answer"], r["correct"]) for r in rows] == [
        ("q1", "2", "Two.", True),
        ("q2", "top left", "top", False),
    ]
    assert rows[1]["image"] == "000002.png" and rows[1]["type"] == "position"


def test_recipe_records_each_stage_time_and_machine_and_keeps_them_on_a_later_start(tmp_path: Path) -> None:
    from train.release import host, release

    out = tmp_path / "release"
    first = release(out, do_install=False, scale=0.001, extra={}, stop_after="data")
    assert set(first["timings_s"]) == {"data"} and first["hosts"] == {"data": host()}
    assert (out / "data" / "compositional" / "vqa_questions.jsonl").is_file()
    # the clip stage again on the tiny model: the data stage's time and machine are kept from release.json
    tiny = ["model=configs/model/tiny-test.yaml", "max_steps=2", "micro_batch_size=8", "eval_every=0"]
    tiny += ["clip.text_hidden_size=32", "clip.text_layers=1", "clip.text_heads=2", "clip.projection_dim=16"]
    second = release(out, False, 0.001, {"clip": tiny}, start_at="clip", stop_after="clip")
    assert set(second["timings_s"]) == {"data", "clip"}
    assert second["timings_s"]["data"] == first["timings_s"]["data"]
    assert second["hosts"] == {"data": host(), "clip": host()} and (out / "clip" / "vision").is_dir()
    assert json.loads((out / "release.json").read_text())["hosts"] == second["hosts"]


def test_recipe_resumes_a_training_stage_killed_after_a_checkpoint(tmp_path: Path) -> None:
    """`--resume` after a SIGKILL of the recipe and its stage process: it starts at the stage release.json has no
    time for, that stage continues from its newest checkpoint, and its time counts what it had taken before."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.train_support import REPO, train_env
    from train.release import release

    out = tmp_path / "release"
    release(out, do_install=False, scale=0.001, extra={}, stop_after="data")
    tiny = ["model=configs/model/tiny-test.yaml", "micro_batch_size=4", "num_threads=1", "precision=fp32"]
    clip = ["clip.text_hidden_size=32", "clip.text_layers=1", "clip.text_heads=2", "clip.projection_dim=16"]
    release(out, False, 0.001, {"clip": [*tiny, "max_steps=2", "eval_every=0", *clip]}, "clip", "clip")
    align = [*tiny, "max_steps=40", "data.max_eval_samples=4"]
    command = [sys.executable, "-m", "train.release", "--out", str(out), "--start-at", "align"]
    command += ["--stop-after", "align", "--align", *align, "save_every=1", "keep_checkpoints=2"]
    recipe = subprocess.Popen(command, cwd=REPO, env=train_env(), start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not list((out / "align" / "checkpoints").glob("step-*/state/trainer.json")):
            assert recipe.poll() is None, f"the recipe ended (rc {recipe.returncode}) before a checkpoint"
            assert time.monotonic() < deadline, "no checkpoint after 300 s"
            time.sleep(0.02)
    finally:
        os.killpg(recipe.pid, signal.SIGKILL)  # the recipe and its `python -m train` child, as a lost machine
        recipe.wait()
    assert "align" not in json.loads((out / "release.json").read_text())["timings_s"]
    report = release(out, False, 0.001, {"align": [*align, "save_every=0"]}, stop_after="align", resume=True)
    cut = report["resumed"]["align"]
    assert 1 <= cut["step"] < 40 and cut["counted"] == "wall clock" and cut["seconds_before"] > 0
    assert report["started_at_stage"] == "align" and set(report["timings_s"]) == {"data", "clip", "align"}
    assert report["timings_s"]["align"] >= cut["seconds_before"] and report["stages"]["align"]["steps"] == 40
    assert "resumed from" in (out / "align.log").read_text()
    steps = [json.loads(line)["step"] for line in (out / "align" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 40
    with pytest.raises(MllmError, match="leave out --start-at"):
        release(out, False, 0.001, {}, start_at="align", resume=True)
    with pytest.raises(MllmError, match="--align-counts changes the data stage; --start-at align keeps"):
        release(out, False, 0.001, {}, start_at="align", align_counts=True)
    with pytest.raises(
        MllmError, match="starting at instruct and stopping after align leaves nothing to run"
    ):
        release(out, False, 0.001, {}, stop_after="align", resume=True)
