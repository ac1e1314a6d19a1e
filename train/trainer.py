"""The training loop of the `align` and `instruct` stages on a DeepSpeed engine: data validated and encoded,
trainable parts logged, gradient accumulation, clipping and the cosine schedule through the engine, progress
bar, `metrics.jsonl` and loss plot, periodic evaluation, atomic checkpoints with resume state, and `--resume`
that continues exactly where the last checkpoint stopped (model, optimizer, scheduler, step, RNG, data).
"""

from __future__ import annotations

import json
import logging
import random
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mllm.checkpoint import save_checkpoint
from mllm.errors import MllmError
from mllm.model import MultimodalModel
from train.anchor import anchored_loss
from train.config import TrainConfig, save_train_config
from train.data import Collator, Example, SkipCounter, load_examples
from train.engine import (
    barrier,
    gathered,
    init_distributed,
    initialize,
    load_optimizer_state,
    on_gpu,
    optimizer_state,
)
from train.evaluate import eval_loss, load_vqa, supervised_loss, vqa_accuracy
from train.metrics import PLOT_FILE, MetricsLog, plot_loss, progress_bar
from train.sampler import BatchStream
from train.stages import build_stage_model, check_trainable
from train.state import (
    CHECKPOINTS_DIR,
    TrainerState,
    checkpoint_name,
    list_checkpoints,
    prune_checkpoints,
    read_state,
    set_rng_state,
    stage_rank_state,
    write_state,
)

log = logging.getLogger(__name__)
FINAL_DIR = "final"
SUMMARY_FILE = "summary.json"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def peak_memory_mb() -> float:
    """Peak resident memory of this process (CPU) or peak allocated GPU memory, in MiB."""
    if on_gpu():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Trainer:
    """One `align` or `instruct` run (see the module docstring)."""

    def __init__(self, config: TrainConfig, resume: bool = False) -> None:
        self.started = time.perf_counter()  # this process's share of the run's wall clock starts here
        self.config = config
        self.rank, self.world = init_distributed()
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        self.out = Path(config.output_dir)
        self.checkpoint = self._resume_point() if resume else None
        if not resume and list_checkpoints(self.out):
            raise MllmError(
                f"{self.out}: already holds checkpoints; pass --resume to continue that run or "
                "choose a new output_dir"
            )
        seed_everything(config.seed)
        self.model: MultimodalModel = build_stage_model(
            config, str(self.checkpoint) if self.checkpoint else None
        )
        if self.rank == 0:
            log.info("stage %s: what trains", config.stage)
        check_trainable(self.model)
        self.skipped = SkipCounter()
        data = config.data
        self.examples = load_examples(
            data.train,
            data.image_folder,
            self.model.processor,
            self.skipped,
            data.validate,
            data.max_invalid_fraction,
            data.max_records,
        )
        self.eval_examples: list[Example] = []
        if data.eval:
            self.eval_examples = load_examples(
                data.eval,
                data.eval_image_folder or data.image_folder,
                self.model.processor,
                SkipCounter(),
                data.validate,
                1.0,
                data.max_eval_samples,
            )
        self.vqa = (
            load_vqa(data.vqa_questions, data.vqa_answers, data.vqa_image_folder, data.max_vqa_questions)
            if data.vqa_questions and data.vqa_answers
            else []
        )
        self.collate = Collator(self.model.tokenizer.pad_token_id, self.model.vision, self.skipped)
        log.info(
            "%d training samples (%d skipped: %s), %d eval samples, %d VQA questions",
            len(self.examples),
            self.skipped.total,
            dict(self.skipped.counts),
            len(self.eval_examples),
            len(self.vqa),
        )
        self.engine, self.optimizer, self.scheduler = initialize(self.model, config, self.world)
        self.stage = int(self.engine.zero_optimization_stage())
        self.state = TrainerState()
        if self.checkpoint is not None:
            self._restore(self.checkpoint)
        self.wall_before = self.state.wall_seconds  # what the interrupted processes had taken
        self.stream = BatchStream(
            [len(e) for e in self.examples],
            config.micro_batch_size,
            self.rank,
            self.world,
            config.seed,
            config.group_by_length,
            self.state.position,
        )
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
        self.metrics = (
            MetricsLog(self.out, self.state.step if self.checkpoint else None) if self.rank == 0 else None
        )

    def _resume_point(self) -> Path:
        checkpoints = list_checkpoints(self.out)
        if not checkpoints:
            raise MllmError(
                f"{self.out}: --resume given but there is no checkpoint with resume state in "
                f"{self.out / CHECKPOINTS_DIR}"
            )
        return checkpoints[-1]

    def _restore(self, checkpoint: Path) -> None:
        resumed = read_state(checkpoint, self.rank, self.world)
        load_optimizer_state(self.optimizer, resumed.optimizer)
        self.scheduler.load_state_dict(resumed.scheduler)
        set_rng_state(resumed.rng)
        self.state = resumed.trainer
        self.skipped.counts.update(resumed.trainer.skipped)
        log.info(
            "resumed from %s at step %d (epoch %d, batch %d)",
            checkpoint,
            self.state.step,
            self.state.position.epoch,
            self.state.position.batch,
        )

    def _trainable(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def _data_info(self) -> dict[str, Any]:
        return {
            "train": self.config.data.train,
            "image_folder": self.config.data.image_folder,
            "samples": len(self.examples),
            "skipped": dict(self.skipped.counts),
            "seen_samples": self.state.samples,
            "seen_tokens": self.state.tokens,
        }

    def save(self, folder: Path, with_state: bool) -> None:
        """A checkpoint of the current model (rank 0 writes; every rank stages its resume state first)."""
        staging = self.out / ".staging" / folder.name
        if with_state:
            stage_rank_state(staging, self.rank, optimizer_state(self.optimizer))
        barrier()
        self.state.skipped = {k: v for k, v in self.skipped.counts.items() if k == "image"}
        self.state.wall_seconds = self.wall_before + time.perf_counter() - self.started

        def extra(tmp: Path) -> None:
            save_train_config(self.config, tmp / "train_config.yaml")
            if with_state:
                write_state(tmp, staging, self.state, self.scheduler.state_dict(), self.world)

        with gathered(list(self.model.parameters()), self.stage):  # ZeRO-3: full tensors to save
            if self.rank == 0:
                save_checkpoint(
                    self.model,
                    folder,
                    stage=self.config.stage,
                    step=self.state.step,
                    data=self._data_info(),
                    save_llm=self.config.llm == "full",
                    extra=extra,
                )
        barrier()

    def evaluate(self) -> dict[str, Any]:
        """Held-out loss and VQA accuracy, as far as the config names the data."""
        row: dict[str, Any] = {"kind": "eval", "step": self.state.step}
        self.model.eval()
        try:
            if self.eval_examples:
                row["eval_loss"] = eval_loss(
                    self.model,
                    self.eval_examples,
                    self.collate,
                    self.config.micro_batch_size,
                    self.rank,
                    self.world,
                )
            if self.vqa:
                scores = vqa_accuracy(self.model, self.vqa, self.rank, self.world)
                row["vqa_accuracy"] = scores["overall"]
                row["vqa"] = scores
                # answered by the training model as it is: in a bf16 run greedy answers come out in bf16 and
                # score lower than the saved checkpoint does at inference precision
                row["vqa_dtype"] = str(next(self.model.parameters()).dtype).removeprefix("torch.")
        finally:
            self.model.train()
        return row

    def _zero_loss(self) -> torch.Tensor:
        """A loss of 0 that still reaches every trainable parameter (a micro-batch whose samples all failed)."""
        return sum(p.sum() * 0.0 for p in self._trainable())

    def train_step(self) -> tuple[float, int]:
        """One optimizer step over `grad_accum` micro-batches: (mean loss, tokens processed on this rank)."""
        losses: list[float] = []
        tokens = samples = 0
        for _ in range(self.config.grad_accum):
            batch = self.collate([self.examples[i] for i in self.stream.next()])
            if batch["size"] == 0:
                loss = self._zero_loss()
            else:
                if self.config.text_anchor > 0:
                    loss, _count = anchored_loss(self.engine, self.model, batch, self.config.text_anchor)
                else:
                    loss, _count = supervised_loss(self.engine, batch)
                losses.append(loss.item())
                tokens += int(batch["attention_mask"].sum())
                samples += batch["size"]
            self.engine.backward(loss)
            self.engine.step()
        self.state.step += 1
        self.state.tokens += tokens
        self.state.samples += samples
        self.state.position = self.stream.position
        return (sum(losses) / len(losses) if losses else float("nan")), tokens

    def run(self) -> dict[str, Any]:
        """Train to `max_steps`; the summary (also written to summary.json)."""
        config = self.config
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            save_train_config(config, self.out / "train_config.yaml")
        self.model.train()
        bar = progress_bar(
            config.max_steps, self.state.step, config.progress and self.rank == 0, f"{config.stage}"
        )
        last_eval: dict[str, Any] = {}
        window_tokens, window_start = 0, time.perf_counter()
        while self.state.step < config.max_steps:
            started = time.perf_counter()
            loss, tokens = self.train_step()
            self.state.seconds += time.perf_counter() - started
            window_tokens += tokens * self.world
            step = self.state.step
            if step % config.log_every == 0 or step == config.max_steps:
                elapsed = time.perf_counter() - window_start
                tps = window_tokens / elapsed if elapsed > 0 else 0.0
                lr = self.scheduler.get_last_lr()[0]
                grad_norm = self.engine.get_global_grad_norm()
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tps:.0f}")
                if self.metrics is not None:
                    self.metrics.write(
                        {
                            "kind": "train",
                            "step": step,
                            "loss": loss,
                            "lr": lr,
                            "grad_norm": float(grad_norm) if grad_norm is not None else None,
                            "tokens_per_s": tps,
                            "tokens": self.state.tokens * self.world,
                            "epoch": self.state.position.epoch,
                            "seconds": self.state.seconds,
                        }
                    )
                window_tokens, window_start = 0, time.perf_counter()
            bar.update(1)
            if config.eval_every and step % config.eval_every == 0 and step < config.max_steps:
                last_eval = self._log_eval()
            if config.save_every and step % config.save_every == 0 and step < config.max_steps:
                self.save(self.out / CHECKPOINTS_DIR / checkpoint_name(step), with_state=True)
                if self.metrics is not None:
                    prune_checkpoints(self.out, config.keep_checkpoints)
                    plot_loss(self.metrics.rows(), self.out / PLOT_FILE, f"{config.stage}: {self.out.name}")
        bar.close()
        last_eval = self._log_eval()
        self.save(self.out / CHECKPOINTS_DIR / checkpoint_name(self.state.step), with_state=True)
        self.save(self.out / FINAL_DIR, with_state=False)
        if self.rank == 0:
            prune_checkpoints(self.out, config.keep_checkpoints)
        return self._summary(last_eval)

    def _log_eval(self) -> dict[str, Any]:
        if not (self.eval_examples or self.vqa):
            return {}
        row = self.evaluate()
        if self.metrics is not None:
            self.metrics.write(row)
            log.info(
                "eval at step %d: %s",
                row["step"],
                ", ".join(f"{k}={v:.4f}" for k, v in row.items() if isinstance(v, float)),
            )
        return row

    def _summary(self, last_eval: dict[str, Any]) -> dict[str, Any]:
        summary = {
            "rank": self.rank,
            "stage": self.config.stage,
            "steps": self.state.step,
            "seconds": self.state.seconds,
            "wall_seconds": self.wall_before + time.perf_counter() - self.started,
            "tokens": self.state.tokens * self.world,
            "samples": self.state.samples * self.world,
            "tokens_per_s": self.state.tokens * self.world / max(self.state.seconds, 1e-9),
            "skipped": dict(self.skipped.counts),
            "peak_memory_mb": peak_memory_mb(),
            "world_size": self.world,
            "eval": last_eval,
            "final": str(self.out / FINAL_DIR),
        }
        if self.rank == 0 and self.metrics is not None:
            (self.out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
            plot_loss(self.metrics.rows(), self.out / PLOT_FILE, f"{self.config.stage}: {self.out.name}")
        return summary


def train(config: TrainConfig, resume: bool = False) -> dict[str, Any]:
    """Run the stage `config.stage`; the run summary."""
    if config.stage == "clip":
        from train.clip import train_clip

        return train_clip(config, resume)
    return Trainer(config, resume).run()
