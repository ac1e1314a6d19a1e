"""Training speed and memory: tokens/s of an `align` step (projector trains, LLM frozen) and an `instruct`
step (projector + LoRA), each against the same LLM's plain LoRA forward+backward (transformers' own loss)
on the same tokens (image placeholders replaced by text tokens) in the same run, alternating; and the peak
memory of each kind of step, each measured in a fresh process.

    python -m bench.bench_train            # SmolLM2-135M (configs/model/smollm2.yaml)
    python -m bench.bench_train --quick    # the tiny random model
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from bench.common import alternate, status_mb

REPO = Path(__file__).resolve().parent.parent
MODELS = {
    True: REPO / "configs" / "model" / "tiny-test.yaml",
    False: REPO / "configs" / "model" / "smollm2.yaml",
}
KINDS = ("align", "instruct", "reference")


def make_batch(model: Any, folder: Path, batch_size: int) -> dict[str, Any]:
    """A micro-batch of instruction records from a small synthetic data set, as the trainer collates it."""
    from data_tools.synth.writer import SynthConfig, synthesize
    from train.data import Collator, SkipCounter, encode_records, read_records

    synthesize(
        SynthConfig(
            out=folder, num_images=batch_size * 2, seed=0, image_size=96, progress=False, text_fraction=0.0
        )
    )
    records = read_records(folder / "instruct.json", folder / "images", True, 0.0)
    examples = encode_records(records, model.processor, folder / "images", SkipCounter())[:batch_size]
    return Collator(model.tokenizer.pad_token_id, model.vision, SkipCounter())(examples)


class Steps:
    """The three kinds of training step on one model and batch."""

    def __init__(self, quick: bool, folder: Path, batch_size: int) -> None:
        from mllm.config import load_model_config
        from mllm.model import MultimodalModel

        config = load_model_config(MODELS[quick])
        self.model = MultimodalModel.build(config, with_lora=True)
        self.model.train()
        self.batch = make_batch(self.model, folder, batch_size)
        ids = self.batch["input_ids"].clone()
        ids[ids == self.model.image_token_id] = self.model.tokenizer.convert_tokens_to_ids("the")
        self.text_ids = ids
        self.tokens = int(self.batch["attention_mask"].sum())
        params = [p for n, p in self.model.named_parameters() if "projector" in n or "lora_" in n]
        self.optimizer = torch.optim.AdamW(params, lr=1e-5)

    def _update(self, loss: torch.Tensor) -> None:
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def align(self) -> None:
        from train.evaluate import supervised_loss

        self.model.set_trainable(projector=True, lora=False)
        self._update(supervised_loss(self.model, self.batch)[0])

    def instruct(self) -> None:
        from train.evaluate import supervised_loss

        self.model.set_trainable(projector=True, lora=True)
        self._update(supervised_loss(self.model, self.batch)[0])

    def reference(self) -> None:
        self.model.set_trainable(projector=False, lora=True)
        out = self.model.llm(
            input_ids=self.text_ids, attention_mask=self.batch["attention_mask"], labels=self.batch["labels"]
        )
        self._update(out.loss)


def peak_memory(kind: str, quick: bool, batch_size: int) -> dict[str, float]:
    """Peak resident memory (MiB) of a fresh process doing two steps of `kind`, and how much the steps added
    over the peak after building the model."""
    command = [sys.executable, "-m", "bench.bench_train", "--peak", kind, "--batch-size", str(batch_size)]
    if quick:
        command.append("--quick")
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def run(quick: bool = False, batch_size: int = 8, repeats: int = 3) -> list[dict[str, Any]]:
    """The benchmark sections (see the module docstring)."""
    with tempfile.TemporaryDirectory() as tmp:
        steps = Steps(quick, Path(tmp), batch_size)
        rows = []
        for kind in ("align", "instruct"):
            result = alternate(kind, getattr(steps, kind), steps.reference, repeats=repeats)
            rows.append(
                {
                    "step": kind,
                    "tokens": steps.tokens,
                    "tokens/s": round(steps.tokens / result.candidate_s, 1),
                    "plain LoRA tokens/s": round(steps.tokens / result.reference_s, 1),
                    "overhead": f"{(result.candidate_s / result.reference_s - 1) * 100:+.1f}%",
                }
            )
    memory = []
    for kind in KINDS:
        peak = peak_memory(kind, quick, batch_size)
        memory.append(
            {
                "step": kind,
                "peak while stepping (MiB)": round(peak["peak_mb"]),
                "added by the steps (MiB)": round(peak["added_mb"]),
                "peak while loading (MiB)": round(peak["load_peak_mb"]),
            }
        )
    model = "tiny random model" if quick else "SmolLM2-135M"
    return [
        {
            "title": f"Training step throughput vs plain LoRA forward+backward ({model}, batch {batch_size})",
            "note": "Multimodal step (vision tower, projector, merge, the trainer's loss over supervised positions) "
            "against transformers' LoRA forward+backward with labels on the same number of tokens, "
            f"alternating, median of {repeats}; overhead = multimodal time / plain time - 1 (target < 15%).",
            "rows": rows,
        },
        {
            "title": f"Peak memory per training step kind ({model}, batch {batch_size})",
            "note": "A fresh process builds the model, resets its resident-memory high-water mark "
            "(/proc/self/clear_refs) and runs two steps: the peak while stepping, what the steps added over the "
            "resident memory before them, and the peak while loading (converting the GGUF weights).",
            "rows": memory,
        },
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="tiny random model")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--peak", choices=KINDS, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.peak is not None:
        with tempfile.TemporaryDirectory() as tmp:
            steps = Steps(args.quick, Path(tmp), args.batch_size)
            load_peak = status_mb("VmHWM")  # not ru_maxrss: a child started by fork keeps its parent's
            before = status_mb("VmRSS")
            # reset the high-water mark, so what follows is the steps' own peak, not the model loading's
            Path("/proc/self/clear_refs").write_text("5")
            for _ in range(2):
                getattr(steps, args.peak)()
            peak = status_mb("VmHWM")
        print(json.dumps({"load_peak_mb": load_peak, "peak_mb": peak, "added_mb": peak - before}))
        return 0
    for section in run(args.quick, args.batch_size):
        print(section["title"], section["note"], *section["rows"], sep="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
