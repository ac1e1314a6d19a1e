"""Stage `clip`: our own small CLIP (vision and text towers, transformers' `CLIPModel`, symmetric InfoNCE via
`return_loss`) trained on the shapes world's `pairs.jsonl`, on a DeepSpeed engine like the other stages.

Contrastive loss alone teaches a tower what sets captions apart, which is weak on counts and positions, so the
patch features of the layer the multimodal model reads (`vision.feature_layer`) also feed auxiliary heads
(train/clip_aux.py) that name each patch's object and count the objects: the frozen features then carry what,
where and how many in a form a projector can read.

The text tower uses SmolLM2's tokenizer (nothing is downloaded) over a compact vocabulary: the SmolLM2 ids that
occur in the training captions, renumbered from 2 (0 ends a caption, 1 stands for any other id), which keeps
the text tower's embedding small and its training fast. The result is saved in Hugging Face CLIP format: `vision/`
(a CLIPVisionModel the model config's `vision.source` can point at) and `clip/` (both towers + vocab.json).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import random
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from transformers import CLIPConfig, CLIPModel, CLIPVisionModel

from mllm.config import ModelConfig, load_model_config
from mllm.errors import MllmError
from mllm.images import ImagePreprocessor
from mllm.llm import load_tokenizer
from train.clip_aux import IGNORE, PATCH_GROUPS, ClipWithAux, region_targets
from train.clip_data import EOS_ID, ClipSample, collate, load_samples, read_pairs, recolor
from train.config import TrainConfig, save_train_config
from train.engine import init_distributed, initialize
from train.metrics import PLOT_FILE, MetricsLog, plot_loss, progress_bar
from train.trainer import SUMMARY_FILE, peak_memory_mb, seed_everything

log = logging.getLogger(__name__)
UNK_ID = 1
VOCAB_FILE = "vocab.json"


class CompactVocab:
    """SmolLM2 token ids -> a small vocabulary of the ids seen in the training captions."""

    def __init__(self, tokenizer: Any, ids: list[int]) -> None:
        self.tokenizer = tokenizer
        self.ids = sorted(set(ids))
        self.index = {token: k + 2 for k, token in enumerate(self.ids)}

    @classmethod
    def build(cls, tokenizer: Any, captions: list[str]) -> CompactVocab:
        ids = [i for caption in captions for i in tokenizer(caption, add_special_tokens=False)["input_ids"]]
        return cls(tokenizer, ids)

    def __len__(self) -> int:
        return len(self.ids) + 2

    def encode(self, text: str, max_length: int) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"][: max_length - 1]
        return [self.index.get(i, UNK_ID) for i in ids] + [EOS_ID]

    def save(self, folder: Path) -> None:
        (folder / VOCAB_FILE).write_text(
            json.dumps({"tokenizer": "smollm2", "eos": EOS_ID, "unk": UNK_ID, "smollm2_ids": self.ids}) + "\n"
        )


def build_clip(model_config: ModelConfig, config: TrainConfig, vocab_size: int) -> CLIPModel:
    vision = model_config.vision
    clip_config = CLIPConfig(
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": config.clip.text_hidden_size,
            "intermediate_size": 4 * config.clip.text_hidden_size,
            "num_hidden_layers": config.clip.text_layers,
            "num_attention_heads": config.clip.text_heads,
            "max_position_embeddings": config.clip.text_max_length,
            "eos_token_id": EOS_ID,
            "pad_token_id": EOS_ID,
            "bos_token_id": EOS_ID,
        },
        vision_config={
            "hidden_size": vision.hidden_size,
            "intermediate_size": vision.intermediate_size,
            "num_hidden_layers": vision.num_layers,
            "num_attention_heads": vision.num_heads,
            "image_size": vision.image_size,
            "patch_size": vision.patch_size,
        },
        projection_dim=config.clip.projection_dim,
    )
    return CLIPModel(clip_config)


@torch.no_grad()
def evaluate_clip(
    model: ClipWithAux, samples: list[ClipSample], batch_size: int, aux_weight: float
) -> dict[str, float]:
    """Image->text retrieval accuracy inside each batch; the per-patch heads' accuracy on the patches that hold
    an object center (and the share of patches read exactly, empty ones included); count-head accuracy, and
    with `object_counts` the accuracy of the counts read at object centers."""
    model.eval()
    hits = total = 0
    loss = 0.0
    right: dict[str, int] = dict.fromkeys(PATCH_GROUPS, 0)
    occupied = exact = patches = counts_ok = counts_total = regions_ok = 0
    object_counts_ok = object_counts_total = 0
    weight = next(model.parameters())
    for start in range(0, len(samples) - batch_size + 1, batch_size):
        batch = collate(samples[start : start + batch_size], weight.dtype, weight.device)
        out = model(**batch, aux_weight=aux_weight)
        hits += int((out["logits"].argmax(1) == torch.arange(batch_size, device=weight.device)).sum())
        total += batch_size
        cells = batch["cells"]
        has_object = cells[..., 0] > 0
        all_right = (out["occupied_logits"] > 0) == has_object
        for g, (name, logits) in enumerate(out["patch_logits"].items(), 1):
            ok = logits.argmax(-1) == cells[..., g]
            right[name] += int((ok & has_object).sum())
            all_right &= ok | ~has_object
        occupied += int(has_object.sum())
        exact += int(all_right.sum())
        patches += all_right.numel()
        counts_ok += int((out["count_logits"].argmax(-1) == batch["counts"]).sum())
        grid = math.isqrt(cells.shape[1])
        regions_ok += int((out["region_logits"].argmax(-1) == region_targets(grid).to(weight.device)).sum())
        counts_total += batch["counts"].numel()
        if out["object_count_logits"] is not None:
            targets = cells[..., model.object_count_columns]
            known = targets != IGNORE
            object_counts_ok += int(((out["object_count_logits"].argmax(-1) == targets) & known).sum())
            object_counts_total += int(known.sum())
        loss += float(out["loss"]) * batch_size
    model.train()
    return {
        "eval_loss": loss / max(total, 1),
        "retrieval_accuracy": hits / max(total, 1),
        "cell_accuracy": exact / max(patches, 1),
        **{f"{name}_accuracy": value / max(occupied, 1) for name, value in right.items()},
        "count_accuracy": counts_ok / max(counts_total, 1),
        "region_accuracy": regions_ok / max(patches, 1),
        **({"object_count_accuracy": object_counts_ok / object_counts_total} if object_counts_total else {}),
    }


def repaints(config: TrainConfig, step: int) -> bool:
    """Whether the batches of `step` (1-based) repaint objects off-palette: `clip.recolor_prob` above 0 and the
    step within the first `clip.recolor_until` of `max_steps`."""
    return config.clip.recolor_prob > 0 and step <= config.clip.recolor_until * config.max_steps


def save_towers(model: ClipWithAux, vocab: CompactVocab, out: Path) -> None:
    """`vision/` (CLIPVisionModel) and `clip/` (CLIPModel + its compact vocabulary), each written to a temporary
    folder and renamed into place."""
    for name in ("vision", "clip"):
        tmp = out / f".tmp-{name}"
        if tmp.exists():
            shutil.rmtree(tmp)
        if name == "vision":
            vision = CLIPVisionModel(model.clip.config.vision_config)
            vision.load_state_dict(model.clip.vision_model.state_dict())
            vision.save_pretrained(tmp)
        else:
            clip = CLIPModel(model.clip.config)
            state = dict(model.clip.state_dict())
            state["logit_scale"] = state["logit_scale"].reshape(())
            clip.load_state_dict(state)
            clip.save_pretrained(tmp)
            vocab.save(tmp)
        target = out / name
        if target.exists():
            shutil.rmtree(target)
        tmp.replace(target)


def train_clip(config: TrainConfig, resume: bool = False) -> dict[str, Any]:
    """Train the CLIP towers; returns the run summary."""
    if resume:
        raise MllmError("the clip stage does not resume (it runs in minutes); start it again")
    rank, world = init_distributed()
    if world != 1:
        raise MllmError("the clip stage runs in one process (it trains in minutes on a CPU)")
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    seed_everything(config.seed)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_train_config(config, out / "train_config.yaml")
    model_config = load_model_config(str(config.model))
    vision = model_config.vision
    grid = vision.image_size // vision.patch_size
    tokenizer = load_tokenizer(model_config.llm)  # captions in the LLM's own tokens (compacted below)
    pairs = Path(config.data.train)
    folder = Path(config.data.image_folder) if config.data.image_folder else pairs.parent / "images"
    scenes = Path(config.clip.scenes) if config.clip.scenes else pairs.parent / "scenes.jsonl"
    preprocess = ImagePreprocessor(vision.image_size, vision.image_mean, vision.image_std)
    vocab = CompactVocab.build(
        tokenizer, [row["caption"] for row in read_pairs(pairs, config.data.max_records)]
    )
    encode = functools.partial(vocab.encode, max_length=config.clip.text_max_length)
    samples = load_samples(
        pairs, scenes, folder, encode, grid, preprocess, config.data.max_records, config.clip.recolor_prob > 0
    )
    eval_samples: list[ClipSample] = []
    if config.data.eval:
        eval_pairs = Path(config.data.eval)
        eval_samples = load_samples(
            eval_pairs,
            eval_pairs.parent / "scenes.jsonl",
            Path(config.data.eval_image_folder or eval_pairs.parent / "images"),
            encode,
            grid,
            preprocess,
            config.data.max_eval_samples,
        )
    if len(samples) < config.micro_batch_size:
        raise MllmError(f"{pairs}: {len(samples)} pairs, fewer than one batch of {config.micro_batch_size}")
    with torch.random.fork_rng():
        torch.manual_seed(vision.init_seed)
        clip = build_clip(model_config, config, len(vocab))
        model = ClipWithAux(
            clip,
            vision.feature_layer,
            config.clip.patch_counts,
            config.clip.object_counts,
            config.clip.image_heads,
            config.clip.object_count_keys,
        )
    log.info(
        "clip: vision %s params, text %s params, %d pairs, %d eval pairs",
        f"{sum(p.numel() for p in model.clip.vision_model.parameters()):,}",
        f"{sum(p.numel() for p in model.clip.text_model.parameters()):,}",
        len(samples),
        len(eval_samples),
    )
    engine, _optimizer, scheduler = initialize(model, config, world)
    dtype = next(model.parameters()).dtype  # bf16 when the engine trains in bf16 (`precision: bf16`)
    metrics = MetricsLog(out)
    rng = random.Random(f"mllm-clip/{config.seed}")
    recolor_rng = random.Random(f"mllm-clip-recolor/{config.seed}")
    order: list[int] = []
    bar = progress_bar(config.max_steps, 0, config.progress, "clip")
    started = time.perf_counter()
    last_eval: dict[str, float] = {}
    for step in range(1, config.max_steps + 1):
        for _ in range(config.grad_accum):
            if len(order) < config.micro_batch_size:
                order = list(range(len(samples)))
                rng.shuffle(order)
            picked = [samples[order.pop()] for _ in range(config.micro_batch_size)]
            if repaints(config, step):
                picked = [
                    recolor(s, recolor_rng, config.clip.recolor_prob, preprocess, encode) for s in picked
                ]
            batch = collate(picked, dtype, engine.device)
            result = engine(**batch, aux_weight=config.clip.aux_weight)
            engine.backward(result["loss"])
            engine.step()
        if step % config.log_every == 0 or step == config.max_steps:
            row = {
                "kind": "train",
                "step": step,
                "loss": result["loss"].item(),
                "contrastive": result["contrastive"].item(),
                "aux": result["aux"].item(),
                "lr": scheduler.get_last_lr()[0],
                "seconds": time.perf_counter() - started,
            }
            metrics.write(row)
            bar.set_postfix(
                loss=f"{row['loss']:.3f}",
                nce=f"{row['contrastive']:.3f}",
                aux=f"{row['aux']:.3f}",
                lr=f"{row['lr']:.1e}",
            )
        bar.update(1)
        if eval_samples and (
            step == config.max_steps or (config.eval_every and step % config.eval_every == 0)
        ):
            last_eval = evaluate_clip(model, eval_samples, config.micro_batch_size, config.clip.aux_weight)
            metrics.write({"kind": "eval", "step": step, **last_eval})
            log.info(
                "clip eval at step %d: %s", step, ", ".join(f"{k}={v:.4f}" for k, v in last_eval.items())
            )
    bar.close()
    save_towers(model, vocab, out)
    seconds = time.perf_counter() - started
    summary = {
        "rank": rank,
        "stage": "clip",
        "steps": config.max_steps,
        "seconds": seconds,
        "samples": config.max_steps * config.grad_accum * config.micro_batch_size,
        "peak_memory_mb": peak_memory_mb(),
        "eval": last_eval,
        "vision": str(out / "vision"),
    }
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    plot_loss(metrics.rows(), out / PLOT_FILE, f"clip: {out.name}")
    return summary
