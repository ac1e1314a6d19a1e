"""The release recipe of the shipped default assistant, from nothing: synthetic shapes data -> clip -> align ->
instruct -> eval (VQA on the test, compositional and held-out-paraphrase splits, the test images' count
questions balanced by answer, text skills), each stage timed, then (with --install) the final checkpoint copied
into mllm/assets/default/.

    python -m train.release --out runs/release --install          # what `make release-model` runs
    python -m train.release --out runs/release --install --resume # after an interruption: carry on

`--resume` starts at the first stage release.json has no time for; a training stage cut off after a checkpoint
continues from its newest one (`mllm train --resume`), its time counting the wall clock it had already taken.

Every training stage runs as its own `python -m train` process with the shipped configs in configs/train/
(paths pointed into --out by overrides), so the recipe is the same commands a person would type.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mllm.errors import MllmError

if TYPE_CHECKING:  # train.evaluate pulls in torch and the model code; the recipe imports it when it evaluates
    from train.evaluate import VQAItem

log = logging.getLogger("train.release")
REPO = Path(__file__).resolve().parent.parent
ASSET = REPO / "mllm" / "assets" / "default"
MAX_ASSET_MB = 40.0
# (folder, split, seed, number of images, VQA phrasing)
DATA_SPLITS = (
    ("train", "train", 0, 12000, "train"),
    ("test", "test", 1, 200, "train"),
    ("compositional", "compositional", 2, 200, "train"),
    ("paraphrase", "test", 1, 200, "heldout"),
)
# the `counts` diagnostic: questions counting one colour or shape of the test images, this many for each answer
# 0, 1, 2 and 3+ (data_tools/synth/count_questions.py), in the test folder
COUNT_QUESTIONS_PER_ANSWER = 50


def synth_data(out: Path, image_size: int, scale: float, align_counts: bool = False) -> None:
    """The four data folders (train, test, compositional, paraphrase: the test images with held-out wording),
    and the balanced count questions of the test images; `align_counts`: captions in align.json open with the
    scene's counts (`mllm data synth --align-counts`)."""
    from data_tools.synth.count_questions import write_count_questions
    from data_tools.synth.writer import SynthConfig, synthesize

    for folder, split, seed, count, phrasing in DATA_SPLITS:
        n = max(16, int(count * scale))
        summary = synthesize(
            SynthConfig(
                out=out / folder,
                num_images=n,
                seed=seed,
                image_size=image_size,
                split=split,
                phrasing=phrasing,
                align_counts=align_counts,
                overwrite=True,
                progress=False,
            )
        )
        log.info(
            "data %s: %d images, %d instruction records, %d VQA questions",
            folder,
            summary.images,
            summary.instruct_records,
            summary.vqa_questions,
        )
    made = write_count_questions(out / "test", COUNT_QUESTIONS_PER_ANSWER)
    log.info("data counts: %s", json.dumps(made))


def run_stage(
    config: str, overrides: list[str], log_file: Path, output_dir: Path, append: bool = False
) -> dict[str, Any]:
    """`python -m train CONFIG OVERRIDES` with its output in `log_file` (added to it with `append`, as when a
    stage resumes); the run summary (summary.json)."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    command = [sys.executable, "-m", "train", config, *overrides, "progress=false"]
    log.info("running %s (log: %s)", " ".join(command[2:]), log_file)
    with log_file.open("a" if append else "w") as logs:
        result = subprocess.run(command, cwd=REPO, env=env, stdout=logs, stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:
        raise MllmError(f"stage {config} failed with exit code {result.returncode}; see {log_file}")
    return json.loads((output_dir / "summary.json").read_text())


def host() -> dict[str, Any]:
    """What this machine is, for the stage times (release.json's `hosts`): its CPU, cores, whether the CPU
    multiplies bf16 (the training configs' `precision: auto` trains in bf16 only then) and its GPU."""
    import platform

    import torch

    from mllm.bf16_linear import native_bf16_available

    cpuinfo = Path("/proc/cpuinfo")  # Linux; its first processor's block (a VM may name only "AMD EPYC")
    first = cpuinfo.read_text().split("\n\n")[0].splitlines() if cpuinfo.is_file() else []
    fields = dict((k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in first))
    return {
        "cpu": fields.get("model name") or platform.processor() or platform.machine(),
        "cpu_family_model": f"{fields['cpu family']}/{fields['model']}" if "cpu family" in fields else None,
        "cores": os.cpu_count(),
        "cpu_bf16": native_bf16_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def write_answers(path: Path, items: Sequence[VQAItem], answers: Sequence[str]) -> None:
    """One row per question (id, type, question, gold answer, the model's answer, whether they match), for
    reading the misses."""
    from mllm.scoring import is_match

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for item, answer in zip(items, answers):
            row = {
                "question_id": item.question_id,
                "type": item.type,
                "image": item.image.name,
                "question": item.text,
                "gold": item.answer,
                "answer": answer,
                "correct": is_match(answer, item.answer),
            }
            f.write(json.dumps(row) + "\n")


def evaluate_release(checkpoint: Path, data: Path, out: Path, batch_size: int = 16) -> dict[str, Any]:
    """VQA accuracy per split and type on the default (fast, reduced-precision) inference path, the test split
    also at fp32 (the reduced precision must keep its accuracy), and the text-skills check against the base
    SmolLM2. `counts` is the test images' balanced count questions (written here for runs whose data stage
    predates them)."""
    from data_tools.synth.count_questions import ANSWERS_FILE, QUESTIONS_FILE, write_count_questions
    from mllm.assistant import load
    from train.evaluate import accuracy, assistant_answers, load_vqa
    from train.text_skills import check

    test = data / "test"
    if not (test / QUESTIONS_FILE).is_file():
        write_count_questions(test, COUNT_QUESTIONS_PER_ANSWER)
    files = {
        name: (data / name / "vqa_questions.jsonl", data / name / "vqa_answers.jsonl")
        for name, *_ in DATA_SPLITS
    }
    files["counts"] = (test / QUESTIONS_FILE, test / ANSWERS_FILE)
    results: dict[str, Any] = {}
    splits = {"auto": ("test", "compositional", "paraphrase", "counts"), "fp32": ("test",)}
    for precision, names in splits.items():
        assistant = load(str(checkpoint), precision=precision, batches=True)  # as `mllm vqa` loads it
        for split in names:
            items = load_vqa(*files[split], None)  # images/ next to the questions file
            started = time.perf_counter()
            answers = assistant_answers(assistant, items, batch_size)
            scores: dict[str, Any] = accuracy(items, answers)
            scores["questions"] = len(items)
            scores["precision"] = assistant.model.inference_precision
            key = split if precision == "auto" else f"{split}_fp32"
            results[key] = scores
            write_answers(out / "answers" / f"{key}.jsonl", items, answers)
            log.info(
                "VQA %s (%d questions, %.0f s): %s",
                key,
                len(items),
                time.perf_counter() - started,
                json.dumps(scores),
            )
        del assistant
    skills = check(str(checkpoint), str(REPO / "configs" / "model" / "smollm2.yaml"))
    (out / "text_skills.json").write_text(json.dumps(skills, indent=2) + "\n")
    results["text_skills"] = {k: skills[k] for k in ("questions", "base_correct", "kept")}
    log.info("text skills: %s", results["text_skills"])
    return results


def install(checkpoint: Path, target: Path = ASSET) -> float:
    """Copy the checkpoint (without resume state) into the package assets, atomically; its size in MB."""
    size = sum(p.stat().st_size for p in checkpoint.rglob("*") if p.is_file()) / 2**20
    if size > MAX_ASSET_MB:
        raise MllmError(
            f"{checkpoint}: {size:.1f} MB is over the {MAX_ASSET_MB:.0f} MB budget of the shipped model"
        )
    tmp = target.parent / f".tmp-{target.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(checkpoint, tmp, ignore=shutil.ignore_patterns("state", "README.md"))
    for path in [tmp, *tmp.rglob("*")]:  # checkpoint folders are private (0700/0600); package data is not
        path.chmod(0o755 if path.is_dir() else 0o644)
    if target.exists():
        shutil.rmtree(target)
    tmp.replace(target)
    return size


STAGES = ("data", "clip", "align", "instruct", "eval")


def resume_point(out: Path) -> str:
    """The first stage OUT/release.json has no time for (`data` when there is no release.json yet)."""
    path = out / "release.json"
    if not path.is_file():
        return STAGES[0]
    try:
        done = json.loads(path.read_text()).get("timings_s", {})
    except json.JSONDecodeError as exc:
        raise MllmError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
    for stage in STAGES:
        if stage not in done:
            return stage
    raise MllmError(f"{path}: every stage has finished; there is nothing to resume")


def interrupted_at(stage_dir: Path) -> dict[str, Any] | None:
    """Where an interrupted training stage can continue: its newest checkpoint with resume state, the step and
    the wall-clock seconds the run had taken by then (training-step seconds for checkpoints from before
    `wall_seconds` was recorded); None when it has none."""
    from train.state import STATE_DIR, TRAINER_FILE, list_checkpoints

    checkpoints = list_checkpoints(stage_dir)
    if not checkpoints:
        return None
    state = json.loads((checkpoints[-1] / STATE_DIR / TRAINER_FILE).read_text())
    wall = float(state.get("wall_seconds", 0.0))
    return {
        "checkpoint": str(checkpoints[-1]),
        "step": int(state["step"]),
        "seconds_before": round(wall or float(state["seconds"]), 1),
        "counted": "wall clock" if wall else "training steps",
    }


def release(
    out: Path,
    do_install: bool,
    scale: float,
    extra: dict[str, list[str]],
    start_at: str = "data",
    stop_after: str = "eval",
    resume: bool = False,
    align_counts: bool = False,
) -> dict[str, Any]:
    """Run the stages from `start_at` to `stop_after` (earlier ones are kept from OUT/release.json); the timings
    and results (also written to OUT/release.json). With `resume`, start where an interrupted run stopped
    (see the module docstring) instead."""
    if resume:
        if start_at != STAGES[0]:
            raise MllmError(f"--resume finds where {out} stopped; leave out --start-at {start_at}")
        start_at = resume_point(out)
        log.info("resuming %s at stage %s", out, start_at)
    if STAGES.index(start_at) > STAGES.index(stop_after):
        raise MllmError(
            f"{out}: starting at {start_at} and stopping after {stop_after} leaves nothing to run"
        )
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    previous: dict[str, Any] = {}
    if start_at != "data":
        if not (out / "release.json").is_file():
            raise MllmError(f"{out}: --start-at {start_at} needs the release.json of an earlier run there")
        previous = json.loads((out / "release.json").read_text())
    timings: dict[str, float] = {
        k: v for k, v in previous.get("timings_s", {}).items() if STAGES.index(k) < STAGES.index(start_at)
    }
    report: dict[str, Any] = {
        "timings_s": timings,
        "hosts": {k: v for k, v in previous.get("hosts", {}).items() if k in timings},
        "stages": {
            k: v for k, v in previous.get("stages", {}).items() if STAGES.index(k) < STAGES.index(start_at)
        },
    }
    if start_at != "data":
        report["started_at_stage"] = start_at
        report["align_counts"] = previous.get("align_counts", False)
        if align_counts and not report["align_counts"]:  # the same flag again (e.g. with --resume) is fine
            raise MllmError(f"--align-counts changes the data stage; --start-at {start_at} keeps {data}")

    machine = host()

    def todo(name: str) -> bool:
        return STAGES.index(start_at) <= STAGES.index(name) <= STAGES.index(stop_after)

    def timed(name: str, fn: Any, before: float = 0.0) -> Any:
        started = time.perf_counter()
        result = fn()
        timings[name] = round(before + time.perf_counter() - started, 1)
        report["hosts"][name] = machine
        log.info("stage %s took %.0f s", name, timings[name])
        (out / "release.json").write_text(json.dumps(report, indent=2) + "\n")
        return result

    def train_stage(name: str, overrides: list[str]) -> None:
        """`mllm train configs/train/NAME.yaml` into OUT/NAME with these overrides and the caller's extras."""
        overrides = [f"output_dir={out / name}", *overrides, *extra.get(name, [])]
        config = f"configs/train/{name}.yaml"
        cut = interrupted_at(out / name) if resume and name == start_at and name != "clip" else None
        if cut is not None:  # the clip stage has no resume state and starts again
            log.info("%s continues from %s (step %d)", name, cut["checkpoint"], cut["step"])
            report.setdefault("resumed", {})[name] = cut
            overrides.append("--resume")
        report["stages"][name] = timed(
            name,
            lambda: run_stage(config, overrides, out / f"{name}.log", out / name, append=cut is not None),
            cut["seconds_before"] if cut else 0.0,
        )

    if todo("data"):
        report["align_counts"] = align_counts
        timed("data", lambda: synth_data(data, 96, scale, align_counts))
    train, test = data / "train", data / "test"
    images = [f"data.image_folder={train / 'images'}", f"data.eval_image_folder={test / 'images'}"]
    if todo("clip"):
        train_stage("clip", [f"data.train={train / 'pairs.jsonl'}", f"data.eval={test / 'pairs.jsonl'}"])
    if todo("align"):
        train_stage(
            "align",
            [
                f"vision_source={out / 'clip' / 'vision'}",
                f"data.train={train / 'align.json'}",
                f"data.eval={test / 'align.json'}",
                *images,
            ],
        )
    if todo("instruct"):
        train_stage(
            "instruct",
            [
                f"init_from={out / 'align' / 'final'}",
                f"data.train={train / 'instruct.json'}",
                f"data.eval={test / 'instruct.json'}",
                *images,
                f"data.vqa_questions={test / 'vqa_questions.jsonl'}",
                f"data.vqa_answers={test / 'vqa_answers.jsonl'}",
            ],
        )
    final = out / "instruct" / "final"
    if todo("eval"):
        report["eval"] = timed("eval", lambda: evaluate_release(final, data, out))
    if do_install and stop_after == STAGES[-1]:
        report["asset_mb"] = round(install(final), 2)
        log.info("installed %s into %s (%.1f MB)", final, ASSET, report["asset_mb"])
    report["total_s"] = round(sum(timings.values()), 1)  # stages kept from an earlier run count as they took
    (out / "release.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m train.release",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "release")
    parser.add_argument("--install", action="store_true", help="copy the result into mllm/assets/default/")
    parser.add_argument("--scale", type=float, default=1.0, help="scale the number of images (smoke runs)")
    parser.add_argument(
        "--start-at",
        choices=STAGES,
        default="data",
        help="skip the stages before this one, reusing their outputs in --out",
    )
    parser.add_argument("--stop-after", choices=STAGES, default=STAGES[-1], help="the last stage to run")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="carry on an interrupted run in --out: from the first unfinished stage, a training stage from its "
        "newest checkpoint",
    )
    parser.add_argument(
        "--align-counts",
        action="store_true",
        help="the data stage opens each align caption with the scene's counts (mllm data synth --align-counts)",
    )
    for stage in ("clip", "align", "instruct"):
        parser.add_argument(
            f"--{stage}", nargs="*", default=[], metavar="KEY=VALUE", help=f"overrides for the {stage} stage"
        )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        report = release(
            args.out,
            args.install,
            args.scale,
            {"clip": args.clip, "align": args.align, "instruct": args.instruct},
            args.start_at,
            args.stop_after,
            args.resume,
            args.align_counts,
        )
    except MllmError as exc:
        print(f"release: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
